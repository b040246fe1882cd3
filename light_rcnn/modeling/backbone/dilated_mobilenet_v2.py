"""Pyramid depth-wise dilated MobileNetV2 (H. Nguyen, "A lightweight and efficient deep
convolutional neural network based on depthwise dilated separable convolution", Sec. 2.3, Table 3).

Table 3 is Table 2 (MobileNetV2, see :mod:`.mobilenet_v2`) with every inverted residual replaced
by a :class:`~.blocks.PyramidDilatedInvertedResidual` and PReLU after every conv except the last
(projection) conv of each block; layers, channels, strides and feature names are those of
:class:`~.mobilenet_v2.MobileNetV2` (``stage5`` = output of layer 17, 320 channels, stride 32; the
stride-16 feature is ``stage4`` = layer 13). Layer 1 keeps Table 2's expansion factor 1 (no 1x1
expansion; its 32 channels are split among the dilated branches), every other layer expands 6x.

Decisions the paper leaves open (documented defaults, all configurable):

* dilation rates ``(1, 2, 3, 4)``, one branch each, on near-equal channel splits of the expanded
  features; the same rates in every block;
* rates are capped on small feature maps: with ``cap_input_size`` (224, the classification input)
  a rate r is lowered until ``2r + 1 <= cap_input_size / stride`` of the block's output, so at
  stride 32 (7 x 7) the rates become (1, 2, 3, 3). The cap is a fixed architecture choice, not
  input-dependent, so ImageNet weights and detector weights describe the same network;
* branch outputs are concatenated without hierarchical fusion (the paper describes plain
  concatenation); ``hierarchical_fusion=True`` adds branch i-1's output to branch i's first;
* with ``stage5_dilation=2`` stage5 stays at stride 16 and its rates are doubled (after capping).
"""
from typing import Sequence, Tuple

from detectron2.modeling import BACKBONE_REGISTRY

from .blocks import ConvNormAct, MobileNetBackbone, PyramidDilatedInvertedResidual, common_backbone_kwargs
from .mobilenet_v2 import last_channels, mobilenet_v2_layout

__all__ = ["DilatedMobileNetV2", "build_dilated_mobilenet_v2_backbone", "capped_rates"]


def capped_rates(rates: Sequence[int], stride: int, cap_input_size: int) -> Tuple[int, ...]:
    """Lower every rate r until a 3x3 kernel dilated by r (span 2r + 1) fits the feature map of a
    ``cap_input_size`` input at ``stride``; ``cap_input_size <= 0`` disables the cap."""
    if any(int(r) < 1 for r in rates) or not rates:
        raise ValueError(f"dilation rates must be positive integers, got {list(rates)}")
    if cap_input_size <= 0:
        return tuple(int(r) for r in rates)
    size = cap_input_size // stride
    max_rate = max(1, (size - 1) // 2)
    return tuple(min(int(r), max_rate) for r in rates)


class DilatedMobileNetV2(MobileNetBackbone):
    """Table 3 network.

    Args:
        width_mult (float): width multiplier (1.0 = Table 3).
        dilation_rates (sequence[int]): rates of the parallel depthwise branches.
        cap_input_size (int): input size the rates are capped for (see module doc; 0 = no cap).
        hierarchical_fusion (bool): fuse branch outputs hierarchically before concatenation.
        norm, in_channels, stage5_dilation, num_classes, out_features, freeze_at: as
            :class:`light_rcnn.modeling.backbone.fd_mobilenet.FDMobileNet`.
    """

    def __init__(self, width_mult=1.0, *, dilation_rates=(1, 2, 3, 4), cap_input_size=224,
                 hierarchical_fusion=False, norm="BN", in_channels=3, stage5_dilation=1,
                 num_classes=None, out_features=None, freeze_at=0):
        stem_channels, layers = mobilenet_v2_layout(width_mult, stage5_dilation)
        stages = {"stem": [ConvNormAct(in_channels, stem_channels, 3, 2, norm=norm,
                                       activation="prelu")]}
        stride = 2
        for name, _, cin, cout, t, block_stride, dilation in layers:
            stride *= block_stride
            # rates are capped at the nominal stride (32 for stage5 even when dilated)
            nominal = stride * dilation
            rates = tuple(r * dilation for r in capped_rates(dilation_rates, nominal,
                                                            cap_input_size))
            stages.setdefault(name, []).append(
                PyramidDilatedInvertedResidual(
                    cin, cout, block_stride, expand_ratio=t, dilation_rates=rates,
                    hierarchical_fusion=hierarchical_fusion, norm=norm, activation="prelu",
                )
            )
        head = None
        if num_classes:
            head = ConvNormAct(layers[-1][3], last_channels(width_mult), 1, norm=norm,
                               activation="prelu")
        super().__init__(list(stages.items()), head=head, head_channels=last_channels(width_mult),
                         num_classes=num_classes, out_features=out_features, freeze_at=freeze_at)
        self.width_mult = width_mult


@BACKBONE_REGISTRY.register()
def build_dilated_mobilenet_v2_backbone(cfg, input_shape):
    """Dilated MobileNetV2 from ``cfg.MODEL.MOBILENET`` (WIDTH_MULT, NORM, OUT_FEATURES,
    DILATION_RATES, DILATION_CAP_INPUT_SIZE, HIERARCHICAL_FUSION, STAGE5_DILATION, NUM_CLASSES)
    and ``cfg.MODEL.BACKBONE.FREEZE_AT``."""
    m = cfg.MODEL.MOBILENET
    return DilatedMobileNetV2(
        dilation_rates=tuple(m.DILATION_RATES),
        cap_input_size=m.DILATION_CAP_INPUT_SIZE,
        hierarchical_fusion=m.HIERARCHICAL_FUSION,
        **common_backbone_kwargs(cfg, input_shape),
    )
