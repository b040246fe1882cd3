"""MobileNet v1 (slow downsampling), widths compared in the FD-MobileNet paper."""
import pytest
import torch
from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY

from light_rcnn.config import get_light_rcnn_cfg
from light_rcnn.modeling.backbone import MobileNetV1

from .utils import check_features, check_frozen

ALL = ["stem", "stage2", "stage3", "stage4", "stage5"]
WIDTHS_1X = [64, 128, 256, 512, 1024]


@pytest.mark.parametrize("alpha", [0.5, 0.25, 0.125])
def test_stage_shapes_and_strides(alpha):
    model = MobileNetV1(alpha, out_features=ALL)
    check_features(model, {n: int(c * alpha) for n, c in zip(ALL, WIDTHS_1X)})


def test_layout_slow_downsampling():
    model = MobileNetV1(0.25, num_classes=10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 27  # 1 conv + 13 DS units (+ fc = 28 layers)
    strides = [c.stride[0] for c in convs]
    # 4x downsampling after 4 layers, 32x after 24 layers (FD-MobileNet Sec. 2)
    assert strides[:4].count(2) == 2 and strides[:24].count(2) == 5 and strides.count(2) == 5
    assert model.linear.in_features == 256


@pytest.mark.parametrize("freeze_at", [0, 3])
def test_freeze_at_from_config(freeze_at):
    cfg = get_light_rcnn_cfg()
    cfg.MODEL.MOBILENET.WIDTH_MULT = 0.25
    cfg.MODEL.MOBILENET.OUT_FEATURES = ["stage4"]
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    model = BACKBONE_REGISTRY.get("build_mobilenet_v1_backbone")(cfg, ShapeSpec(channels=3))
    check_frozen(model, ALL[:freeze_at], ALL[freeze_at:4])
    assert not hasattr(model, "stage5")
    model(torch.randn(1, 3, 48, 40))["stage4"].mean().backward()
    assert all(p.grad is None for name in ALL[:freeze_at] for p in getattr(model, name).parameters())
    assert all(p.grad is not None for name in ALL[freeze_at:4] for p in getattr(model, name).parameters())
