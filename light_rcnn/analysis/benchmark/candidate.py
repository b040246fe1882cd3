"""A model under test: built (through :mod:`light_rcnn.analysis.build`), hooked, fed and described."""
import contextlib
from typing import Dict, Optional

import numpy as np
import torch

from ..build import build_detector, build_torchvision_detector, measurement_config
from ..model_stats import detectron2_flop_analysis, flops_summary, generic_flop_analysis
from ..stage_timer import DetectorParts
from .inputs import random_polygons, synthetic_image
from .nms_work import FixedScores
from .specs import BenchmarkSettings, ModelSpec


def detectron2_parts(model) -> DetectorParts:
    """The hooked parts of a detectron2 two-stage detector (GeneralizedRCNN-like)."""
    for attr in ("backbone", "proposal_generator", "roi_heads"):
        if getattr(model, attr, None) is None:
            raise TypeError(f"{type(model).__name__} has no '{attr}': the benchmark measures two-stage "
                            "detectors (GeneralizedRCNN-like models)")
    roi = model.roi_heads
    predictor = roi.box_predictor
    if isinstance(predictor, torch.nn.ModuleList):  # cascade: the last stage's predictor
        predictor = predictor[-1]
    mask_head = getattr(roi, "mask_head", None) if getattr(roi, "mask_on", True) else None
    return DetectorParts(
        model=model, backbone=model.backbone, rpn=model.proposal_generator, roi_heads=roi,
        bottom_up=getattr(model.backbone, "bottom_up", None), box_predictor=predictor,
        mask_head=mask_head,
        count_detections=lambda outs: [len(o["instances"]) for o in outs],
    )


def torchvision_parts(model, name: str = "") -> DetectorParts:
    """The hooked parts of a torchvision two-stage detector (Faster/Mask R-CNN)."""
    for attr in ("backbone", "rpn", "roi_heads", "transform"):
        if getattr(model, attr, None) is None:
            raise TypeError(f"torchvision model '{name}' has no '{attr}': "
                            "only two-stage detectors (Faster/Mask R-CNN) are supported")
    roi = model.roi_heads
    return DetectorParts(
        model=model, backbone=model.backbone, rpn=model.rpn, roi_heads=roi,
        bottom_up=getattr(model.backbone, "body", None), box_predictor=roi.box_predictor,
        mask_head=roi.mask_head if roi.has_mask() else None,
        count_detections=lambda outs: [int(o["boxes"].shape[0]) for o in outs],
    )


def torchvision_kwargs(settings: BenchmarkSettings, tv_sizes=None) -> Dict[str, object]:
    """Constructor arguments that give a torchvision detector the benchmark's input size and, at
    fixed work, the same work as the detectron2 models (``tv_sizes``: the test sizes of the first
    detectron2 config, used in dataset mode)."""
    kwargs = {}
    h, w = settings.image_size
    if settings.task != "data":
        kwargs.update(min_size=min(h, w), max_size=max(h, w))
    if settings.fixed_work:
        topk = 1000 if settings.rpn_pre_nms_topk is None else settings.rpn_pre_nms_topk  # 1000: torchvision's
        kwargs.update(
            rpn_pre_nms_top_n_test=max(topk, settings.num_proposals),
            rpn_post_nms_top_n_test=settings.num_proposals,
            rpn_nms_thresh=1.0,
            box_score_thresh=0.0,
            box_nms_thresh=1.0,
            box_detections_per_img=settings.num_detections,
        )
    if settings.dataset and settings.task == "inference":
        # images arrive resized by the first detectron2 config's test mapper; resize no further
        kwargs.pop("min_size"), kwargs.pop("max_size")
        if tv_sizes:
            kwargs.update(min_size=tv_sizes[0], max_size=tv_sizes[1])
    return kwargs


class Candidate:
    """A built model with everything the benchmark needs to feed, hook and describe it.

    Args:
        name: report label.
        kind: ``"detectron2"`` or ``"torchvision"``.
        model: the built detector (moved to ``settings.device`` and set to eval mode here).
        settings: the benchmark settings (device, image size, seed of synthetic inputs, precision);
            at fixed work with ``control_scores`` the model's RPN and class scores are replaced
            (:class:`.nms_work.FixedScores`).
        cfg: the frozen config of a detectron2 model.
        info: what the report says about how the model was built.
        child_spec: JSON-able description from which the memory child rebuilds the model.
    """

    def __init__(self, name: str, kind: str, model, settings: BenchmarkSettings, *, cfg=None,
                 info: Optional[Dict[str, object]] = None, child_spec: Optional[Dict[str, object]] = None):
        if kind not in ("detectron2", "torchvision"):
            raise ValueError(f"unknown model kind {kind}")
        self.name = name
        self.kind = kind
        self.device = settings.device
        self.settings = settings
        self.cfg = cfg
        self.info = info if info is not None else {"kind": kind}
        self.child_spec = child_spec
        self.parts = detectron2_parts(model) if kind == "detectron2" else torchvision_parts(model, name)
        self.has_mask = self.parts.mask_head is not None
        self.fixed_scores = None
        if settings.fixed_work and settings.control_scores:
            rpn_head = model.proposal_generator.rpn_head if kind == "detectron2" else model.rpn.head
            self.fixed_scores = FixedScores(rpn_head, self.parts.box_predictor, settings.classes_per_roi,
                                            background="last" if kind == "detectron2" else "first",
                                            seed=settings.seed)
            self.info["score_control"] = {
                "rpn_objectness": "seeded standard normal logits of the head's output shape",
                "classes_per_roi": settings.classes_per_roi,
            }
        self.model = model.to(self.device)
        self.model.eval()

    @classmethod
    def from_spec(cls, spec: ModelSpec, settings: BenchmarkSettings, tv_sizes=None) -> "Candidate":
        """Build the model of ``spec`` (random weights unless given; fixed work in synthetic
        inference mode)."""
        torch.manual_seed(settings.seed)
        if spec.kind == "detectron2":
            return cls._from_detectron2(spec, settings)
        if spec.kind == "torchvision":
            return cls._from_torchvision(spec, settings, tv_sizes)
        raise ValueError(f"unknown model kind {spec.kind}")

    @classmethod
    def _from_detectron2(cls, spec, settings):
        fixed = (settings.num_proposals, settings.num_detections) if settings.fixed_work else None
        mc = measurement_config(spec.config_file, list(settings.global_opts) + list(spec.opts),
                                device=settings.device, fixed_work=fixed, pre_nms_topk=settings.rpn_pre_nms_topk)
        cfg, overrides = mc.cfg, mc.fixed_work_overrides
        info = {"kind": spec.kind, "config_file": spec.config_file, "opts": mc.opts,
                "weights": mc.weights or None,
                "weights_note": None if mc.weights else
                f"random init (config MODEL.WEIGHTS '{mc.config_weights}' not loaded; "
                "pass MODEL.WEIGHTS to load a file)",
                "fixed_work_overrides": dict(zip(overrides[::2], overrides[1::2])) or None}
        model, zeroed = build_detector(cfg, mc.weights, zero_regression=bool(overrides))
        if zeroed is not None:
            info["zeroed_box_regression_layers"] = zeroed
        detectron2_parts(model)  # a model that is no two-stage detector fails before the info below
        info.update(meta_architecture=cfg.MODEL.META_ARCHITECTURE, backbone=cfg.MODEL.BACKBONE.NAME,
                    roi_heads=cfg.MODEL.ROI_HEADS.NAME)
        return cls(spec.name, "detectron2", model, settings, cfg=cfg, info=info,
                   child_spec={"kind": "detectron2", "cfg_yaml": cfg.dump()})

    @classmethod
    def _from_torchvision(cls, spec, settings, tv_sizes=None):
        ctor = torchvision_kwargs(settings, tv_sizes)
        model = build_torchvision_detector(spec.torchvision_name, ctor, spec.weights)
        info = {"kind": spec.kind, "torchvision_model": spec.torchvision_name, "weights": spec.weights,
                "weights_note": None if spec.weights else "random init",
                "constructor_kwargs": ctor,
                "fixed_work_overrides": {k: v for k, v in ctor.items() if k not in ("min_size", "max_size")} or None}
        return cls(spec.name, "torchvision", model, settings, info=info,
                   child_spec={"kind": "torchvision", "name": spec.torchvision_name, "kwargs": ctor})

    # -- inputs -----------------------------------------------------------------------------
    def eval_inputs_from_bgr(self, image: np.ndarray):
        """Batch of one image, already on the device (so no copy is timed)."""
        t = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return self.eval_inputs_from_d2({"image": t, "height": image.shape[0], "width": image.shape[1]})

    def eval_inputs_from_d2(self, d):
        """Batch of one image from a detectron2 dataset dict (``image``: CHW uint8 BGR tensor)."""
        image = d["image"].to(self.device)
        if self.kind == "detectron2":
            out = {"image": image}
            if "height" in d:
                out["height"], out["width"] = d["height"], d["width"]
            return [out]
        return [image.flip(0).float().div_(255.0)]  # torchvision: RGB in [0, 1]

    def train_inputs(self, batch_size: int, num_gt: int, seed: int):
        """Synthetic training batch with ``num_gt`` instances per image (boxes, classes, masks)."""
        from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks

        h, w = self.settings.image_size
        rng = np.random.RandomState(seed)
        batch, images, targets = [], [], []
        if self.kind == "detectron2":
            num_classes = self.cfg.MODEL.ROI_HEADS.NUM_CLASSES
        else:
            num_classes = self.model.roi_heads.box_predictor.cls_score.out_features
        for i in range(batch_size):
            img = synthetic_image(h, w, seed + i)
            boxes, polys = random_polygons(h, w, num_gt, rng)
            classes = rng.randint(0, max(num_classes - (0 if self.kind == "detectron2" else 1), 1), size=num_gt)
            bitmasks = BitMasks.from_polygon_masks(polys, h, w)
            if self.kind == "detectron2":
                inst = Instances((h, w))
                inst.gt_boxes = Boxes(torch.as_tensor(boxes))
                inst.gt_classes = torch.as_tensor(classes, dtype=torch.int64)
                if self.has_mask:
                    fmt = self.cfg.INPUT.MASK_FORMAT
                    inst.gt_masks = bitmasks if fmt == "bitmask" else PolygonMasks(polys)
                image = torch.as_tensor(np.ascontiguousarray(img.transpose(2, 0, 1))).to(self.device)
                batch.append({"image": image, "instances": inst.to(self.device), "height": h, "width": w})
            else:
                images.append(torch.as_tensor(np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1)))
                              .float().div_(255).to(self.device))
                t = {"boxes": torch.as_tensor(boxes).to(self.device),
                     "labels": torch.as_tensor(classes + 1, dtype=torch.int64).to(self.device)}
                if self.has_mask:
                    t["masks"] = bitmasks.tensor.to(torch.uint8).to(self.device)
                targets.append(t)
        return batch if self.kind == "detectron2" else (images, targets)

    def autocast(self):
        """``torch.autocast`` at the benchmark's precision (nothing in fp32)."""
        dtype = self.settings.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(self.device).type, dtype=dtype)

    def forward(self, inputs):
        with self.autocast():
            return self.model(inputs)

    def train_forward(self, inputs):
        with self.autocast():
            if self.kind == "detectron2":
                return self.model(inputs)
            images, targets = inputs
            return self.model(images, targets)

    # -- static figures ---------------------------------------------------------------------
    def flops(self, inputs):
        """fvcore analysis of one inference on ``inputs`` and its summary (see ``model_stats``)."""
        if self.kind == "detectron2":  # both wrappers name the model "model"
            analysis = detectron2_flop_analysis(self.model, inputs)
        else:
            analysis = generic_flop_analysis(self.model, inputs[0])
        return analysis, flops_summary(analysis, module_prefix="model.")

