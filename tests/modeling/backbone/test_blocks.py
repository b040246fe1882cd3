"""Shared blocks and the MobileNetBackbone base class."""
import pytest
import torch

from light_rcnn.modeling.backbone import FDMobileNet
from light_rcnn.modeling.backbone.blocks import (
    ConvNormAct,
    DepthwiseSeparable,
    InvertedResidual,
    MobileNetBackbone,
    make_activation,
    make_divisible,
    scale_channels,
)


def test_channel_rounding():
    assert [scale_channels(32, a) for a in (1.0, 0.5, 0.25, 0.125, 0.3)] == [32, 16, 8, 4, 10]
    assert [make_divisible(v) for v in (32, 16, 12, 4, 1280 * 0.75)] == [32, 16, 16, 8, 960]
    with pytest.raises(ValueError, match="width multiplier must be positive, got 0"):
        scale_channels(32, 0)
    with pytest.raises(ValueError, match="Unknown activation 'gelu' \\(expected relu, relu6 or prelu\\)"):
        make_activation("gelu", 4)


def test_blocks_shapes_and_residual():
    x = torch.randn(2, 8, 9, 11)
    assert DepthwiseSeparable(8, 12, 2)(x).shape == (2, 12, 5, 6)
    block = InvertedResidual(8, 8, 1, expand_ratio=6).eval()
    assert block.use_residual and block(x).shape == x.shape
    assert ConvNormAct(8, 4, 1, norm="", activation=None).conv.norm is None


def test_bad_out_features_and_names():
    with pytest.raises(ValueError, match=r"out_features \['res4'\] not among \['stem', 'stage2'"):
        FDMobileNet(0.25, out_features=["res4"])
    with pytest.raises(ValueError, match=r"out_features \['linear'\] not among .* with a classifier"):
        FDMobileNet(0.25, out_features=["linear"])  # no classifier
    with pytest.raises(ValueError, match=r"stages must be named .*, got \['stage2'\]"):
        MobileNetBackbone([("stage2", [ConvNormAct(3, 4, 3, 2)])])
    with pytest.raises(ValueError, match="stage5 dilation must be 1 or 2, got 4"):
        FDMobileNet(0.25, stage5_dilation=4)
