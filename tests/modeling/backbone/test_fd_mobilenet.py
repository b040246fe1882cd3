"""FD-MobileNet (FD-MobileNet paper, Table 1)."""
import pytest
import torch
from torch import nn

from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY

from light_rcnn.config import get_light_rcnn_cfg
from light_rcnn.modeling.backbone import FDMobileNet
from light_rcnn.modeling.backbone.blocks import DepthwiseSeparable

from .utils import check_features, check_frozen

ALL = ["stem", "stage2", "stage3", "stage4", "stage5"]
# Table 1 widths of stem/stage2..5 at 1x.
WIDTHS_1X = [32, 64, 128, 256, 1024]


@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.25, 0.3])
def test_stage_shapes_and_strides(alpha):
    model = FDMobileNet(alpha, out_features=ALL)
    expected = {n: max(1, int(c * alpha + 0.5)) for n, c in zip(ALL, WIDTHS_1X)}
    check_features(model, expected)


def test_table1_layout():
    model = FDMobileNet(1.0, out_features=ALL)
    # 1 conv + 11 DS units: 1 / 2 / 2 / 6 units in stage2..stage5.
    assert [len(getattr(model, n)) for n in ALL] == [1, 1, 2, 2, 6]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 23  # + the fc = 24 layers (Sec. 2 "Overall Architecture")
    # 32x downsampling (5 stride-2 layers) within the first 12 layers, none after.
    assert [c.stride[0] for c in convs[:12]].count(2) == 5
    assert all(c.stride[0] == 1 for c in convs[12:])
    # every depthwise conv is followed by BN + ReLU, as every pointwise conv
    for block in model.modules():
        if isinstance(block, DepthwiseSeparable):
            for part in (block.depthwise.conv, block.pointwise.conv):
                assert isinstance(part.norm, nn.BatchNorm2d)
                assert isinstance(part.activation, nn.ReLU)
            assert block.depthwise.conv.groups == block.in_channels
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) for m in model.modules())


def test_stage5_dilation_keeps_stride_16():
    model = FDMobileNet(0.25, stage5_dilation=2, out_features=["stage4", "stage5"])
    out = check_features(model, {"stage4": 64, "stage5": 256},
                         strides={"stage4": 16, "stage5": 16})
    assert out["stage4"].shape[-2:] == out["stage5"].shape[-2:]
    assert all(b.depthwise.conv.dilation == (2, 2) for b in model.stage5)


def test_unused_stages_not_built():
    model = FDMobileNet(0.25, out_features=["stage4"])
    assert not hasattr(model, "stage5")


def test_classifier_head():
    model = FDMobileNet(0.25, num_classes=7).eval()
    out = model(torch.randn(2, 3, 64, 80))
    assert list(out) == ["linear"] and out["linear"].shape == (2, 7)
    assert model.linear.in_features == 256


@pytest.mark.parametrize("freeze_at", [0, 1, 2, 4])
def test_freeze_at(freeze_at):
    model = FDMobileNet(0.25, out_features=["stage5"], freeze_at=freeze_at)
    check_frozen(model, ALL[:freeze_at], ALL[freeze_at:])
    model.train()
    model(torch.randn(1, 3, 64, 64))["stage5"].sum().backward()
    for name in ALL:
        grads = [p.grad for p in getattr(model, name).parameters()]
        if name in ALL[:freeze_at]:
            assert all(g is None for g in grads), name
        else:
            assert all(g is not None for g in grads), name


@pytest.mark.parametrize("norm,cls", [("BN", nn.BatchNorm2d), ("SyncBN", nn.SyncBatchNorm),
                                      ("FrozenBN", FrozenBatchNorm2d), ("GN", nn.GroupNorm)])
def test_norm_choice_from_config(norm, cls):
    cfg = get_light_rcnn_cfg()
    cfg.MODEL.MOBILENET.NORM = norm
    cfg.MODEL.MOBILENET.OUT_FEATURES = ["stage3", "stage4"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    model = BACKBONE_REGISTRY.get("build_fd_mobilenet_backbone")(cfg, ShapeSpec(channels=3))
    norms = [m.conv.norm for m in model.modules() if hasattr(m, "conv") and hasattr(m.conv, "norm")]
    assert norms and all(type(n) is cls for n in norms)
    if norm != "SyncBN":  # SyncBatchNorm needs a process group to run in training mode
        check_features(model, {"stage3": 128, "stage4": 256})
