"""Mobile backbones; importing this package registers their builders in BACKBONE_REGISTRY:
``build_fd_mobilenet_backbone``, ``build_mobilenet_v1_backbone``, ``build_mobilenet_v2_backbone``
and ``build_dilated_mobilenet_v2_backbone`` (keys in ``cfg.MODEL.MOBILENET``).

Every backbone exposes ``stem`` (stride 2), ``stage2`` .. ``stage5`` (strides 4, 8, 16, 32) and,
with a classifier, ``linear``.
"""
from .blocks import (
    ConvNormAct,
    DepthwiseSeparable,
    InvertedResidual,
    MobileNetBackbone,
    PyramidDilatedInvertedResidual,
)
from .dilated_mobilenet_v2 import DilatedMobileNetV2, build_dilated_mobilenet_v2_backbone
from .fd_mobilenet import FDMobileNet, build_fd_mobilenet_backbone
from .mobilenet_v1 import MobileNetV1, build_mobilenet_v1_backbone
from .mobilenet_v2 import MobileNetV2, build_mobilenet_v2_backbone

__all__ = [k for k in globals().keys() if not k.startswith("_")]
