"""Separated large-kernel neck: shapes, strides, padding, validation, and its use by RPN + ROI heads."""
import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone, build_backbone, build_model

from light_rcnn import load_config
from light_rcnn.modeling.large_kernel_neck import SeparatedLargeKernelNeck

from ..conftest import REPO_ROOT, TINY_RESNET

BASE = f"{REPO_ROOT}/configs/Base-LightRCNN-C4.yaml"


class _FixedFeature(Backbone):
    """A bottom-up 'backbone' that returns its input as feature 'res4' (stride 16)."""

    def __init__(self, channels):
        super().__init__()
        self._out_features = ["res4"]
        self._out_feature_channels = {"res4": channels}
        self._out_feature_strides = {"res4": 16}

    def forward(self, x):
        return {"res4": x}


@pytest.mark.parametrize("k,mid,out", [(3, 8, 16), (7, 16, 8), (15, 64, 32)])
def test_neck_preserves_odd_non_square_size(k, mid, out):
    torch.manual_seed(0)
    neck = SeparatedLargeKernelNeck(_FixedFeature(24), kernel_size=k, mid_channels=mid, out_channels=out)
    y = neck(torch.randn(2, 24, 67, 93))["thin"]
    assert y.shape == (2, out, 67, 93)
    assert neck.output_shape() == {"thin": ShapeSpec(channels=out, stride=16)}
    assert (y >= 0).all()  # ReLU after the sum
    # Branch A is k x 1 then 1 x k, branch B 1 x k then k x 1, padded on the long axis only.
    a1, a2 = neck.branch_a
    b1, b2 = neck.branch_b
    assert (a1.kernel_size, a2.kernel_size, b1.kernel_size, b2.kernel_size) == ((k, 1), (1, k), (1, k), (k, 1))
    assert (a1.padding, a2.padding) == ((k // 2, 0), (0, k // 2))
    assert a1.in_channels == 24 and a1.out_channels == mid and a2.out_channels == out


def test_neck_is_the_sum_of_two_separable_branches():
    neck = SeparatedLargeKernelNeck(_FixedFeature(4), kernel_size=5, mid_channels=3, out_channels=2)
    x = torch.randn(1, 4, 11, 9)
    expected = torch.relu(neck.branch_a(x) + neck.branch_b(x))
    torch.testing.assert_close(neck(x)["thin"], expected)
    # With positive weights an impulse spreads over exactly the k x k square around it: the map is
    # neither shifted nor shrunk by the padding.
    for conv in list(neck.branch_a) + list(neck.branch_b):
        torch.nn.init.constant_(conv.weight, 1.0)
        torch.nn.init.zeros_(conv.bias)
    impulse = torch.zeros(1, 4, 11, 9)
    impulse[0, 0, 5, 4] = 1
    support = neck(impulse)["thin"][0, 0] > 0
    assert support.sum() == 25 and support[3:8, 2:7].all()


def test_neck_init_is_light_head_style():
    torch.manual_seed(0)
    neck = SeparatedLargeKernelNeck(_FixedFeature(256), kernel_size=15, mid_channels=256, out_channels=256)
    w = neck.branch_a[0].weight
    assert abs(w.std().item() - 0.01) < 1e-3 and neck.branch_a[0].bias.abs().max() == 0
    assert neck.branch_a[0].norm is None


def _tiny_cfg(*opts):
    return load_config(BASE, TINY_RESNET + ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""] + list(opts))


def test_builder_wraps_resnet_c4_and_keeps_stride_16():
    cfg = _tiny_cfg("MODEL.SLK.MID_CHANNELS", 8, "MODEL.SLK.OUT_CHANNELS", 12)
    backbone = build_backbone(cfg)
    assert isinstance(backbone, SeparatedLargeKernelNeck)
    assert "res5" not in dict(backbone.bottom_up.named_children())  # ResNet stops at C4
    out = backbone(torch.randn(1, 3, 160, 224))
    assert out["thin"].shape == (1, 12, 10, 14)


def test_builder_norm_choice():
    backbone = build_backbone(_tiny_cfg("MODEL.SLK.NORM", "BN", "MODEL.SLK.MID_CHANNELS", 8))
    conv = backbone.branch_b[1]
    assert isinstance(conv.norm, torch.nn.BatchNorm2d) and conv.bias is None


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("MODEL.SLK.KERNEL_SIZE", 14, r"MODEL.SLK.KERNEL_SIZE=14: expected an odd integer >= 3"),
        ("MODEL.SLK.KERNEL_SIZE", 1, r"MODEL.SLK.KERNEL_SIZE=1: expected an odd integer >= 3"),
        ("MODEL.SLK.MID_CHANNELS", 0, r"MODEL.SLK.MID_CHANNELS=0: expected a positive integer"),
        ("MODEL.SLK.OUT_CHANNELS", 0, r"MODEL.SLK.OUT_CHANNELS=0: expected a positive integer"),
        ("MODEL.SLK.IN_FEATURE", "res5", r"MODEL.SLK.IN_FEATURE='res5' is not an output .* \['res4'\]"),
        ("MODEL.SLK.BOTTOM_UP", "nope", r"MODEL.SLK.BOTTOM_UP='nope': expected a registered"),
    ],
)
def test_invalid_config_names_key_and_allowed_values(key, value, message):
    with pytest.raises(ValueError, match=message):
        build_backbone(_tiny_cfg(key, value))


def test_thin_map_feeds_both_rpn_and_roi_heads():
    cfg = _tiny_cfg("MODEL.SLK.MID_CHANNELS", 8, "MODEL.SLK.OUT_CHANNELS", 16,
                    "MODEL.LIGHT_HEAD.CONV_DIMS", [8, 16], "MODEL.RPN.POST_NMS_TOPK_TEST", 10)
    model = build_model(cfg).eval()
    assert model.proposal_generator.in_features == ["thin"] and model.roi_heads.in_features == ["thin"]
    seen = {}
    model.backbone.register_forward_hook(lambda m, i, o: seen.__setitem__("thin", o["thin"]))
    model.proposal_generator.register_forward_hook(
        lambda m, args, o: seen.__setitem__("rpn", args[1]["thin"]))
    model.roi_heads.pooler.register_forward_hook(lambda m, args, o: seen.__setitem__("roi", args[0][0]))
    with torch.no_grad():
        model([{"image": torch.rand(3, 90, 130) * 255}])
    assert seen["rpn"] is seen["thin"] and seen["roi"] is seen["thin"]
    assert seen["thin"].shape[1] == 16
