"""Helpers shared by the mobile-backbone tests."""
import math

import torch
from torch import nn

from detectron2.layers import FrozenBatchNorm2d

# An odd, non-square input: every stride-2 layer rounds up (3x3, padding 1).
ODD_INPUT = (1, 3, 67, 93)
STRIDES = {"stem": 2, "stage2": 4, "stage3": 8, "stage4": 16, "stage5": 32}


def expected_hw(h, w, stride):
    for _ in range(int(math.log2(stride))):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return h, w


def check_features(model, channels, strides=STRIDES, size=ODD_INPUT):
    """Run ``model`` on an odd input and compare every feature with output_shape and the
    expected ``channels`` (dict name -> channels) and ``strides``."""
    torch.manual_seed(0)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(*size))
    shapes = model.output_shape()
    assert set(out) == set(channels) == set(shapes)
    for name, c in channels.items():
        assert shapes[name].channels == c, name
        assert shapes[name].stride == strides[name], name
        n, _, h, w = size
        assert tuple(out[name].shape) == (n, c) + expected_hw(h, w, strides[name]), name
        assert torch.isfinite(out[name]).all()
    return out


def check_frozen(model, frozen, trainable):
    """Feature modules in ``frozen`` have no trainable parameter and only FrozenBatchNorm2d;
    those in ``trainable`` have trainable parameters and BatchNorm2d."""
    for name in frozen:
        module = getattr(model, name)
        assert all(not p.requires_grad for p in module.parameters()), name
        assert not any(isinstance(m, nn.BatchNorm2d) for m in module.modules()), name
        assert any(isinstance(m, FrozenBatchNorm2d) for m in module.modules()), name
    for name in trainable:
        module = getattr(model, name)
        assert all(p.requires_grad for p in module.parameters()), name
        assert any(isinstance(m, nn.BatchNorm2d) for m in module.modules()), name
        assert not any(isinstance(m, FrozenBatchNorm2d) for m in module.modules()), name
