"""FLOPs (fvcore multiply-adds, conv + fc) of the classifiers against their papers, and pinned
parameter counts (a silent change to a layer changes one of them)."""
import pytest
from torch import nn

from light_rcnn.analysis.flops_table import count_mult_adds, flops_table, format_markdown

# Parameters of the 1000-class classifiers, pinned (MobileNetV2 1.0 = torchvision's 3,504,872).
PARAMS = {
    "FD-MobileNet 1x": 2_901_288,
    "FD-MobileNet 0.5x": 993_928,
    "FD-MobileNet 0.25x": 383_160,
    "0.5x MobileNet-224": 1_331_592,
    "0.25x MobileNet-224": 470_072,
    "0.125x MobileNet-224": 186_480,
    "MobileNetV2 1.0": 3_504_872,
    "Dilated MobileNetV2 1.0": 3_520_424,
}


@pytest.fixture(scope="module")
def rows():
    return flops_table()


def test_every_row_within_5_percent_of_paper(rows):
    assert [r.model for r in rows] == list(PARAMS)
    for r in rows:
        assert r.paper_mflops is not None
        assert abs(r.ratio - 1) < 0.05, (r.model, r.measured_mflops, r.paper_mflops)


def test_pinned_parameter_counts(rows):
    for r in rows:
        assert round(r.params_m * 1e6) == PARAMS[r.model], r.model


def test_markdown(rows):
    text = format_markdown(rows)
    assert text.count("\n") == len(rows) + 1 and "| FD-MobileNet 1x | 144." in text


def test_fvcore_counts_grouped_conv_per_group():
    # C_out * (C_in / groups) * k * k * H * W multiply-adds; BN and pooling not counted
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, groups=3, bias=False),
                          nn.BatchNorm2d(6), nn.AdaptiveAvgPool2d(1))
    assert count_mult_adds(model, image_size=10) == 6 * 1 * 9 * 10 * 10
    dense = nn.Conv2d(3, 6, 3, padding=1, bias=False)
    assert count_mult_adds(dense, image_size=10) == 6 * 3 * 9 * 10 * 10
