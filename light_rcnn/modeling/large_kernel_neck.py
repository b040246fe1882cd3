"""Separated large-kernel neck of Light Mask R-CNN (paper Sec. III-B, Fig. 1).

Like detectron2's FPN, the neck is a :class:`Backbone` that wraps a bottom-up backbone
(``bottom_up``) and is registered as a backbone builder, :func:`build_slk_backbone`.
"""
import torch.nn.functional as F
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn


def _branch(in_channels, mid_channels, out_channels, first_kernel, norm):
    """Two convs with kernels ``first_kernel`` then its transpose, "same" padding on the long axis."""
    def conv(cin, cout, kernel):
        padding = (kernel[0] // 2, kernel[1] // 2)
        return Conv2d(cin, cout, kernel, padding=padding, bias=not norm, norm=get_norm(norm, cout))

    second_kernel = first_kernel[::-1]
    return nn.Sequential(conv(in_channels, mid_channels, first_kernel), conv(mid_channels, out_channels, second_kernel))


class SeparatedLargeKernelNeck(Backbone):
    """Turns one bottom-up feature into the paper's thin feature map, fed to RPN and ROIAlign.

    Branch A is a k x 1 conv then a 1 x k conv, branch B a 1 x k then a k x 1 conv; their outputs
    are summed and passed through a ReLU. Padding k // 2 on the long axis of each kernel keeps H x W.

    Choices (the paper only says "large padding" and shows no normalization): as in the original
    Light-Head R-CNN block, no normalization or activation inside the branches (``norm=""``), a bias
    on every conv, ReLU after the sum, weights from N(0, 0.01) and zero biases. With ``norm`` set
    (e.g. "BN" for training from scratch) every conv gets that norm and no bias.

    Input: images (N, 3, H, W). Output: ``{out_feature: (N, out_channels, ceil(H/s), ceil(W/s))}``
    where s is the stride of ``in_feature`` in the bottom-up backbone (16 for ResNet res4).
    """

    def __init__(self, bottom_up, in_feature="res4", out_feature="thin", kernel_size=15,
                 mid_channels=256, out_channels=256, norm=""):
        super().__init__()
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={kernel_size}: expected an odd integer >= 3 (even kernels shift the map)")
        shapes = bottom_up.output_shape()
        self.bottom_up = bottom_up
        self.in_feature = in_feature
        in_channels = shapes[in_feature].channels
        k = kernel_size
        self.branch_a = _branch(in_channels, mid_channels, out_channels, (k, 1), norm)
        self.branch_b = _branch(in_channels, mid_channels, out_channels, (1, k), norm)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        self._out_features = [out_feature]
        self._out_feature_channels = {out_feature: out_channels}
        self._out_feature_strides = {out_feature: shapes[in_feature].stride}

    @property
    def size_divisibility(self):
        return self.bottom_up.size_divisibility

    @property
    def padding_constraints(self):
        return self.bottom_up.padding_constraints

    def forward(self, x):
        feature = self.bottom_up(x)[self.in_feature]
        thin = F.relu(self.branch_a(feature) + self.branch_b(feature))
        return {self._out_features[0]: thin}


def _check_slk_config(slk, bottom_up_features=None):
    """Raise ValueError naming the MODEL.SLK key that has an impossible value."""
    k = slk.KERNEL_SIZE
    if not isinstance(k, int) or k < 3 or k % 2 == 0:
        raise ValueError(f"MODEL.SLK.KERNEL_SIZE={k!r}: expected an odd integer >= 3 (paper: 15)")
    for key in ("MID_CHANNELS", "OUT_CHANNELS"):
        value = slk.get(key)
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"MODEL.SLK.{key}={value!r}: expected a positive integer (paper: 64, 128 or 256)")
    if bottom_up_features is not None and slk.IN_FEATURE not in bottom_up_features:
        raise ValueError(
            f"MODEL.SLK.IN_FEATURE={slk.IN_FEATURE!r} is not an output of the bottom-up backbone "
            f"{slk.BOTTOM_UP!r}; it outputs {sorted(bottom_up_features)}"
        )


@BACKBONE_REGISTRY.register()
def build_slk_backbone(cfg, input_shape: ShapeSpec):
    """Bottom-up backbone ``cfg.MODEL.SLK.BOTTOM_UP`` (any registered builder, default ResNet up to
    ``MODEL.RESNETS.OUT_FEATURES``) wrapped by :class:`SeparatedLargeKernelNeck`."""
    slk = cfg.MODEL.SLK
    _check_slk_config(slk)  # before building the bottom-up, so a bad value fails fast
    if slk.BOTTOM_UP == "build_slk_backbone" or slk.BOTTOM_UP not in BACKBONE_REGISTRY:
        raise ValueError(
            f"MODEL.SLK.BOTTOM_UP={slk.BOTTOM_UP!r}: expected a registered bottom-up backbone builder, "
            f"one of {sorted(n for n, _ in BACKBONE_REGISTRY if n != 'build_slk_backbone')}"
        )
    bottom_up = BACKBONE_REGISTRY.get(slk.BOTTOM_UP)(cfg, input_shape)
    _check_slk_config(slk, bottom_up.output_shape())
    return SeparatedLargeKernelNeck(
        bottom_up,
        in_feature=slk.IN_FEATURE,
        out_feature=slk.OUT_FEATURE,
        kernel_size=slk.KERNEL_SIZE,
        mid_channels=slk.MID_CHANNELS,
        out_channels=slk.OUT_CHANNELS,
        norm=slk.NORM,
    )
