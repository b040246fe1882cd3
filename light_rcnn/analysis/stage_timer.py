"""Per-stage timing and work counting of a two-stage detector, from forward hooks.

:class:`StageTimer` registers ``torch.nn.Module`` forward pre/post hooks (no patching of any
method) on the parts of a detector that :class:`DetectorParts` names, and turns the time stamps of
one forward into a partition of that forward's wall time:

* ``backbone``    bottom-up network (``backbone.bottom_up`` / torchvision ``backbone.body``); the
  whole backbone when it has no separate bottom-up part;
* ``neck``        backbone time minus bottom-up time (FPN, the separated large-kernel neck, ...);
  0 when the backbone has no ``bottom_up``;
* ``rpn``         the proposal generator's forward (anchors, objectness, top-k, NMS);
* ``box_head``    ROI heads from their start to the *split point* (ROI pooling, box head, box
  predictor and its inference: per-class NMS, top-k);
* ``mask_head``   ROI heads from the split point to their end (mask ROI pooling / shared res5,
  mask head, mask inference);
* ``postprocess`` everything else inside the model's forward: input normalization and padding
  (preprocess), ``detector_postprocess`` / torchvision ``transform.postprocess`` (box rescaling,
  pasting masks into the image) and glue. It is the remainder, so the stages add up to the forward
  time exactly; the preprocess part is also reported on its own (``preprocess``).

The split point is the first call of a direct child of ``roi_heads`` that starts after the box
predictor has returned. In detectron2's ``Res5ROIHeads`` (the Mask R-CNN C4 baseline) the ROI
pooler and ``res5`` are shared by both branches and are called twice: first on the proposals (box
branch), then on the detected boxes (mask branch). The rule above attributes each call to the
branch that made it. In ``StandardROIHeads`` and torchvision's ``RoIHeads`` the mask branch starts
at ``mask_pooler`` / ``mask_roi_pool``.

Counting hooks (always on, no device synchronization) record the work of every forward:
proposals per image (output of the proposal generator), ROIs entering the box predictor and
ROIs entering the mask head.

On CUDA every timing hook synchronizes the device before reading the clock, so the stage times
are device times; that is why timing hooks can be switched off (:meth:`StageTimer.timing`) for
the passes that measure end-to-end latency.
"""
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch
from torch import nn

STAGES = ("backbone", "neck", "rpn", "box_head", "mask_head", "postprocess")


@dataclass
class DetectorParts:
    """The modules of a two-stage detector that the timer hooks.

    Attributes:
        model: the whole detector (its forward is the timed interval).
        backbone: feature extractor called once per forward (may include a neck).
        rpn: proposal generator; its forward output's first element is a list with one entry
            (``Instances`` or a ``(R, 4)`` box tensor) per image.
        roi_heads: second stage.
        bottom_up: bottom-up part of ``backbone`` when the backbone wraps one (FPN / neck).
        box_predictor: final box classifier/regressor inside ``roi_heads``; its first input's
            first dimension is the number of box ROIs.
        mask_head: mask head inside ``roi_heads`` (None for detection-only models); its first
            input's first dimension is the number of mask ROIs.
        count_detections: maps the model output to the number of detections per image.
    """

    model: nn.Module
    backbone: nn.Module
    rpn: nn.Module
    roi_heads: nn.Module
    bottom_up: Optional[nn.Module] = None
    box_predictor: Optional[nn.Module] = None
    mask_head: Optional[nn.Module] = None
    count_detections: Optional[Callable] = None
    extra_roi_children: List[nn.Module] = field(default_factory=list)


def _num_rois(args):
    """Number of ROIs in a head's positional inputs: first tensor's first dim, or the total length
    of a list of ``Instances`` / tensors."""
    for a in args:
        if torch.is_tensor(a):
            return int(a.shape[0])
    for a in args:
        if isinstance(a, (list, tuple)) and a:
            return int(sum(len(x) for x in a))
    return 0


def _num_per_image(items):
    return [int(len(x)) if not torch.is_tensor(x) else int(x.shape[0]) for x in items]


class StageTimer:
    """Hooks a detector (see module docstring). Use as a context manager, or call :meth:`remove`.

    After every forward of ``parts.model``: ``last_counts`` holds the work counts of that forward and,
    when timing was on, ``last_stages`` the stage times in seconds (plus ``total`` and
    ``preprocess``).
    """

    def __init__(self, parts: DetectorParts, device: str = "cpu"):
        self.parts = parts
        self._sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
        self._timing = False
        self._handles = []
        self.last_counts = None
        self.last_stages = None
        self._reset()
        p = parts
        self._hook(p.model, self._model_pre, self._model_post)
        self._hook(p.backbone, *self._interval("backbone"))
        if p.bottom_up is not None:
            self._hook(p.bottom_up, *self._interval("bottom_up"))
        self._hook(p.rpn, *self._interval("rpn"), post_extra=self._count_proposals)
        self._hook(p.roi_heads, *self._interval("roi_heads"))
        children = list(p.roi_heads.children()) + list(p.extra_roi_children)
        for child in children:
            if child is p.box_predictor:
                continue
            self._handles.append(child.register_forward_pre_hook(self._roi_child_pre))
        if p.box_predictor is not None:
            self._handles.append(p.box_predictor.register_forward_pre_hook(self._box_predictor_pre))
            self._handles.append(p.box_predictor.register_forward_hook(self._box_predictor_post))
        if p.mask_head is not None:
            self._handles.append(p.mask_head.register_forward_pre_hook(self._mask_head_pre))

    # -- hook plumbing ---------------------------------------------------------------------
    def _hook(self, module, pre, post, post_extra=None):
        self._handles.append(module.register_forward_pre_hook(lambda m, args: pre()))

        def _post(m, args, out):
            post()
            if post_extra is not None:
                post_extra(out)

        self._handles.append(module.register_forward_hook(_post))

    def _now(self):
        self._sync()
        return time.perf_counter()

    def _interval(self, name):
        def pre():
            if self._timing:
                self._start[name] = self._now()

        def post():
            if self._timing:
                t = self._now()
                self._acc[name] = self._acc.get(name, 0.0) + t - self._start[name]
                self._first.setdefault(name, self._start[name])
                self._last[name] = t

        return pre, post

    def _reset(self):
        self._start, self._acc, self._first, self._last = {}, {}, {}, {}
        self._box_predictor_done = False
        self._split = None
        self._counts = {"proposals": [], "box_rois": 0, "mask_rois": 0}

    # -- hooks ------------------------------------------------------------------------------
    def _model_pre(self):
        self._reset()
        if self._timing:
            self._t0 = self._now()

    def _model_post(self):
        self.last_counts = dict(self._counts)
        if not self._timing:
            return
        t1 = self._now()
        total = t1 - self._t0
        acc = self._acc
        backbone_all = acc.get("backbone", 0.0)
        bottom_up = acc.get("bottom_up", backbone_all) if self.parts.bottom_up is not None else backbone_all
        roi_start = self._first.get("roi_heads", t1)
        roi_end = self._last.get("roi_heads", t1)
        split = self._split if self._split is not None else roi_end
        stages = {
            "backbone": bottom_up,
            "neck": backbone_all - bottom_up,
            "rpn": acc.get("rpn", 0.0),
            "box_head": split - roi_start,
            "mask_head": roi_end - split,
        }
        stages["postprocess"] = total - sum(stages.values())
        stages["total"] = total
        stages["preprocess"] = self._first.get("backbone", t1) - self._t0
        self.last_stages = stages

    def _count_proposals(self, out):
        proposals = out[0] if isinstance(out, (tuple, list)) else out
        self._counts["proposals"] = _num_per_image(proposals)

    def _box_predictor_pre(self, m, args):
        self._counts["box_rois"] += _num_rois(args)

    def _box_predictor_post(self, m, args, out):
        self._box_predictor_done = True

    def _roi_child_pre(self, m, args):
        if self._box_predictor_done and self._split is None and self._timing:
            self._split = self._now()

    def _mask_head_pre(self, m, args):
        self._counts["mask_rois"] += _num_rois(args)

    # -- public -----------------------------------------------------------------------------
    def timing(self, on: bool):
        """Switch the (synchronizing) timing hooks on or off; counting hooks stay on."""
        self._timing = bool(on)
        return self

    def record_detections(self, outputs):
        """Add the number of detections per image of ``outputs`` to ``last_counts``."""
        if self.parts.count_detections is not None and self.last_counts is not None:
            self.last_counts["detections"] = self.parts.count_detections(outputs)

    def remove(self):
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
        return False
