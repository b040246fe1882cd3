"""The separable (matrix-product) ROIAlign against torchvision's kernel: values and input
gradients, every sampling rule, and where each implementation runs."""
import pytest
import torch
from detectron2.layers import ROIAlign
from detectron2.structures import Boxes
from torchvision.ops import roi_align

from light_rcnn.modeling.separable_roi_align import SeparableROIAlign, SeparableROIPooler, separable_roi_align


def _rois(generator, num_images, height, width, stride, count):
    """ROIs over (and partly beyond) the image, some tiny, some degenerate, batch indices shuffled."""
    index = torch.randint(0, num_images, (count,), generator=generator).float()
    xy = torch.rand(count, 2, generator=generator) * torch.tensor([width * stride, height * stride]) * 1.2 - 10
    wh = torch.rand(count, 2, generator=generator) * 160
    wh[:4] = torch.tensor([[0.0, 0.0], [0.0, 30.0], [3.0, 0.5], [1.0, 1.0]])  # degenerate and tiny
    return torch.cat([index[:, None], xy, xy + wh], dim=1)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 1, 2])
@pytest.mark.parametrize("output_size", [7, 14])
def test_values_and_gradients_match_torchvision(aligned, sampling_ratio, output_size):
    generator = torch.Generator().manual_seed(3 + sampling_ratio + output_size)
    features = torch.randn(3, 5, 9, 13, generator=generator, requires_grad=True)
    rois = _rois(generator, 3, 9, 13, 16, 40)
    grad_out = torch.randn(40, 5, output_size, output_size, generator=generator)

    expected = roi_align(features, rois, output_size, 1 / 16, sampling_ratio, aligned)
    (expected_grad,) = torch.autograd.grad(expected, features, grad_out)
    got = separable_roi_align(features, rois, output_size, 1 / 16, sampling_ratio, aligned)
    (got_grad,) = torch.autograd.grad(got, features, grad_out)

    assert got.shape == (40, 5, output_size, output_size) and got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_grad, expected_grad, rtol=0, atol=1e-4)
    assert expected.abs().sum() > 0 and expected_grad.abs().sum() > 0  # not an all-zero comparison


def test_an_image_without_rois_and_no_rois_at_all():
    features = torch.randn(3, 4, 6, 6, requires_grad=True)
    rois = torch.tensor([[2.0, 0, 0, 40, 50], [0.0, 10, 10, 60, 70]])  # image 1 has none
    got = separable_roi_align(features, rois, 7, 1 / 8, 0, True)
    torch.testing.assert_close(got, roi_align(features, rois, 7, 1 / 8, 0, True), rtol=0, atol=1e-5)
    got.sum().backward()
    assert features.grad[1].abs().sum() == 0 and features.grad[0].abs().sum() > 0
    assert separable_roi_align(features, torch.zeros(0, 5), 7, 1 / 8, 0, True).shape == (0, 4, 7, 7)


def test_module_uses_the_matrix_form_only_while_training_with_gradients(monkeypatch):
    module = SeparableROIAlign(ROIAlign((14, 14), 1 / 16, 0, aligned=True))
    calls = []
    monkeypatch.setattr(module, "_separable", lambda f, r: calls.append(1) or separable_roi_align(f, r, 14, 1 / 16, 0, True))
    features, rois = torch.randn(1, 2, 8, 8), torch.tensor([[0.0, 4, 4, 90, 100]])
    module.train()
    with torch.no_grad():
        module(features, rois)
    assert calls == []
    module(features.requires_grad_(), rois)
    assert calls == [1]
    module.eval()
    module(features, rois)
    assert calls == [1]


def test_pooler_keeps_roipooler_outputs_and_scripts():
    pooler = SeparableROIPooler(14, (1 / 16,), 0, "ROIAlignV2")
    assert all(isinstance(p, SeparableROIAlign) for p in pooler.level_poolers)
    features = [torch.randn(2, 3, 10, 12, requires_grad=True)]
    boxes = [Boxes(torch.tensor([[0.0, 0, 100, 90], [20, 30, 60, 70]])), Boxes(torch.tensor([[5.0, 5, 150, 140]]))]
    pooler.train()
    trained = pooler(features, boxes)
    pooler.eval()
    torch.testing.assert_close(trained, pooler(features, boxes), rtol=0, atol=1e-5)
    scripted = torch.jit.script(pooler)  # export paths compile the pooler; inference = torchvision's op
    torch.testing.assert_close(scripted(features, boxes), pooler(features, boxes))


@pytest.mark.parametrize("pooler_type", ["ROIPool", "ROIAlignRotated"])
def test_other_pooler_types_are_refused_naming_the_key(pooler_type):
    with pytest.raises(ValueError, match=rf"POOLER_TYPE='{pooler_type}'.*SEPARABLE_ROI_ALIGN"):
        SeparableROIPooler(14, (1 / 16,), 0, pooler_type)


def test_wraps_only_square_roialign():
    with pytest.raises(ValueError, match="square output size"):
        SeparableROIAlign(ROIAlign((7, 14), 1 / 16, 0))
    with pytest.raises(TypeError, match="wraps detectron2's ROIAlign"):
        SeparableROIAlign(torch.nn.Identity())


def test_double_features_with_float_rois():
    features = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    rois = torch.tensor([[0.0, 10, 12, 90, 100]])
    got = separable_roi_align(features, rois, 7, 1 / 16, 2, True)
    assert got.dtype == torch.float64  # the interpolation weights follow the features' dtype
    # (computed from float32 ROIs, so equal to float32 rounding)
    torch.testing.assert_close(got, roi_align(features, rois.double(), 7, 1 / 16, 2, True), rtol=0, atol=1e-5)
