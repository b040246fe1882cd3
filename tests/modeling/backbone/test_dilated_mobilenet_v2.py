"""Pyramid depth-wise dilated MobileNetV2 (dilated-MobileNetV2 paper, Sec. 2.3, Table 3)."""
import pytest
import torch
from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY

from light_rcnn.config import get_light_rcnn_cfg
from light_rcnn.modeling.backbone import DilatedMobileNetV2, MobileNetV2
from light_rcnn.modeling.backbone.blocks import PyramidDilatedInvertedResidual, split_channels
from light_rcnn.modeling.backbone.dilated_mobilenet_v2 import capped_rates

from .utils import check_features, check_frozen

ALL = ["stem", "stage2", "stage3", "stage4", "stage5"]


def _blocks(model):
    return [b for b in model.modules() if isinstance(b, PyramidDilatedInvertedResidual)]


@pytest.mark.parametrize("alpha,channels", [(1.0, [16, 24, 32, 96, 320]),
                                            (0.5, [8, 16, 16, 48, 160])])
def test_stage_shapes_and_strides(alpha, channels):
    check_features(DilatedMobileNetV2(alpha, out_features=ALL), dict(zip(ALL, channels)))


def test_table3_prelu_dilation_and_residuals():
    model = DilatedMobileNetV2(1.0, num_classes=10)
    blocks = _blocks(model)
    assert len(blocks) == 17
    assert [b.out_channels for b in blocks] == [16, 24, 24, 32, 32, 32, 64, 64, 64, 64,
                                                96, 96, 96, 160, 160, 160, 320]
    # PReLU after every conv except the projection of each block
    assert isinstance(model.stem[0].conv.activation, nn.PReLU)
    assert isinstance(model.head.conv.activation, nn.PReLU)
    for b in blocks:
        assert b.project.conv.activation is None
        if b.expand is not None:
            assert isinstance(b.expand.conv.activation, nn.PReLU)
        for branch in b.branches:
            assert isinstance(branch.conv.activation, nn.PReLU)
            assert branch.conv.groups == branch.conv.in_channels  # depthwise
    assert not any(isinstance(m, (nn.ReLU, nn.ReLU6)) for m in model.modules())
    # parallel dilated branches: (1,2,3,4) up to stride 16, capped to (1,2,3,3) on 7x7 maps
    for i, b in enumerate(blocks, start=1):
        rates = tuple(br.conv.dilation[0] for br in b.branches)
        assert rates == ((1, 2, 3, 3) if i >= 14 else (1, 2, 3, 4)), i
        assert b.dilation_rates == rates
    assert blocks[0].expand is None and blocks[1].expand.conv.out_channels == 16 * 6
    assert [i for i, b in enumerate(blocks, 1) if b.use_residual] == [3, 5, 6, 8, 9, 10, 12,
                                                                      13, 15, 16]


def test_same_convolution_cost_as_mobilenet_v2():
    # Table 1 of the paper: a dilated separable conv has the parameters of the plain one.
    def conv_params(model):
        return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))
    assert conv_params(DilatedMobileNetV2(1.0)) == conv_params(MobileNetV2(1.0))


def test_capped_rates():
    assert capped_rates((1, 2, 3, 4), 16, 224) == (1, 2, 3, 4)
    assert capped_rates((1, 2, 3, 4), 32, 224) == (1, 2, 3, 3)
    assert capped_rates((1, 2, 3, 4), 32, 0) == (1, 2, 3, 4)
    with pytest.raises(ValueError, match=r"dilation rates must be positive integers, got \[0, 2\]"):
        capped_rates((0, 2), 8, 224)
    assert split_channels(10, 4) == [3, 3, 2, 2]
    with pytest.raises(ValueError, match="cannot split 3 channels into 4 branches"):
        split_channels(3, 4)


def test_hierarchical_fusion_and_stage5_dilation_from_config():
    cfg = get_light_rcnn_cfg()
    cfg.MODEL.MOBILENET.WIDTH_MULT = 0.5
    cfg.MODEL.MOBILENET.HIERARCHICAL_FUSION = True
    cfg.MODEL.MOBILENET.STAGE5_DILATION = 2
    cfg.MODEL.MOBILENET.OUT_FEATURES = ["stage4", "stage5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    model = BACKBONE_REGISTRY.get("build_dilated_mobilenet_v2_backbone")(cfg, ShapeSpec(channels=3))
    assert all(b.hierarchical_fusion for b in _blocks(model))
    assert all(b.dilation_rates == (2, 4, 6, 6) for b in model.stage5)
    check_features(model, {"stage4": 48, "stage5": 160}, strides={"stage4": 16, "stage5": 16})
    check_frozen(model, ALL[:2], ALL[2:])
    model.train()
    model(torch.randn(1, 3, 40, 56))["stage5"].square().mean().backward()
    assert model.stage5[0].branches[3].conv.weight.grad is not None


def test_hierarchical_fusion_needs_equal_splits():
    with pytest.raises(ValueError, match="hierarchical fusion needs equal branch widths; 6 channels do not split"):
        PyramidDilatedInvertedResidual(6, 8, expand_ratio=1, dilation_rates=(1, 2, 3, 4),
                                       hierarchical_fusion=True)
