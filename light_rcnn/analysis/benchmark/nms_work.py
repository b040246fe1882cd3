"""The non-maximum suppressions of fixed work: the same boxes enter every NMS of every model.

With random weights the scores that select what enters an NMS depend on the model: an untrained
R50-C4's res5 saturates the softmax so that nearly every class score underflows to 0 and is
filtered, while a light head passes all ``R x K`` of them. :class:`FixedScores` removes that
dependence with forward hooks (no patched code): the RPN head's objectness logits and the box
predictor's class logits are replaced, after the layers ran (their cost is unchanged), by
deterministic tensors that depend only on their shape. With zeroed box regression (see
:func:`light_rcnn.analysis.build.zero_box_regression`) proposals are then the same anchors for
every model of the same feature stride, and exactly ``classes_per_roi`` classes of every ROI pass
the score threshold of 0.

:func:`count_nms_inputs` counts, on a verification pass under :mod:`torch.profiler`, the boxes
entering each NMS (every ``torchvision::nms`` call, summed over the calls one batched NMS makes):
``[RPN, final per-class]`` for one image.
"""
from typing import Dict, List, Sequence

import torch
from torch import nn

# A logit whose softmax is exactly 0 next to logits in [0, 4] in fp32, fp16 and bf16.
_SUPPRESSED_LOGIT = -1.0e4
NMS_OP = "torchvision::nms"


class FixedScores:
    """Forward hooks that give a detector model-independent RPN objectness and class scores.

    Args:
        rpn_head: module returning ``(objectness logits: list[Tensor (N, A, H, W)], deltas)``
            (detectron2 ``StandardRPNHead``, torchvision ``RPNHead``).
        box_predictor: module returning ``(class logits (R, K + 1), deltas)`` (detectron2
            ``FastRCNNOutputLayers``, torchvision ``FastRCNNPredictor``).
        classes_per_roi: foreground classes of each ROI whose score is positive (the others and
            the background get a logit whose softmax is exactly 0); capped at ``K``.
        background: ``"last"`` (detectron2) or ``"first"`` (torchvision) column of the logits.
        seed: seed of the score patterns.
    """

    def __init__(self, rpn_head: nn.Module, box_predictor: nn.Module, classes_per_roi: int,
                 background: str = "last", seed: int = 0):
        if background not in ("last", "first"):
            raise ValueError(f"background must be 'last' or 'first', got {background}")
        if classes_per_roi < 1:
            raise ValueError(f"classes_per_roi must be >= 1, got {classes_per_roi}")
        self.classes_per_roi = int(classes_per_roi)
        self.background = background
        self.seed = int(seed)
        self._cache: Dict[tuple, torch.Tensor] = {}
        self._handles = [rpn_head.register_forward_hook(self._rpn_hook),
                         box_predictor.register_forward_hook(self._predictor_hook)]

    def _cached(self, kind, like: torch.Tensor, make):
        key = (kind, tuple(like.shape), like.dtype, str(like.device))
        if key not in self._cache:  # made once on the CPU, so no timed pass pays for it
            self._cache[key] = make(tuple(like.shape)).to(device=like.device, dtype=like.dtype)
        return self._cache[key]

    def objectness(self, shape: Sequence[int]) -> torch.Tensor:
        """Standard normal logits of ``shape``, the same for every model."""
        g = torch.Generator().manual_seed(self.seed)
        return torch.randn(*shape, generator=g)

    def class_logits(self, shape: Sequence[int]) -> torch.Tensor:
        """``(R, K + 1)`` logits: per ROI, ``classes_per_roi`` random foreground classes get a
        logit in ``[0, 4)``, the other classes and the background one whose softmax is 0."""
        r, k1 = shape
        k = k1 - 1
        g = torch.Generator().manual_seed(self.seed + 1)
        chosen = torch.rand(r, k, generator=g).argsort(dim=1)[:, :min(self.classes_per_roi, k)]
        values = 4.0 * torch.rand(chosen.shape, generator=g)
        fg = torch.full((r, k), _SUPPRESSED_LOGIT).scatter_(1, chosen, values)
        bg = torch.full((r, 1), _SUPPRESSED_LOGIT)
        return torch.cat([fg, bg] if self.background == "last" else [bg, fg], dim=1)

    def _rpn_hook(self, module, args, out):
        logits, deltas = out
        return [self._cached("rpn", x, self.objectness) for x in logits], deltas

    def _predictor_hook(self, module, args, out):
        scores, deltas = out
        return self._cached("cls", scores, self.class_logits), deltas

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


class _Span:
    """A profiler range around one module's forward (forward pre/post hooks)."""

    def __init__(self, module: nn.Module, name: str):
        self.name = name
        self._ranges = []
        self._handles = [module.register_forward_pre_hook(self._pre), module.register_forward_hook(self._post)]

    def _pre(self, module, args):
        rf = torch.profiler.record_function(self.name)
        rf.__enter__()
        self._ranges.append(rf)

    def _post(self, module, args, out):
        self._ranges.pop().__exit__(None, None, None)

    def remove(self):
        for h in self._handles:
            h.remove()


def _nested_in_nms(event) -> bool:
    """Whether ``event`` runs inside another ``nms`` call (autocast's wrapper re-dispatches it)."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name == NMS_OP:
            return True
        parent = parent.cpu_parent
    return False


def _inside(event, span_events) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if any(parent is s for s in span_events):
            return True
        parent = parent.cpu_parent
    t0, t1 = event.time_range.start, event.time_range.end
    return any(s.time_range.start <= t0 and t1 <= s.time_range.end for s in span_events)


def count_nms_inputs(run, rpn: nn.Module, roi_heads: nn.Module) -> List[int]:
    """Boxes entering the NMS of the proposal generator and of the ROI heads in ``run()`` (one
    image), from the input shapes of the ``torchvision::nms`` calls that :mod:`torch.profiler`
    records; a batched NMS that runs one ``nms`` per class or level counts as their sum, and the
    call that autocast's wrapper re-dispatches in fp32 counts once.

    Returns:
        ``[rpn_boxes, final_boxes]``, plus the sizes of NMS calls made outside both modules.
    """
    from torch.profiler import ProfilerActivity, profile

    spans = [_Span(rpn, "light_rcnn::nms_count::rpn"), _Span(roi_heads, "light_rcnn::nms_count::roi_heads")]
    try:
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            run()
    finally:
        for s in spans:
            s.remove()
    events = list(prof.events())
    by_span = {s.name: [e for e in events if e.name == s.name] for s in spans}
    counts, other = [0, 0], []
    for e in events:
        if e.name != NMS_OP or _nested_in_nms(e):
            continue
        n = int(e.input_shapes[0][0]) if e.input_shapes and e.input_shapes[0] else 0
        if _inside(e, by_span[spans[0].name]):
            counts[0] += n
        elif _inside(e, by_span[spans[1].name]):
            counts[1] += n
        else:
            other.append(n)
    return counts + other


__all__ = ["FixedScores", "NMS_OP", "count_nms_inputs"]
