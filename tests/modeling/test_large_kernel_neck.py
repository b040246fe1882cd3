"""Separated large-kernel neck: shapes, strides, padding, validation, its use by RPN + ROI heads, and
pinned outputs of a seeded neck on a fixed input."""
import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone, build_backbone, build_model

from light_rcnn import load_config
from light_rcnn.modeling.large_kernel_neck import SeparatedLargeKernelNeck


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


def _set_weights(neck, a=1.0, b=1.0):
    """Every weight of branch A's convs ``a``, of branch B's second conv ``b`` (first conv 1), no bias."""
    for conv, value in zip(list(neck.branch_a) + list(neck.branch_b), (a, a, 1.0, b)):
        torch.nn.init.constant_(conv.weight, value)
        torch.nn.init.zeros_(conv.bias)


def _impulse(channels, h, w, y, x):
    impulse = torch.zeros(1, channels, h, w)
    impulse[0, 0, y, x] = 1
    return impulse


def test_neck_sums_two_separable_branches_over_a_k_by_k_square():
    # With unit weights an impulse reaches, through each branch, exactly the k x k square around it
    # (neither shifted nor shrunk by the padding), with value mid_channels (3): the sum is 6 there.
    neck = SeparatedLargeKernelNeck(_FixedFeature(4), kernel_size=5, mid_channels=3, out_channels=2)
    _set_weights(neck)
    expected = torch.zeros(1, 2, 11, 9)
    expected[..., 3:8, 2:7] = 6.0
    torch.testing.assert_close(neck(_impulse(4, 11, 9, 5, 4))["thin"], expected)
    # Near a corner the square is cut by the border, not moved.
    expected = torch.zeros(1, 2, 11, 9)
    expected[..., 0:3, 6:9] = 6.0
    torch.testing.assert_close(neck(_impulse(4, 11, 9, 0, 8))["thin"], expected)


def test_neck_relu_follows_the_sum_of_the_branches():
    # Branch A gives +3 on the square, branch B -3 * 2 = -6: ReLU(3 - 6) = 0 everywhere, where a
    # ReLU inside each branch would give 3; with B at -0.5 the sum is 3 - 1.5 = 1.5.
    neck = SeparatedLargeKernelNeck(_FixedFeature(4), kernel_size=5, mid_channels=3, out_channels=2)
    _set_weights(neck, b=-2.0)
    assert neck(_impulse(4, 11, 9, 5, 4))["thin"].abs().max() == 0
    _set_weights(neck, b=-0.5)
    out = neck(_impulse(4, 11, 9, 5, 4))["thin"]
    torch.testing.assert_close(out[..., 3:8, 2:7], torch.full((1, 2, 5, 5), 1.5))
    assert out.sum().item() == pytest.approx(1.5 * 2 * 25)


def test_neck_init_is_light_head_style():
    torch.manual_seed(0)
    neck = SeparatedLargeKernelNeck(_FixedFeature(256), kernel_size=15, mid_channels=256, out_channels=256)
    w = neck.branch_a[0].weight
    assert abs(w.std().item() - 0.01) < 1e-3 and neck.branch_a[0].bias.abs().max() == 0
    assert neck.branch_a[0].norm is None


@pytest.fixture
def tiny_cfg(config_file, tiny_resnet):
    """``f(*opts)`` -> Base-LightRCNN-C4 with a tiny ResNet, on CPU, without weights."""
    base = config_file("Base-LightRCNN-C4.yaml")
    return lambda *opts: load_config(base, tiny_resnet + ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""] + list(opts))


def test_builder_wraps_resnet_c4_and_keeps_stride_16(tiny_cfg):
    cfg = tiny_cfg("MODEL.SLK.MID_CHANNELS", 8, "MODEL.SLK.OUT_CHANNELS", 12)
    backbone = build_backbone(cfg)
    assert isinstance(backbone, SeparatedLargeKernelNeck)
    assert "res5" not in dict(backbone.bottom_up.named_children())  # ResNet stops at C4
    out = backbone(torch.randn(1, 3, 160, 224))
    assert out["thin"].shape == (1, 12, 10, 14)


def test_builder_norm_choice(tiny_cfg):
    backbone = build_backbone(tiny_cfg("MODEL.SLK.NORM", "BN", "MODEL.SLK.MID_CHANNELS", 8))
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
def test_invalid_config_names_key_and_allowed_values(tiny_cfg, key, value, message):
    with pytest.raises(ValueError, match=message):
        build_backbone(tiny_cfg(key, value))


def test_neck_rejects_an_even_kernel():
    with pytest.raises(ValueError, match=r"kernel_size=8: expected an odd integer >= 3"):
        SeparatedLargeKernelNeck(_FixedFeature(4), kernel_size=8)


def test_thin_map_feeds_both_rpn_and_roi_heads(tiny_cfg):
    cfg = tiny_cfg("MODEL.SLK.MID_CHANNELS", 8, "MODEL.SLK.OUT_CHANNELS", 16,
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


# ------------------------------------------------------------------------------------------------
# Pinned regression test: a seeded neck (Light-Head init) on a fixed odd-sized input; its output
# statistics and a few values (centre, borders) must not change unless the forward logic does.
# ------------------------------------------------------------------------------------------------
def _pinned_neck_output():
    torch.manual_seed(121)
    neck = SeparatedLargeKernelNeck(_FixedFeature(24), kernel_size=7, mid_channels=16, out_channels=8)
    # x 50: the N(0, 0.01) weights shrink the map by ~50, so the pinned values are of order 1.
    x = torch.randn(2, 24, 13, 19) * 50
    with torch.no_grad():
        return neck(x)["thin"]


def test_neck_pinned_output(single_thread):
    y = _pinned_neck_output()
    assert y.shape == (2, 8, 13, 19)
    assert int((y > 0).sum()) == 1951  # of 3952
    assert y.sum().item() == pytest.approx(1311.6198, abs=1e-2)
    stats = torch.stack([y.mean(), y.std(), y.max()])
    torch.testing.assert_close(stats, torch.tensor([0.3319, 0.4938, 3.6904]), rtol=0, atol=1e-4)
    # centre, corners and a bottom-border value (the padding), over several output channels
    values = torch.stack([y[0, 2, 6, 9], y[0, 7, 6, 9], y[0, 3, 0, 0],
                          y[1, 7, 12, 18], y[1, 5, 0, 18], y[0, 1, 12, 4]])
    expected = torch.tensor([0.9020, 1.6051, 0.2137, 0.4699, 0.2899, 0.3895])
    torch.testing.assert_close(values, expected, rtol=0, atol=1e-4)
