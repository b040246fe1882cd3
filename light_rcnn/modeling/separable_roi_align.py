"""ROIAlign computed as two matrix products, for fast training on the CPU.

ROIAlign (He et al., Mask R-CNN, Sec. 3) averages bilinear samples taken on a regular grid in
each output bin. Bilinear interpolation is a product of a weight along y and a weight along x,
and the sampling grid is a product of a grid along y and one along x, so each pooled value is

    out[r, c, i, j] = sum_{y, x} Ay[r, i, y] * F[b_r, c, y, x] * Ax[r, j, x]

with Ay (R, P, H) and Ax (R, P, W) holding, per ROI r and output row i (column j), the bilinear
weights of its samples averaged over the samples of the bin. For the images of one batch entry
that is one matrix product over y and one batched product over x, and autograd's backward is two
more products: BLAS work on every core.

Why it exists: torchvision's CPU ``roi_align`` backward is a scalar, single-threaded loop over
every (ROI, channel, bin, sample). Profiled on a 2-core Intel Xeon while training the shapes
FD-MobileNet model (4 images, 128 ROIs, 64 channels, 14x14), it took ~40 ms of a ~200 ms
iteration; this formulation gives the same values (tests: forward and input gradient within
float rounding of torchvision's, aligned and not, fixed and adaptive sampling, degenerate and
out-of-image boxes) for a fraction of that.

The matrix formulation is used only while training with gradients; inference, tracing and
export call torchvision's kernel through detectron2's ``ROIAlign``, so exported models and the
latency benchmark are unchanged. Its memory grows with ROIs x P x C x W per image (dense over
the feature-map width), which is small for the CPU configs' 192-px images and 64 channels and
large at COCO scale, where GPUs train with torchvision's CUDA kernel: enable it per config
(``MODEL.LIGHT_HEAD.SEPARABLE_ROI_ALIGN``).
"""
from typing import List

import torch
from detectron2.modeling.poolers import ROIPooler
from detectron2.layers import ROIAlign
from torch import nn


def _axis_weights(start: torch.Tensor, length: torch.Tensor, size: int, pooled: int, sampling_ratio: int):
    """Interpolation matrix of one axis: (R,) ROI starts and lengths in feature cells -> (R, pooled, size).

    Row ``i`` of ROI ``r`` holds the bilinear weights of the samples of output bin ``i`` onto the
    feature cells ``0..size-1``, divided by the number of samples, with torchvision's rules: a
    sample beyond [-1, size] contributes nothing, one in [-1, 0] reads cell 0, one past the last
    cell reads the last cell, and ``sampling_ratio`` 0 takes ceil(length / pooled) samples.
    """
    num_rois = start.shape[0]
    bin_length = length / pooled
    if sampling_ratio > 0:
        grid = torch.full_like(length, float(sampling_ratio))
    else:
        grid = torch.ceil(length / pooled)
    max_grid = max(int(grid.max().item()), 1) if num_rois else 1
    sample = torch.arange(max_grid, dtype=start.dtype, device=start.device)
    bins = torch.arange(pooled, dtype=start.dtype, device=start.device)
    samples_per_bin = grid.clamp(min=1)[:, None, None]
    pos = (
        start[:, None, None]
        + bins[None, :, None] * bin_length[:, None, None]
        + (sample[None, None, :] + 0.5) * bin_length[:, None, None] / samples_per_bin
    )
    valid = (sample[None, None, :] < grid[:, None, None]) & (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0)
    low = pos.floor().long()
    at_end = low >= size - 1
    low = torch.where(at_end, torch.full_like(low, size - 1), low)
    high = torch.where(at_end, low, low + 1)
    frac = torch.where(at_end, torch.zeros_like(pos), pos - low.to(pos.dtype))
    scale = valid.to(pos.dtype) / samples_per_bin
    weights = torch.zeros(num_rois, pooled, size, dtype=start.dtype, device=start.device)
    weights.scatter_add_(2, low, (1 - frac) * scale)
    weights.scatter_add_(2, high, frac * scale)
    return weights


def separable_roi_align(
    features: torch.Tensor,
    rois: torch.Tensor,
    output_size: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> torch.Tensor:
    """torchvision's ``roi_align`` values (square output) as matrix products.

    Args:
        features: (N, C, H, W).
        rois: (R, 5) rows (batch index, x1, y1, x2, y2) in image coordinates.
        output_size: P, the pooled side.
        spatial_scale, sampling_ratio, aligned: as torchvision's ``roi_align``.
    Returns:
        (R, C, P, P), differentiable with respect to ``features``.
    """
    num_images, channels, height, width = features.shape
    pooled = int(output_size)
    offset = 0.5 if aligned else 0.0
    boxes = rois[:, 1:] * spatial_scale - offset
    roi_width = boxes[:, 2] - boxes[:, 0]
    roi_height = boxes[:, 3] - boxes[:, 1]
    if not aligned:  # torchvision's legacy rule: ROIs of at least one cell
        roi_width = roi_width.clamp(min=1.0)
        roi_height = roi_height.clamp(min=1.0)
    weights_y = _axis_weights(boxes[:, 1], roi_height, height, pooled, sampling_ratio).to(features.dtype)
    weights_x = _axis_weights(boxes[:, 0], roi_width, width, pooled, sampling_ratio).to(features.dtype)

    batch_index = rois[:, 0].long()
    order = None
    if batch_index.numel() > 1 and not bool((batch_index[1:] >= batch_index[:-1]).all()):
        order = batch_index.argsort(stable=True)
        batch_index, weights_y, weights_x = batch_index[order], weights_y[order], weights_x[order]
    counts = torch.bincount(batch_index, minlength=num_images).tolist()
    pooled_per_image: List[torch.Tensor] = []
    for image, (wy, wx) in enumerate(zip(weights_y.split(counts), weights_x.split(counts))):
        n = wy.shape[0]
        if n == 0:
            continue
        # (n*P, H) @ (H, C*W) -> rows resampled; then per ROI (P*C, W) @ (W, P) -> columns resampled.
        rows = wy.reshape(n * pooled, height) @ features[image].transpose(0, 1).reshape(height, channels * width)
        both = rows.view(n, pooled * channels, width).bmm(wx.transpose(1, 2))
        pooled_per_image.append(both.view(n, pooled, channels, pooled))
    if not pooled_per_image:
        return features.new_zeros(rois.shape[0], channels, pooled, pooled)
    out = torch.cat(pooled_per_image).permute(0, 2, 1, 3)
    if order is not None:
        out = out[order.argsort()]
    return out.contiguous()


class SeparableROIAlign(nn.Module):
    """detectron2's :class:`ROIAlign` whose training-time forward/backward are matrix products.

    Wraps a ``ROIAlign`` module (its output size, scale, sampling ratio and ``aligned`` flag are
    used unchanged). Input (N, C, H, W) features and (R, 5) ROIs -> (R, C, P, P). While the module
    trains and gradients are enabled, :func:`separable_roi_align` computes it; otherwise the
    wrapped module (torchvision's kernel), so inference, TorchScript and ONNX see plain ROIAlign.
    """

    def __init__(self, roi_align: ROIAlign):
        super().__init__()
        if not isinstance(roi_align, ROIAlign):
            raise TypeError(f"SeparableROIAlign wraps detectron2's ROIAlign, got {type(roi_align).__name__}")
        output_size = roi_align.output_size
        if isinstance(output_size, (tuple, list)):
            if output_size[0] != output_size[1]:
                raise ValueError(f"SeparableROIAlign needs a square output size, got {tuple(output_size)}")
            output_size = output_size[0]
        self.roi_align = roi_align
        self.output_size = int(output_size)

    def forward(self, features: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled() and not torch.jit.is_scripting() and not torch.jit.is_tracing():
            return self._separable(features, rois)
        return self.roi_align(features, rois)

    @torch.jit.unused
    def _separable(self, features: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        return separable_roi_align(
            features,
            rois,
            self.output_size,
            self.roi_align.spatial_scale,
            self.roi_align.sampling_ratio,
            self.roi_align.aligned,
        )


class SeparableROIPooler(ROIPooler):
    """detectron2's :class:`ROIPooler` whose per-level ROIAlign is a :class:`SeparableROIAlign`.

    Same arguments, outputs and level assignment as ``ROIPooler``; ``pooler_type`` must be
    ``"ROIAlign"`` or ``"ROIAlignV2"``.
    """

    def __init__(self, output_size, scales, sampling_ratio, pooler_type, **kwargs):
        if pooler_type not in ("ROIAlign", "ROIAlignV2"):
            raise ValueError(
                f"MODEL.ROI_BOX_HEAD.POOLER_TYPE={pooler_type!r}: the separable ROIAlign "
                "(MODEL.LIGHT_HEAD.SEPARABLE_ROI_ALIGN True) needs 'ROIAlign' or 'ROIAlignV2'"
            )
        super().__init__(output_size, scales, sampling_ratio, pooler_type, **kwargs)
        self.level_poolers = nn.ModuleList(SeparableROIAlign(pooler) for pooler in self.level_poolers)
