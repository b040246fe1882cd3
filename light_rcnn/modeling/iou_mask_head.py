"""Soft IoU (Jaccard) mask loss (thesis Sec. 3.3.2, Rahman and Wang) for Mask R-CNN's mask head.

The thesis writes the loss for softmax outputs of a semantic-segmentation network; Mask R-CNN's
mask head predicts one sigmoid mask per class, so here the probabilities are the sigmoid of the
ground-truth class's logits and the ground truth is the instance mask cropped to the proposal box
and resized to the mask resolution (detectron2's ``gt_masks.crop_and_resize``, as in its
``mask_rcnn_loss``).
"""
from typing import List

import torch
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.roi_heads.mask_head import (
    ROI_MASK_HEAD_REGISTRY,
    MaskRCNNConvUpsampleHead,
    mask_rcnn_inference,
    mask_rcnn_loss,
)
from detectron2.structures import Instances
from detectron2.utils.events import get_event_storage

MASK_LOSS_TYPES = ("BCE", "IOU", "BCE+IOU")


def soft_iou_loss(mask_logits: torch.Tensor, gt_masks: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Soft IoU loss ``1 - I/U`` per instance, averaged over instances (thesis Sec. 3.3.2).

    With p = sigmoid(logits) and y the ground truth, I = sum(y * p) and U = sum(y + p - y * p) over
    the pixels of each instance; ``eps`` is added to both so that an empty prediction of an empty
    mask costs 0 and the ratio is defined.

    Args:
        mask_logits: (N, H, W) logits of the masks (one per instance).
        gt_masks: (N, H, W) ground truth in [0, 1] (bool or float).

    Returns:
        A scalar tensor; 0 for N = 0 (still connected to ``mask_logits``'s graph).
    """
    if mask_logits.shape != gt_masks.shape:
        raise ValueError(f"soft_iou_loss: logits {tuple(mask_logits.shape)} vs masks {tuple(gt_masks.shape)}")
    if mask_logits.numel() == 0:
        return mask_logits.sum() * 0
    if mask_logits.dtype in (torch.float16, torch.bfloat16):
        mask_logits = mask_logits.float()
    probs = mask_logits.sigmoid().flatten(1)
    gt = gt_masks.to(dtype=probs.dtype).flatten(1)
    intersection = (probs * gt).sum(dim=1)
    union = (probs + gt - probs * gt).sum(dim=1)
    return (1.0 - (intersection + eps) / (union + eps)).mean()


def mask_head_targets(pred_mask_logits: torch.Tensor, instances: List[Instances]):
    """The logits of each foreground proposal's ground-truth class and its ground-truth mask.

    Args:
        pred_mask_logits: (B, C, M, M) or class-agnostic (B, 1, M, M) logits, B = total foreground
            proposals of ``instances`` (fields ``proposal_boxes``, ``gt_classes``, ``gt_masks``).

    Returns:
        (logits (B, M, M), gt masks (B, M, M) as float in [0, 1]), the masks cropped to the
        proposal boxes and resized to M x M by ``gt_masks.crop_and_resize``.
    """
    side = pred_mask_logits.size(2)
    gt_masks = [
        inst.gt_masks.crop_and_resize(inst.proposal_boxes.tensor, side).to(device=pred_mask_logits.device)
        for inst in instances
        if len(inst)
    ]
    if not gt_masks:
        return pred_mask_logits[:, 0], pred_mask_logits.new_zeros(pred_mask_logits[:, 0].shape)
    gt_masks = cat(gt_masks, dim=0).to(dtype=torch.float32)
    if pred_mask_logits.size(1) == 1:
        logits = pred_mask_logits[:, 0]
    else:
        gt_classes = cat([inst.gt_classes for inst in instances if len(inst)], dim=0).to(dtype=torch.int64)
        logits = pred_mask_logits[torch.arange(len(gt_classes), device=gt_classes.device), gt_classes]
    return logits, gt_masks


@ROI_MASK_HEAD_REGISTRY.register()
class IoUMaskRCNNConvUpsampleHead(MaskRCNNConvUpsampleHead):
    """detectron2's MaskRCNNConvUpsampleHead trained with the thesis's loss choices (Sec. 3.3):
    binary cross-entropy (Sec. 3.3.1, detectron2's ``mask_rcnn_loss``), the soft IoU loss
    (Sec. 3.3.2, :func:`soft_iou_loss`) or their weighted sum (``MODEL.MASK_LOSS``).

    ROI features (B, C_in, R, R) -> mask logits (B, num_classes, 2R, 2R). Training returns
    ``{"loss_mask": BCE_WEIGHT * BCE}`` and/or ``{"loss_mask_iou": IOU_WEIGHT * (1 - I/U)}``;
    inference is unchanged (sigmoid masks of the predicted classes in ``pred_masks``).
    """

    @configurable
    def __init__(self, input_shape, *, loss_type="BCE", iou_weight=1.0, **kwargs):
        """
        Args:
            loss_type: one of "BCE", "IOU", "BCE+IOU".
            iou_weight: multiplier of the soft IoU loss; the BCE multiplier is ``loss_weight``
                (detectron2's BaseMaskRCNNHead argument).
            input_shape, kwargs: as MaskRCNNConvUpsampleHead.
        """
        super().__init__(input_shape, **kwargs)
        if loss_type not in MASK_LOSS_TYPES:
            raise ValueError(f"MODEL.MASK_LOSS.TYPE={loss_type!r}: expected one of {MASK_LOSS_TYPES}")
        self.loss_type = loss_type
        self.iou_weight = iou_weight

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret.update(
            loss_type=cfg.MODEL.MASK_LOSS.TYPE,
            loss_weight=cfg.MODEL.MASK_LOSS.BCE_WEIGHT,
            iou_weight=cfg.MODEL.MASK_LOSS.IOU_WEIGHT,
        )
        return ret

    def forward(self, x, instances: List[Instances]):
        x = self.layers(x)
        if not self.training:
            mask_rcnn_inference(x, instances)
            return instances
        losses = {}
        if self.loss_type in ("BCE", "BCE+IOU"):
            losses["loss_mask"] = mask_rcnn_loss(x, instances, self.vis_period) * self.loss_weight
        if self.loss_type in ("IOU", "BCE+IOU"):
            logits, gt_masks = mask_head_targets(x, instances)
            iou_loss = soft_iou_loss(logits, gt_masks)
            if len(logits):
                get_event_storage().put_scalar("mask_rcnn/soft_iou", 1.0 - iou_loss.item())
            losses["loss_mask_iou"] = iou_loss * self.iou_weight
        return losses
