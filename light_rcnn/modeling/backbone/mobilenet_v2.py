"""MobileNetV2 (Sandler et al. 2018) as in Table 2 of the dilated-MobileNetV2 paper.

Table 2 rows (expansion t, output channels c, repeats n, first stride s), after the 3x3 conv 32
/2 (layer 0); rows map to features as follows:

=========  ======  ===========================================  =======================
feature    stride  layers of Table 2                            (t, c, n, s) rows
=========  ======  ===========================================  =======================
stem       2       0 (3x3 conv 32 /2) and 1                     (1, 16, 1, 1)
stage2     4       2-3                                          (6, 24, 2, 2)
stage3     8       4-6                                          (6, 32, 3, 2)
stage4     16      7-13                                         (6, 64, 4, 2), (6, 96, 3, 1)
stage5     32      14-17                                        (6, 160, 3, 2), (6, 320, 1, 1)
=========  ======  ===========================================  =======================

Layer 18 (1x1 conv to 1280 + BN + ReLU6), the 7x7 average pooling and the k-way classifier (19,
20) form the classifier head, built only with ``num_classes``; ``stage5`` is therefore the output
of layer 17 (320 channels). The detector's stride-16 feature is ``stage4`` (layer 13, 96
channels). Channels are scaled by the width multiplier and rounded to multiples of 8 (reference
implementation); the 1280 of layer 18 is never scaled down.
"""
from detectron2.modeling import BACKBONE_REGISTRY

from .blocks import (
    ConvNormAct,
    InvertedResidual,
    MobileNetBackbone,
    common_backbone_kwargs,
    make_divisible,
    stage5_dilation_args,
)

__all__ = ["MobileNetV2", "build_mobilenet_v2_backbone", "MOBILENET_V2_SETTINGS"]

# (feature name, [(t, c, n, s), ...]) - Table 2 of the dilated-MobileNetV2 paper.
MOBILENET_V2_SETTINGS = (
    ("stem", ((1, 16, 1, 1),)),
    ("stage2", ((6, 24, 2, 2),)),
    ("stage3", ((6, 32, 3, 2),)),
    ("stage4", ((6, 64, 4, 2), (6, 96, 3, 1))),
    ("stage5", ((6, 160, 3, 2), (6, 320, 1, 1))),
)
MOBILENET_V2_STEM_CHANNELS = 32
MOBILENET_V2_LAST_CHANNELS = 1280


def mobilenet_v2_layout(width_mult=1.0, stage5_dilation=1):
    """Channel and stride plan of Table 2 for a width multiplier.

    Returns:
        (int, list[tuple]): channels of layer 0, and for layers 1-17 the tuples
        ``(feature name, layer index, in_channels, out_channels, t, stride, dilation)``.
    """
    s5_stride, s5_dilation = stage5_dilation_args(stage5_dilation)
    c = make_divisible(MOBILENET_V2_STEM_CHANNELS * width_mult)
    stem_channels = c
    layers = []
    index = 1
    for name, rows in MOBILENET_V2_SETTINGS:
        for t, out, n, s in rows:
            out = make_divisible(out * width_mult)
            for i in range(n):
                stride = s if i == 0 else 1
                dilation = 1
                if name == "stage5":
                    stride = s5_stride if stride == 2 else stride
                    dilation = s5_dilation
                layers.append((name, index, c, out, t, stride, dilation))
                c = out
                index += 1
    return stem_channels, layers


def last_channels(width_mult):
    """Channels of layer 18: 1280, or more for width multipliers above 1 (reference impl.)."""
    return make_divisible(MOBILENET_V2_LAST_CHANNELS * max(1.0, width_mult))


class MobileNetV2(MobileNetBackbone):
    """MobileNetV2 (Table 2): inverted residuals with ReLU6 and linear bottlenecks.

    Args:
        width_mult (float): width multiplier (1.0 = Table 2).
        norm, in_channels, stage5_dilation, num_classes, out_features, freeze_at: as
            :class:`light_rcnn.modeling.backbone.fd_mobilenet.FDMobileNet`.
    """

    def __init__(self, width_mult=1.0, *, norm="BN", in_channels=3, stage5_dilation=1,
                 num_classes=None, out_features=None, freeze_at=0):
        stem_channels, layers = mobilenet_v2_layout(width_mult, stage5_dilation)
        stages = {"stem": [ConvNormAct(in_channels, stem_channels, 3, 2, norm=norm,
                                       activation="relu6")]}
        for name, _, cin, cout, t, stride, dilation in layers:
            stages.setdefault(name, []).append(
                InvertedResidual(cin, cout, stride, expand_ratio=t, dilation=dilation, norm=norm,
                                 activation="relu6")
            )
        head = None
        if num_classes:
            cout = layers[-1][3]
            head = ConvNormAct(cout, last_channels(width_mult), 1, norm=norm, activation="relu6")
        super().__init__(list(stages.items()), head=head, head_channels=last_channels(width_mult),
                         num_classes=num_classes, out_features=out_features, freeze_at=freeze_at)
        self.width_mult = width_mult


@BACKBONE_REGISTRY.register()
def build_mobilenet_v2_backbone(cfg, input_shape):
    """MobileNetV2 from ``cfg.MODEL.MOBILENET`` (WIDTH_MULT, NORM, OUT_FEATURES, STAGE5_DILATION,
    NUM_CLASSES) and ``cfg.MODEL.BACKBONE.FREEZE_AT``."""
    return MobileNetV2(**common_backbone_kwargs(cfg, input_shape))
