"""Student-teacher learning for two-stage detectors (thesis Sec. 2.1.3).

:class:`DistillationRCNN` is the student: a GeneralizedRCNN that, in training, adds

* ``loss_distill_cls``: Hinton et al.'s distillation, ``T^2 KL(softmax(t / T) || softmax(s / T))``
  between the teacher's and the student's class logits (K + 1 classes) on the ROIs the student's
  ROI heads sampled, averaged over the ROIs;
* ``loss_hint`` (optional): FitNets' hint, the MSE between a teacher feature map (the "hint"
  layer) and a student one (the "guided" layer) mapped to the teacher's channels by a learned
  1 x 1 convolution (the FitNets regressor).

The teacher is built from its own config and checkpoint (``MODEL.DISTILL``), frozen, kept in
eval mode and outside the student's module tree: optimizers and checkpoints see only the student.
At inference the student is a plain GeneralizedRCNN.
"""
import logging
import math
import os
from typing import Dict, List

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN, build_model
from detectron2.modeling.roi_heads import Res5ROIHeads, StandardROIHeads
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.structures import Boxes
from torch import nn

from ..config import MODEL_ZOO_PREFIX, load_config, model_zoo_config_file
from ..modeling.light_roi_heads import LightRCNNROIHeads

logger = logging.getLogger(__name__)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def distillation_kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float):
    """``T^2 * KL(softmax(t / T) || softmax(s / T))`` summed over classes, averaged over rows.

    Args:
        student_logits, teacher_logits: (R, K + 1) class logits of the same R ROIs.
        temperature: T > 0; the T^2 factor keeps the gradient scale independent of T (Hinton et al.).

    Returns:
        A scalar tensor (0 for R = 0).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ"
        )
    if student_logits.numel() == 0:
        return student_logits.sum() * 0
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def hint_loss(student_map, teacher_map, student_stride: int, teacher_stride: int, image_size):
    """MSE between an (already adapted) student map and a teacher map over the image area.

    Args:
        student_map: (N, C, Hs, Ws) student feature with the teacher's channel count C.
        teacher_map: (N, C, Ht, Wt) teacher feature.
        student_stride, teacher_stride: their strides in input pixels; the student map is
            bilinearly resized to the teacher's stride when they differ.
        image_size: (H, W) of the largest unpadded image of the batch; only the cells covering it
            are compared (the two models may pad the batch to different sizes).

    Returns:
        A scalar tensor.
    """
    if student_stride != teacher_stride:
        ratio = student_stride / teacher_stride
        size = (round(student_map.shape[-2] * ratio), round(student_map.shape[-1] * ratio))
        student_map = F.interpolate(student_map, size=size, mode="bilinear", align_corners=False)
    h = min(math.ceil(image_size[0] / teacher_stride), student_map.shape[-2], teacher_map.shape[-2])
    w = min(math.ceil(image_size[1] / teacher_stride), student_map.shape[-1], teacher_map.shape[-1])
    return F.mse_loss(student_map[..., :h, :w].float(), teacher_map[..., :h, :w].float())


def roi_box_path(roi_heads):
    """The box branch of ``roi_heads`` as (ROI pooler module, class-logit function).

    The function maps (features dict, list of N_i Boxes per image) to (sum N_i, K + 1) class
    logits, running the same layers as the heads' own training forward: LightRCNNROIHeads
    (pooler -> subnet -> pool -> predictor), detectron2's Res5ROIHeads (pooler -> res5 -> mean)
    and StandardROIHeads (box_pooler -> box_head). Other heads raise ``TypeError``.
    """
    name = type(roi_heads).__name__
    if not isinstance(getattr(roi_heads, "box_predictor", None), FastRCNNOutputLayers):
        raise TypeError(f"Distillation needs ROI heads with one FastRCNNOutputLayers box predictor; got {name}")
    if isinstance(roi_heads, LightRCNNROIHeads):

        def class_logits(features, boxes):
            x = roi_heads._shared_roi_transform([features[f] for f in roi_heads.in_features], boxes)
            return roi_heads.box_predictor(roi_heads.subnet.pool(x))[0]

        return roi_heads.pooler, class_logits
    if isinstance(roi_heads, Res5ROIHeads):

        def class_logits(features, boxes):
            x = roi_heads._shared_roi_transform([features[f] for f in roi_heads.in_features], boxes)
            return roi_heads.box_predictor(x.mean(dim=[2, 3]))[0]

        return roi_heads.pooler, class_logits
    if isinstance(roi_heads, StandardROIHeads):

        def class_logits(features, boxes):
            x = roi_heads.box_pooler([features[f] for f in roi_heads.box_in_features], boxes)
            return roi_heads.box_predictor(roi_heads.box_head(x))[0]

        return roi_heads.box_pooler, class_logits
    raise TypeError(
        f"Distillation supports LightRCNNROIHeads, Res5ROIHeads and StandardROIHeads (and subclasses "
        f"with the same box path); got {name}"
    )


def _resolve_teacher_config(path):
    if path.startswith(MODEL_ZOO_PREFIX):
        return model_zoo_config_file(path, key="MODEL.DISTILL.TEACHER_CONFIG")
    for candidate in (path, os.path.join(REPO_ROOT, path)):
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(
        f"MODEL.DISTILL.TEACHER_CONFIG={path!r}: no such file in {os.getcwd()} nor in {REPO_ROOT}"
    )


def build_teacher_config(cfg):
    """The teacher's config named by a student config: ``MODEL.DISTILL.TEACHER_CONFIG`` merged with
    ``TEACHER_OPTS``, on the student's ``MODEL.DEVICE``, with MODEL.WEIGHTS cleared (the teacher's
    weights are ``TEACHER_WEIGHTS``). Returns an unfrozen config."""
    d = cfg.MODEL.DISTILL
    if not d.TEACHER_CONFIG:
        raise ValueError("MODEL.DISTILL.TEACHER_CONFIG is empty: DistillationRCNN needs the teacher's config file")
    return load_config(
        _resolve_teacher_config(d.TEACHER_CONFIG),
        list(d.TEACHER_OPTS) + ["MODEL.DEVICE", cfg.MODEL.DEVICE, "MODEL.WEIGHTS", ""],
    )


def build_teacher(cfg):
    """Build the frozen teacher of ``cfg.MODEL.DISTILL`` (see :func:`build_teacher_config`) and load
    ``TEACHER_WEIGHTS`` with detectron2's DetectionCheckpointer. Returns a GeneralizedRCNN in eval
    mode with requires_grad False."""
    d = cfg.MODEL.DISTILL
    teacher_cfg = build_teacher_config(cfg)
    weights = d.TEACHER_WEIGHTS
    if not weights:
        raise ValueError(
            "MODEL.DISTILL.TEACHER_WEIGHTS is empty: train the teacher first and pass its checkpoint, "
            "e.g. `MODEL.DISTILL.TEACHER_WEIGHTS output/teacher/model_final.pth`"
        )
    if "://" not in weights and not os.path.isfile(weights):
        raise FileNotFoundError(f"MODEL.DISTILL.TEACHER_WEIGHTS={weights!r}: no such file")
    teacher = build_model(teacher_cfg)
    if not isinstance(teacher, GeneralizedRCNN):
        raise TypeError(
            f"MODEL.DISTILL.TEACHER_CONFIG builds a {type(teacher).__name__}; the teacher must be a GeneralizedRCNN"
        )
    DetectionCheckpointer(teacher).load(weights)
    teacher.eval()
    teacher.requires_grad_(False)
    logger.info(f"Distillation teacher from {d.TEACHER_CONFIG} with weights {weights}")
    return teacher


@META_ARCH_REGISTRY.register()
class DistillationRCNN(GeneralizedRCNN):
    """GeneralizedRCNN student trained with a frozen teacher (thesis Sec. 2.1.3: distillation of
    the class distribution at temperature T, and optionally a FitNets hint on a feature map).

    Training forward: list of dataset dicts (images (3, H, W) + ``instances``) -> the student's
    GeneralizedRCNN losses plus ``loss_distill_cls`` (scalar) and, with ``hint_weight > 0``,
    ``loss_hint`` (scalar). The student's sampled proposal boxes (R in all) and its (R, K + 1)
    class logits are captured by hooks on its ROI pooler and box predictor; the teacher runs its
    own preprocessing (pixel mean/std, padding) and backbone on the same inputs and its box branch
    on exactly those R boxes. Inference: identical to GeneralizedRCNN.

    The teacher lives in a tuple attribute, not as a submodule: it is absent from
    ``parameters()``, ``state_dict()`` and ``train()``; it follows the student's device lazily.
    The hint adapter (1 x 1 conv, student channels -> teacher channels) is a submodule.
    """

    @configurable
    def __init__(
        self,
        *,
        teacher: GeneralizedRCNN,
        temperature: float = 2.0,
        cls_weight: float = 1.0,
        hint_weight: float = 0.0,
        hint_student_feature: str = "thin",
        hint_teacher_feature: str = "thin",
        decompose_cfg=None,
        **kwargs,
    ):
        """
        Args:
            teacher: a trained GeneralizedRCNN with the same classes; frozen here.
            temperature: softmax temperature T (> 0).
            cls_weight: weight of ``loss_distill_cls``.
            hint_weight: weight of ``loss_hint``; 0 disables the hint and its adapter.
            hint_student_feature, hint_teacher_feature: backbone output names of the guided and
                hint layers.
            decompose_cfg: a config whose ``MODEL.DECOMPOSE`` is applied to the student with
                :func:`light_rcnn.compression.apply_decomposition` (None: no decomposition).
            kwargs: GeneralizedRCNN's arguments (the student).
        """
        super().__init__(**kwargs)
        if not isinstance(teacher, GeneralizedRCNN):
            raise TypeError(f"teacher must be a GeneralizedRCNN, got {type(teacher).__name__}")
        if temperature <= 0:
            raise ValueError(f"MODEL.DISTILL.TEMPERATURE={temperature}: must be > 0")
        if teacher.roi_heads.num_classes != self.roi_heads.num_classes:
            raise ValueError(
                f"teacher has {teacher.roi_heads.num_classes} classes, the student {self.roi_heads.num_classes}: "
                "distillation needs the same classes (MODEL.ROI_HEADS.NUM_CLASSES)"
            )
        roi_box_path(teacher.roi_heads)  # raises for unsupported teacher heads
        teacher.eval()
        teacher.requires_grad_(False)
        self._teacher = (teacher,)
        if decompose_cfg is not None:
            from . import apply_decomposition

            apply_decomposition(self, decompose_cfg)
        roi_box_path(self.roi_heads)  # raises for unsupported student heads
        self.temperature = float(temperature)
        self.cls_weight = float(cls_weight)
        self.hint_weight = float(hint_weight)
        self.hint_adapter = None
        if self.hint_weight > 0:
            s_shapes, t_shapes = self.backbone.output_shape(), teacher.backbone.output_shape()
            for key, name, shapes in (
                ("HINT_STUDENT_FEATURE", hint_student_feature, s_shapes),
                ("HINT_TEACHER_FEATURE", hint_teacher_feature, t_shapes),
            ):
                if name not in shapes:
                    raise ValueError(
                        f"MODEL.DISTILL.{key}={name!r}: not a backbone output; choose from {sorted(shapes)}"
                    )
            s_shape, t_shape = s_shapes[hint_student_feature], t_shapes[hint_teacher_feature]
            self.hint_features = (hint_student_feature, hint_teacher_feature)
            self.hint_strides = (s_shape.stride, t_shape.stride)
            self.hint_adapter = nn.Conv2d(s_shape.channels, t_shape.channels, kernel_size=1)
            weight_init.c2_xavier_fill(self.hint_adapter)

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        d = cfg.MODEL.DISTILL
        decompose = hasattr(cfg.MODEL, "DECOMPOSE") and len(cfg.MODEL.DECOMPOSE.LAYERS) > 0
        ret.update(
            teacher=build_teacher(cfg),
            temperature=d.TEMPERATURE,
            cls_weight=d.CLS_WEIGHT,
            hint_weight=d.HINT_WEIGHT,
            hint_student_feature=d.HINT_STUDENT_FEATURE,
            hint_teacher_feature=d.HINT_TEACHER_FEATURE,
            decompose_cfg=cfg if decompose else None,
        )
        return ret

    @property
    def teacher(self) -> GeneralizedRCNN:
        """The frozen teacher (not a submodule)."""
        return self._teacher[0]

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        if not self.training:
            return super().forward(batched_inputs)

        captured = {}

        def capture_boxes(module, args, kwargs):
            if "boxes" not in captured:
                captured["boxes"] = args[1] if len(args) > 1 else kwargs["box_lists"]

        def capture_logits(module, args, output):
            if "logits" not in captured:
                captured["logits"] = output[0]

        def capture_features(module, args, output):
            captured.setdefault("features", output)

        student_pooler, _ = roi_box_path(self.roi_heads)
        handles = [
            student_pooler.register_forward_pre_hook(capture_boxes, with_kwargs=True),
            self.roi_heads.box_predictor.register_forward_hook(capture_logits),
        ]
        if self.hint_adapter is not None:
            handles.append(self.backbone.register_forward_hook(capture_features))
        try:
            losses = super().forward(batched_inputs)
        finally:
            for handle in handles:
                handle.remove()
        losses.update(self._distillation_losses(batched_inputs, captured))
        return losses

    def _distillation_losses(self, batched_inputs, captured):
        boxes: List[Boxes] = captured["boxes"]
        student_logits = captured["logits"]
        num_boxes = sum(len(b) for b in boxes)
        if student_logits.shape[0] != num_boxes:
            raise RuntimeError(
                f"captured {student_logits.shape[0]} student class logits for {num_boxes} pooled boxes"
            )
        teacher = self.teacher
        if teacher.device != self.device:
            teacher.to(self.device)
        _, teacher_class_logits = roi_box_path(teacher.roi_heads)
        with torch.no_grad():
            images = teacher.preprocess_image(batched_inputs)
            teacher_features = teacher.backbone(images.tensor)
            teacher_logits = teacher_class_logits(teacher_features, boxes)

        losses = {
            "loss_distill_cls": self.cls_weight
            * distillation_kl_loss(student_logits, teacher_logits, self.temperature)
        }
        if self.hint_adapter is not None:
            s_name, t_name = self.hint_features
            guided = self.hint_adapter(captured["features"][s_name])
            max_size = [max(s[i] for s in images.image_sizes) for i in (0, 1)]
            losses["loss_hint"] = self.hint_weight * hint_loss(
                guided, teacher_features[t_name], *self.hint_strides, max_size
            )
        return losses
