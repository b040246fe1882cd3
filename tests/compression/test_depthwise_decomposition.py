"""Depth-wise decomposition (He et al., Sec. 3): patch sampling, Algorithms 1-3, channel
decomposition, the replacement modules and the Sec. 4.1 random-data check, on CPU."""
import copy

import numpy as np
import pytest
import torch
from detectron2.layers import Conv2d
from torch import nn

from light_rcnn.compression import (
    ChannelDecomposedConv,
    DepthwiseSeparableConv,
    channel_decomposition,
    collect_conv_inputs,
    collect_paired_conv_inputs,
    decompose_conv,
    decompose_layers,
    depthwise_decomposition,
    extract_patches,
    random_data_experiment,
    replace_module,
)


def _separable(conv, noise=0.0, seed=0):
    """Overwrite ``conv.weight`` with an exactly depthwise-separable one (+ relative noise)."""
    g = torch.Generator().manual_seed(seed)
    n, c, kh, kw = conv.weight.shape
    d = torch.randn(c, kh * kw, generator=g)
    p = torch.randn(n, c, generator=g) / c ** 0.5
    w = (p[:, :, None] * d[None]).reshape(n, c, kh, kw)
    with torch.no_grad():
        conv.weight.copy_(w + noise * w.std() * torch.randn(w.shape, generator=g))
    return conv


def _relative(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 1, 2), (1, (2, 0), 1)])
def test_patches_are_the_conv_inputs_at_the_sampled_positions(stride, padding, dilation):
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 7, (3, 3) if padding != (2, 0) else (5, 1), stride=stride, padding=padding,
                     dilation=dilation)
    x = torch.randn(3, 5, 13, 10)
    out = conv(x)
    b = torch.tensor([0, 2, 1, 2, 0])
    ys = torch.tensor([0, out.shape[2] - 1, 1, 0, out.shape[2] - 1])
    xs = torch.tensor([out.shape[3] - 1, 0, 2, 1, 0])
    patches = extract_patches(x, conv, b, ys, xs)
    assert patches.shape == (5, 5, conv.kernel_size[0] * conv.kernel_size[1])
    mine = patches.flatten(1) @ conv.weight.flatten(1).T + conv.bias
    assert torch.allclose(mine, out[b, :, ys, xs], atol=1e-5)


def test_collect_samples_patches_per_image_and_roi_batches():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2, padding=1))
    batches = [torch.randn(2, 3, 9, 11) for _ in range(3)]
    got = collect_conv_inputs(net, ["0", "2"], batches, num_images=4, patches_per_image=5, seed=1)
    # 4 images = the first two batches of 2; 5 patches per image.
    assert got["0"].shape == (20, 3, 9) and got["2"].shape == (20, 4, 9)
    again = collect_conv_inputs(net, ["0"], batches, num_images=4, patches_per_image=5, seed=1)
    assert torch.equal(got["0"], again["0"])  # seeded: the same positions every pass
    assert net.training  # the mode is restored


@pytest.mark.parametrize("compensate", [False, True])
def test_separable_weight_is_reproduced_exactly(compensate):
    torch.manual_seed(0)
    conv = _separable(nn.Conv2d(6, 9, 3, stride=2, padding=1))
    x = torch.randn(8, 6, 12, 15)
    net = nn.Sequential(conv)
    inputs = collect_conv_inputs(net, ["0"], [x], patches_per_image=10)["0"]
    new, error = decompose_conv(conv, inputs, compensate=compensate)
    assert isinstance(new, DepthwiseSeparableConv)
    assert error < 1e-6
    fresh = torch.randn(2, 6, 11, 7)  # other inputs, other size: the layer itself is reproduced
    assert _relative(new(fresh), conv(fresh)) < 1e-5


def test_algorithm1_is_the_papers_per_channel_svd():
    """D_i = W_i V_0 and P_i = V_0, V_0 the first right singular vector of Y_i = X_i W_i (Alg. 1)."""
    g = torch.Generator().manual_seed(3)
    n, c, k = 10, 4, 3
    weight = torch.randn(n, c, k, k, generator=g)
    x = torch.randn(200, c, k * k, generator=g)
    fit = depthwise_decomposition(weight, x, compensate=False, fit_bias=False)
    for i in range(c):
        w_i = weight[:, i].reshape(n, k * k).T.double().numpy()
        y_i = x[:, i].double().numpy() @ w_i
        v0 = np.linalg.svd(y_i, full_matrices=False)[2][0]
        p_i = fit["pointwise"][:, i, 0, 0].numpy()
        sign = np.sign(p_i @ v0)
        assert abs(abs(p_i @ v0) - 1) < 1e-8
        assert np.allclose(fit["depthwise"][i].reshape(-1).numpy(), sign * (w_i @ v0), atol=1e-8)


def test_compensation_lowers_the_error_on_random_data():
    """Sec. 4.1: errors near the paper's ~0.9 level, lower with compensation on the fitted samples."""
    r = random_data_experiment(channels=48, num_images=150, trials=2)
    plain = r["depth-wise decomposition"][0]
    compensated = r["depth-wise decomposition with compensation"][0]
    channel = r["channel decomposition"][0]
    assert 0.75 < compensated < plain < 0.98
    assert 0.75 < channel < 0.98
    assert r["settings"]["channel_speedup"] >= r["settings"]["depthwise_speedup"] * 0.9
    # On random data the gain of compensation is fitted noise: it does not carry to held-out samples.
    assert r["held_out"]["depth-wise decomposition with compensation"][0] > compensated


def test_channel_decomposition_full_rank_is_exact_and_error_falls_with_rank():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(12, 5, 3, 3, generator=g)
    x = torch.randn(300, 5, 9, generator=g) + 0.5  # non-zero mean: exercises the bias term
    errors = [channel_decomposition(weight, x, r)["relative_error"] for r in (2, 6, 12)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-6
    conv = nn.Conv2d(5, 12, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(weight)
    new, error = decompose_conv(conv, x, method="channel", rank=4)
    assert isinstance(new, ChannelDecomposedConv) and new.rank == 4
    # the module computes what the fit says: its error on the fitted patches is the reported one
    y = x.flatten(1) @ weight.flatten(1).T
    effective = new.expand.weight.flatten(1) @ new.reduce.weight.flatten(1)
    approx = x.flatten(1) @ effective.T + new.expand.bias - conv.bias
    assert abs(_relative(approx.detach(), y) - error) < 1e-4


def test_replacement_keeps_norm_activation_and_geometry():
    norm = nn.BatchNorm2d(12).eval()
    with torch.no_grad():
        norm.running_mean.fill_(0.3)
    conv = Conv2d(8, 12, 3, stride=2, padding=2, dilation=2, bias=False, norm=norm, activation=nn.ReLU())
    x = torch.randn(2, 8, 17, 14)
    for new in (DepthwiseSeparableConv.from_conv(conv), ChannelDecomposedConv.from_conv(conv, 5)):
        new.eval()
        assert new.norm is norm and isinstance(new.activation, nn.ReLU)
        out = new(x)
        assert out.shape == conv(x).shape and (out >= 0).all()
    dw = DepthwiseSeparableConv.from_conv(conv)
    assert dw.depthwise.groups == 8 and dw.depthwise.bias is None and dw.pointwise.bias is not None
    assert {k.split(".")[0] for k in dw.state_dict()} == {"depthwise", "pointwise", "norm"}


def test_replace_module_updates_plain_lists():
    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 3, 3, padding=1)
            self.convs = [self.conv1]

    head = Head()
    new = DepthwiseSeparableConv.from_conv(head.conv1)
    old = replace_module(head, "conv1", new)
    assert head.conv1 is new and head.convs[0] is new and old is not new


def _three_layer_net(noise, seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(6, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 12, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(12, 8, 3, padding=1))
    for i, layer in enumerate((net[0], net[2], net[4])):
        _separable(layer, noise=noise, seed=seed + i)
    return net


@pytest.mark.parametrize("method", ["depthwise", "channel"])
def test_multi_layer_decomposition_runs_in_execution_order(method):
    net = _three_layer_net(noise=0.5)
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(4, 6, 10, 10, generator=g) for _ in range(5)]
    reports = decompose_layers(net, ["4", "0", "2"], batches, method=method, num_images=20, patches_per_image=20,
                               rank_ratio=0.5)
    assert [r.name for r in reports] == ["0", "2", "4"]  # execution order, not the given order
    assert all(0 <= r.relative_error < 1 and r.num_samples == 400 for r in reports)
    expected = DepthwiseSeparableConv if method == "depthwise" else ChannelDecomposedConv
    assert all(isinstance(net[i], expected) for i in (0, 2, 4))


def _linear_on_patches(module, patches, original_bias):
    """What ``module`` (a decomposed conv, no norm/activation) computes at the given patches, minus
    the original bias, in the layout of ``patches.flatten(1) @ weight.flatten(1).T``."""
    w = (module.pointwise.weight.flatten(1)[:, :, None] * module.depthwise.weight.flatten(1)[None]).flatten(1)
    return patches.flatten(1) @ w.T + module.pointwise.bias - original_bias


def test_algorithm3_fits_the_original_networks_responses_from_decomposed_inputs():
    """The last layer's reported error is measured against the undecomposed network's responses
    (X' W) while its inputs come from the decomposed network (X), at the same positions."""
    g = torch.Generator().manual_seed(2)
    batches = [torch.randn(4, 6, 10, 10, generator=g) for _ in range(4)]
    for multi in (True, False):
        net = _three_layer_net(noise=0.3)
        original = copy.deepcopy(net)
        reports = decompose_layers(net, ["0", "2", "4"], batches, multi_layer=multi, num_images=16,
                                   patches_per_image=25)
        x_orig, x_dec = collect_paired_conv_inputs(original, net, "4", batches, num_images=16, patches_per_image=25)
        assert not torch.allclose(x_orig, x_dec)  # upstream layers changed what layer 4 sees
        conv = original[4]
        with torch.no_grad():
            target = x_orig.flatten(1) @ conv.weight.flatten(1).T
            deviation = _relative(_linear_on_patches(net[4], x_dec, conv.bias), target)
        if multi:
            assert abs(reports[-1].relative_error - deviation) < 1e-4
        else:  # fitted to the original's own inputs: it does not know about the upstream error
            assert reports[-1].relative_error < deviation - 0.05


def test_multi_layer_targets_beat_independent_layers():
    """Algorithm 3 gives a smaller end-to-end error on held-out inputs than decomposing every layer
    on the original's inputs (pinned seeds; the gain is a few percent on these small nets)."""
    totals = {False: 0.0, True: 0.0}
    for seed in (0, 1):
        g = torch.Generator().manual_seed(2 + seed)
        batches = [torch.randn(4, 6, 10, 10, generator=g) for _ in range(10)]
        held_out = torch.randn(8, 6, 10, 10, generator=g)
        for multi in (False, True):
            net = _three_layer_net(noise=0.3, seed=seed).eval()
            with torch.no_grad():
                reference = net(held_out)
            decompose_layers(net, ["0", "2", "4"], batches, multi_layer=multi, num_images=40, patches_per_image=50)
            with torch.no_grad():
                totals[multi] += _relative(net(held_out), reference)
    assert totals[True] < totals[False] < 2, totals
