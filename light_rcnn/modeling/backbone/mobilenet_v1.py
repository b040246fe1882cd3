"""MobileNet v1 (Howard et al. 2017, Table 1), the slow-downsampling baseline of FD-MobileNet.

Layers (1x; every channel count, the first conv's included, is scaled by the width multiplier;
the FD-MobileNet paper compares 0.5x / 0.25x / 0.125x MobileNet-224):

=========  ======  =============================================  ===========
feature    stride  layers                                         channels 1x
=========  ======  =============================================  ===========
stem       2       3x3 conv 32 /2, DS(64)                         64
stage2     4       DS(/2, 128), DS(128)                           128
stage3     8       DS(/2, 256), DS(256)                           256
stage4     16      DS(/2, 512), 5 x DS(512)                       512
stage5     32      DS(/2, 1024), DS(1024)                         1024
=========  ======  =============================================  ===========

DS = 3x3 depthwise conv + BN + ReLU, 1x1 conv + BN + ReLU. The detector's stride-16 feature is
``stage4`` (layer 23, the last 512-channel 1x1 conv: the usual Faster R-CNN cut of MobileNet).
"""
from detectron2.modeling import BACKBONE_REGISTRY

from .blocks import (
    ConvNormAct,
    MobileNetBackbone,
    common_backbone_kwargs,
    depthwise_separable_stages,
    scale_channels,
)

__all__ = ["MobileNetV1", "build_mobilenet_v1_backbone"]

# (feature name, [(out_channels, stride), ...]) of the DS units after the first conv.
MOBILENET_V1_STAGES = (
    ("stem", ((64, 1),)),
    ("stage2", ((128, 2), (128, 1))),
    ("stage3", ((256, 2), (256, 1))),
    ("stage4", ((512, 2),) + ((512, 1),) * 5),
    ("stage5", ((1024, 2), (1024, 1))),
)
MOBILENET_V1_STEM_CHANNELS = 32


class MobileNetV1(MobileNetBackbone):
    """MobileNet v1 alpha x-224.

    Args:
        width_mult (float): alpha (0.5, 0.25, 0.125 in the FD-MobileNet comparison).
        norm, in_channels, stage5_dilation, num_classes, out_features, freeze_at: as
            :class:`light_rcnn.modeling.backbone.fd_mobilenet.FDMobileNet`.
    """

    def __init__(self, width_mult=1.0, *, norm="BN", in_channels=3, stage5_dilation=1,
                 num_classes=None, out_features=None, freeze_at=0):
        c = scale_channels(MOBILENET_V1_STEM_CHANNELS, width_mult)
        first = ConvNormAct(in_channels, c, 3, 2, norm=norm, activation="relu")
        stages, _ = depthwise_separable_stages(MOBILENET_V1_STAGES, c, width_mult, norm, stage5_dilation,
                                               first_blocks={"stem": [first]})
        super().__init__(stages, num_classes=num_classes, out_features=out_features,
                         freeze_at=freeze_at)
        self.width_mult = width_mult


@BACKBONE_REGISTRY.register()
def build_mobilenet_v1_backbone(cfg, input_shape):
    """MobileNet v1 from ``cfg.MODEL.MOBILENET`` (WIDTH_MULT, NORM, OUT_FEATURES,
    STAGE5_DILATION, NUM_CLASSES) and ``cfg.MODEL.BACKBONE.FREEZE_AT``."""
    return MobileNetV1(**common_backbone_kwargs(cfg, input_shape))
