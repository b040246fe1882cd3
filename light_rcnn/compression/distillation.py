"""Student-teacher learning for two-stage detectors (thesis Sec. 2.1.3).

:class:`DistillationHook` (``MODEL.MODELING_HOOKS: [..., "DistillationHook"]``) turns any built
GeneralizedRCNN into a student that, in training, adds

* ``loss_distill_cls``: Hinton et al.'s distillation, ``T^2 KL(softmax(t / T) || softmax(s / T))``
  between the teacher's and the student's class logits (K + 1 classes) on the ROIs the student's
  ROI heads sampled, averaged over the ROIs;
* ``loss_hint`` (optional): FitNets' hint, the MSE between a teacher feature map (the "hint"
  layer) and a student one (the "guided" layer) mapped to the teacher's channels by a learned
  1 x 1 convolution (the FitNets regressor, the student's submodule ``hint_adapter``).

The teacher is built from its own config and checkpoint (``MODEL.DISTILL``), frozen, kept in
eval mode and outside the student's module tree: optimizers and checkpoints see only the student.
At inference the student is a plain GeneralizedRCNN. META_ARCHITECTURE "DistillationRCNN" is the
same student built by detectron2's ``build_model``.
"""
import logging
import math
import os
from typing import List

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.structures import Boxes
from torch import nn

from ..config import load_config, resolve_config_file
from .decomposition.hook import DecompositionHook
from .modeling_hooks import MODELING_HOOK_REGISTRY, ModelingHook, apply_modeling_hooks, build_model

__all__ = [
    "DistillationHook",
    "DistillationRCNN",
    "build_teacher",
    "build_teacher_config",
    "distillation_kl_loss",
    "hint_loss",
    "roi_box_path",
]

logger = logging.getLogger(__name__)


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
    logits, running the same layers as the heads' own training forward. Heads that know how
    provide ``box_class_logits(features, boxes)`` (LightRCNNROIHeads); for detectron2's heads the
    path is assembled from their public attributes: ``box_pooler -> box_head`` (StandardROIHeads)
    or ``pooler -> res5 -> mean`` (Res5ROIHeads). The pooler is ``box_pooler`` or ``pooler``: the
    module whose first call in a training forward receives the sampled proposal boxes. Heads with
    neither path, or without one FastRCNNOutputLayers box predictor, raise ``TypeError``.
    """
    name = type(roi_heads).__name__
    predictor = getattr(roi_heads, "box_predictor", None)
    if not isinstance(predictor, FastRCNNOutputLayers):
        raise TypeError(f"Distillation needs ROI heads with one FastRCNNOutputLayers box predictor; got {name}")
    pooler = getattr(roi_heads, "box_pooler", None)
    pooler = getattr(roi_heads, "pooler", None) if pooler is None else pooler
    if pooler is not None and hasattr(roi_heads, "box_class_logits"):
        return pooler, roi_heads.box_class_logits
    if pooler is not None and hasattr(roi_heads, "box_head") and hasattr(roi_heads, "box_in_features"):

        def class_logits(features, boxes):
            x = roi_heads.box_pooler([features[f] for f in roi_heads.box_in_features], boxes)
            return predictor(roi_heads.box_head(x))[0]

        return pooler, class_logits
    if pooler is not None and hasattr(roi_heads, "res5") and hasattr(roi_heads, "in_features"):

        def class_logits(features, boxes):
            x = roi_heads.res5(roi_heads.pooler([features[f] for f in roi_heads.in_features], boxes))
            return predictor(x.mean(dim=[2, 3]))[0]

        return pooler, class_logits
    raise TypeError(
        f"Distillation needs ROI heads with box_class_logits(features, boxes), or detectron2's "
        f"box_pooler + box_head (StandardROIHeads) or pooler + res5 (Res5ROIHeads); got {name}"
    )


def build_teacher_config(cfg):
    """The teacher's config named by a student config: ``MODEL.DISTILL.TEACHER_CONFIG`` (a path,
    ``light_rcnn://<path under configs/>`` or ``detectron2://<path>``) merged with ``TEACHER_OPTS``,
    on the student's ``MODEL.DEVICE``, with MODEL.WEIGHTS cleared (the teacher's weights are
    ``TEACHER_WEIGHTS``). Returns an unfrozen config."""
    d = cfg.MODEL.DISTILL
    if not d.TEACHER_CONFIG:
        raise ValueError("MODEL.DISTILL.TEACHER_CONFIG is empty: distillation needs the teacher's config file")
    return load_config(
        resolve_config_file(d.TEACHER_CONFIG, key="MODEL.DISTILL.TEACHER_CONFIG"),
        list(d.TEACHER_OPTS) + ["MODEL.DEVICE", cfg.MODEL.DEVICE, "MODEL.WEIGHTS", ""],
    )


def build_teacher(cfg):
    """Build the frozen teacher of ``cfg.MODEL.DISTILL`` (see :func:`build_teacher_config`; its own
    ``MODEL.MODELING_HOOKS`` are applied) and load ``TEACHER_WEIGHTS`` with detectron2's
    DetectionCheckpointer. Returns a GeneralizedRCNN in eval mode with requires_grad False."""
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


@MODELING_HOOK_REGISTRY.register()
class DistillationHook(ModelingHook):
    """Modeling hook making a GeneralizedRCNN the student of a frozen teacher (thesis Sec. 2.1.3:
    distillation of the class distribution at temperature T, and optionally a FitNets hint on a
    feature map). ``DistillationHook(cfg)`` builds the teacher (:func:`build_teacher`); ``apply``:

    * sets ``model.distillation`` to this hook (a plain attribute: the teacher, reachable as
      ``model.distillation.teacher``, is absent from ``parameters()``, ``state_dict()`` and
      ``train()``, and follows the student's device lazily);
    * with ``HINT_WEIGHT > 0`` adds the hint adapter as ``model.hint_adapter`` (1 x 1 conv, student
      channels -> teacher channels; checkpoint keys ``hint_adapter.weight`` / ``.bias``);
    * registers forward hooks. In training, the model's forward returns its own losses plus
      ``loss_distill_cls`` (scalar) and, with the hint, ``loss_hint`` (scalar): the student's sampled
      proposal boxes (R in all) and its (R, K + 1) class logits are captured on its ROI pooler and
      box predictor, and the teacher runs its own preprocessing (pixel mean/std, padding) and
      backbone on the same inputs and its box branch (:func:`roi_box_path`) on exactly those R
      boxes, in eval mode. Inference is untouched.

    ``unapply`` removes the forward hooks, ``model.distillation`` and ``model.hint_adapter``.
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        d = cfg.MODEL.DISTILL
        if d.TEMPERATURE <= 0:
            raise ValueError(f"MODEL.DISTILL.TEMPERATURE={d.TEMPERATURE}: must be > 0")
        self.teacher = build_teacher(cfg)
        roi_box_path(self.teacher.roi_heads)  # raises for unsupported teacher heads
        self.temperature = float(d.TEMPERATURE)
        self.cls_weight = float(d.CLS_WEIGHT)
        self.hint_weight = float(d.HINT_WEIGHT)
        self.hint_features = (d.HINT_STUDENT_FEATURE, d.HINT_TEACHER_FEATURE)
        self.hint_strides = None
        self._captured = None
        self._handles = []

    def apply(self, model):
        if not isinstance(model, GeneralizedRCNN):
            raise TypeError(f"DistillationHook needs a GeneralizedRCNN student, got {type(model).__name__}")
        teacher = self.teacher
        if teacher.roi_heads.num_classes != model.roi_heads.num_classes:
            raise ValueError(
                f"teacher has {teacher.roi_heads.num_classes} classes, the student {model.roi_heads.num_classes}: "
                "distillation needs the same classes (MODEL.ROI_HEADS.NUM_CLASSES)"
            )
        student_pooler, _ = roi_box_path(model.roi_heads)  # raises for unsupported student heads
        model.hint_adapter = None
        if self.hint_weight > 0:
            model.hint_adapter = self._build_hint_adapter(model).to(model.device)
        model.distillation = self
        self._handles = [
            model.register_forward_pre_hook(self._start, with_kwargs=True),
            model.register_forward_hook(self._finish, with_kwargs=True),
            student_pooler.register_forward_pre_hook(self._capture_boxes, with_kwargs=True),
            model.roi_heads.box_predictor.register_forward_hook(self._capture_logits),
        ]
        if model.hint_adapter is not None:
            self._handles.append(model.backbone.register_forward_hook(self._capture_features))
        return model

    def unapply(self, model):
        for handle in self._handles:
            handle.remove()
        self._handles = []
        del model.distillation
        del model.hint_adapter
        return model

    def _build_hint_adapter(self, model):
        s_shapes, t_shapes = model.backbone.output_shape(), self.teacher.backbone.output_shape()
        s_name, t_name = self.hint_features
        for key, name, shapes in (
            ("HINT_STUDENT_FEATURE", s_name, s_shapes),
            ("HINT_TEACHER_FEATURE", t_name, t_shapes),
        ):
            if name not in shapes:
                raise ValueError(f"MODEL.DISTILL.{key}={name!r}: not a backbone output; choose from {sorted(shapes)}")
        s_shape, t_shape = s_shapes[s_name], t_shapes[t_name]
        self.hint_strides = (s_shape.stride, t_shape.stride)
        adapter = nn.Conv2d(s_shape.channels, t_shape.channels, kernel_size=1)
        weight_init.c2_xavier_fill(adapter)
        return adapter

    # --- forward hooks (bound methods, so that a deep copy of the model gets its own teacher) ---
    def _start(self, model, args, kwargs):
        self._captured = {} if model.training else None

    def _capture_boxes(self, module, args, kwargs):
        if self._captured is not None and "boxes" not in self._captured:
            self._captured["boxes"] = args[1] if len(args) > 1 else kwargs["box_lists"]

    def _capture_logits(self, module, args, output):
        if self._captured is not None and "logits" not in self._captured:
            self._captured["logits"] = output[0]

    def _capture_features(self, module, args, output):
        if self._captured is not None:
            self._captured.setdefault("features", output)

    def _finish(self, model, args, kwargs, losses):
        captured, self._captured = self._captured, None
        if captured is None or not model.training:
            return None
        batched_inputs = args[0] if args else kwargs["batched_inputs"]
        losses.update(self._losses(model, batched_inputs, captured))
        return losses

    def _losses(self, model, batched_inputs, captured):
        boxes: List[Boxes] = captured["boxes"]
        student_logits = captured["logits"]
        num_boxes = sum(len(b) for b in boxes)
        if student_logits.shape[0] != num_boxes:
            raise RuntimeError(
                f"captured {student_logits.shape[0]} student class logits for {num_boxes} pooled boxes"
            )
        teacher = self.teacher
        if teacher.device != model.device:
            teacher.to(model.device)
        teacher.eval()
        _, teacher_class_logits = roi_box_path(teacher.roi_heads)
        with torch.no_grad():
            images = teacher.preprocess_image(batched_inputs)
            teacher_features = teacher.backbone(images.tensor)
            teacher_logits = teacher_class_logits(teacher_features, boxes)

        losses = {
            "loss_distill_cls": self.cls_weight
            * distillation_kl_loss(student_logits, teacher_logits, self.temperature)
        }
        if model.hint_adapter is not None:
            s_name, t_name = self.hint_features
            guided = model.hint_adapter(captured["features"][s_name])
            max_size = [max(s[i] for s in images.image_sizes) for i in (0, 1)]
            losses["loss_hint"] = self.hint_weight * hint_loss(
                guided, teacher_features[t_name], *self.hint_strides, max_size
            )
        return losses


@META_ARCH_REGISTRY.register()
class DistillationRCNN(GeneralizedRCNN):
    """META_ARCHITECTURE form of ``MODEL.MODELING_HOOKS: ["DistillationHook"]`` (preceded by
    "DecompositionHook" when ``MODEL.DECOMPOSE.LAYERS`` is not empty): a GeneralizedRCNN student
    trained with a frozen teacher, see :class:`DistillationHook`. Kept so that configs naming it
    build with detectron2's own ``build_model`` (DefaultTrainer).
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        distill = DistillationHook(cfg)  # the teacher is built before the decomposed convs
        decompose = hasattr(cfg.MODEL, "DECOMPOSE") and len(cfg.MODEL.DECOMPOSE.LAYERS) > 0
        hooks = [DecompositionHook(cfg), distill] if decompose else [distill]
        apply_modeling_hooks(self, hooks)

    @property
    def teacher(self) -> GeneralizedRCNN:
        """The frozen teacher (not a submodule)."""
        return self.distillation.teacher
