"""FD-MobileNet (Qin et al., "FD-MobileNet: Improved MobileNet with a Fast Downsampling
Strategy", Table 1), as a detectron2 backbone.

Layers (1x; every channel count, the first conv's included, is scaled by the width multiplier):

=========  ======  =============================================  ===========
feature    stride  layers (Table 1)                               channels 1x
=========  ======  =============================================  ===========
stem       2       3x3 conv 32 /2                                 32
stage2     4       DS(/2, 64)                                     64
stage3     8       DS(/2, 128), DS(128)                           128
stage4     16      DS(/2, 256), DS(256)                           256
stage5     32      DS(/2, 512), 4 x DS(512), DS(1024)             1024
=========  ======  =============================================  ===========

DS = 3x3 depthwise conv + BN + ReLU, 1x1 conv + BN + ReLU; no max pooling; 32x downsampling in
the first 12 layers (conv + 5 DS + the 6th DS's depthwise conv). The classifier adds global
average pooling and a 1000-d fully-connected layer.

The detector's stride-16 feature is ``stage4``: the output of layer 11 of Table 1 (the 1x1 conv
with 256 alpha channels at 14 x 14 for a 224 input). With ``stage5_dilation=2`` the six DS units of
stage5 run at stride 16 too (first depthwise conv stride 1, all stage5 depthwise convs dilation
2), so ``stage5`` (1024 alpha channels, layer 23) is a deeper stride-16 feature at about 4x the
cost of stage5.
"""
from detectron2.modeling import BACKBONE_REGISTRY

from .blocks import (
    ConvNormAct,
    MobileNetBackbone,
    common_backbone_kwargs,
    depthwise_separable_stages,
    scale_channels,
)

__all__ = ["FDMobileNet", "build_fd_mobilenet_backbone"]

# (feature name, [(out_channels, stride), ...]) of the DS units, Table 1.
FD_MOBILENET_STAGES = (
    ("stage2", ((64, 2),)),
    ("stage3", ((128, 2), (128, 1))),
    ("stage4", ((256, 2), (256, 1))),
    ("stage5", ((512, 2), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 1))),
)
FD_MOBILENET_STEM_CHANNELS = 32


class FDMobileNet(MobileNetBackbone):
    """FD-MobileNet alpha x (Table 1).

    Args:
        width_mult (float): alpha (1.0, 0.5, 0.25 in the paper; any positive value works).
        norm (str): detectron2 norm after every conv (BN, SyncBN, FrozenBN, GN).
        in_channels (int): input image channels.
        stage5_dilation (int): 1 (paper) or 2 (stage5 at stride 16, dilated depthwise convs).
        num_classes, out_features, freeze_at: see :class:`MobileNetBackbone`.
    """

    def __init__(self, width_mult=1.0, *, norm="BN", in_channels=3, stage5_dilation=1,
                 num_classes=None, out_features=None, freeze_at=0):
        c = scale_channels(FD_MOBILENET_STEM_CHANNELS, width_mult)
        stages = [("stem", [ConvNormAct(in_channels, c, 3, 2, norm=norm, activation="relu")])]
        stages += depthwise_separable_stages(FD_MOBILENET_STAGES, c, width_mult, norm, stage5_dilation)[0]
        super().__init__(stages, num_classes=num_classes, out_features=out_features,
                         freeze_at=freeze_at)
        self.width_mult = width_mult


@BACKBONE_REGISTRY.register()
def build_fd_mobilenet_backbone(cfg, input_shape):
    """FD-MobileNet from ``cfg.MODEL.MOBILENET`` (WIDTH_MULT, NORM, OUT_FEATURES, STAGE5_DILATION,
    NUM_CLASSES) and ``cfg.MODEL.BACKBONE.FREEZE_AT``."""
    return FDMobileNet(**common_backbone_kwargs(cfg, input_shape))
