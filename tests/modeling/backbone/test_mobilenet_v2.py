"""MobileNetV2 as Table 2 of the dilated-MobileNetV2 paper."""
import pytest
import torch
from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY

from light_rcnn.config import get_light_rcnn_cfg
from light_rcnn.modeling.backbone import MobileNetV2
from light_rcnn.modeling.backbone.blocks import InvertedResidual

from .utils import check_features, check_frozen

ALL = ["stem", "stage2", "stage3", "stage4", "stage5"]


@pytest.mark.parametrize("alpha,channels", [(1.0, [16, 24, 32, 96, 320]),
                                            (0.5, [8, 16, 16, 48, 160])])
def test_stage_shapes_and_strides(alpha, channels):
    check_features(MobileNetV2(alpha, out_features=ALL), dict(zip(ALL, channels)))


def test_table2_rows():
    model = MobileNetV2(1.0, out_features=ALL)
    blocks = [b for b in model.modules() if isinstance(b, InvertedResidual)]
    assert len(blocks) == 17  # layers 1-17
    assert [b.out_channels for b in blocks] == [16, 24, 24, 32, 32, 32, 64, 64, 64, 64,
                                                96, 96, 96, 160, 160, 160, 320]
    assert [i + 1 for i, b in enumerate(blocks) if b.stride == 2] == [2, 4, 7, 14]
    assert blocks[0].expand is None  # expansion factor 1 for layer 1, 6 elsewhere
    assert all(b.expand.conv.out_channels == 6 * b.in_channels for b in blocks[1:])
    # residual exactly where stride 1 and in == out channels
    assert [i + 1 for i, b in enumerate(blocks) if b.use_residual] == [3, 5, 6, 8, 9, 10, 12,
                                                                       13, 15, 16]
    # ReLU6 after expansion and depthwise convs, linear projection
    for b in blocks:
        assert isinstance(b.depthwise.conv.activation, nn.ReLU6)
        assert b.project.conv.activation is None


def test_classifier_head_has_layer18():
    model = MobileNetV2(1.0, num_classes=5).eval()
    assert model.head.conv.out_channels == 1280 and model.linear.in_features == 1280
    assert model(torch.randn(1, 3, 64, 64))["linear"].shape == (1, 5)


def test_builder_freeze_and_norm():
    cfg = get_light_rcnn_cfg()
    cfg.MODEL.MOBILENET.WIDTH_MULT = 0.5
    cfg.MODEL.MOBILENET.NORM = "FrozenBN"
    cfg.MODEL.MOBILENET.OUT_FEATURES = ["stage5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    model = BACKBONE_REGISTRY.get("build_mobilenet_v2_backbone")(cfg, ShapeSpec(channels=3))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(not p.requires_grad for p in model.stage2.parameters())
    assert all(p.requires_grad for p in model.stage3.parameters())
    check_features(model, {"stage5": 160})


def test_freeze_converts_bn():
    model = MobileNetV2(0.5, out_features=["stage4"], freeze_at=3)
    check_frozen(model, ALL[:3], ["stage4"])
