"""Build a detector for measurement: the one place where the benchmark, the model statistics and
the benchmark's memory child turn a config (or a torchvision model name) into a model.

Measured models use random weights unless ``MODEL.WEIGHTS`` is named explicitly, and can be set to
*fixed work*: the RPN keeps exactly ``N`` proposals and the second stage exactly ``M`` detections,
all of which reach the mask head (:func:`fixed_work_opts`, :func:`zero_box_regression`).
"""
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

from ..compression import build_model


def config_name(config_file: str, opts: Sequence[str] = ()) -> str:
    """Report label of a config: its file name without extension, plus its overrides."""
    stem = os.path.splitext(os.path.basename(config_file))[0]
    if opts:
        stem += "[" + ",".join(f"{k.split('.')[-1]}={v}" for k, v in zip(opts[::2], opts[1::2])) + "]"
    return stem


def resolve_weights(cfg, opts: Sequence[str]) -> str:
    """The weights to load: ``MODEL.WEIGHTS`` only when given explicitly in ``opts``.

    The ``MODEL.WEIGHTS`` of a config file is the *training initialization* (detectron2's zoo
    configs name ImageNet weights on the network); measurements use random weights unless a file
    is named on the command line. A name that would be downloaded fails with a message saying which
    file to provide (see ``light_rcnn.engine.checkpoint.check_weights``).
    """
    keys = list(opts)[::2]
    if "MODEL.WEIGHTS" not in keys:
        return ""
    weights = cfg.MODEL.WEIGHTS
    from ..engine.checkpoint import check_weights

    check_weights(weights)
    return weights


def fixed_work_opts(cfg, num_proposals: int, num_detections: int,
                    pre_nms_topk: Optional[int] = None) -> List[object]:
    """The overrides that make a detectron2 config process exactly ``num_proposals`` proposals and
    ``num_detections`` detections (all reaching the mask head) per image.

    ``RPN.NMS_THRESH = 1.0`` suppresses nothing (torchvision's NMS drops a box only when IoU >
    threshold), and so do a score threshold of 0 and a per-class NMS threshold of 1. The RPN ranks
    ``pre_nms_topk`` boxes per feature level before its NMS (``None``: the config's own
    ``PRE_NMS_TOPK_TEST``), at least ``num_proposals``.
    """
    topk = int(cfg.MODEL.RPN.PRE_NMS_TOPK_TEST) if pre_nms_topk is None else int(pre_nms_topk)
    return [
        "MODEL.RPN.PRE_NMS_TOPK_TEST", max(topk, num_proposals),
        "MODEL.RPN.POST_NMS_TOPK_TEST", num_proposals,
        "MODEL.RPN.NMS_THRESH", 1.0,
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0,
        "MODEL.ROI_HEADS.NMS_THRESH_TEST", 1.0,
        "TEST.DETECTIONS_PER_IMAGE", num_detections,
    ]


def zero_box_regression(model: nn.Module) -> int:
    """Zero the weights and biases of a detectron2 model's box-regression layers (the RPN head's
    ``anchor_deltas`` and every ``bbox_pred``), so that proposals are the anchors and detections
    the proposals; returns how many layers were zeroed.

    Used at fixed work with random weights: an untrained, un-normalized network (FrozenBN is the
    identity before weights are loaded; detectron2's R50-C4 reaches |res4| ~ 5e3 on a random
    image) predicts box deltas in the hundreds, which move every box off the image, and the RPN
    then drops them all as empty. The layers still run, so FLOPs and latency are unchanged.
    """
    n = 0
    for name, module in model.named_modules():
        if name.split(".")[-1] in ("anchor_deltas", "bbox_pred") and hasattr(module, "weight"):
            with torch.no_grad():
                module.weight.zero_()
                if module.bias is not None:
                    module.bias.zero_()
            n += 1
    return n


@dataclass
class MeasurementConfig:
    """A frozen detectron2 config ready to build, and how it was derived.

    Attributes:
        cfg: frozen config, ``MODEL.WEIGHTS`` cleared (weights are loaded by :func:`build_detector`).
        opts: every ``KEY VALUE`` override applied on top of the file.
        weights: the file to load, ``""`` for random weights (see :func:`resolve_weights`).
        fixed_work_overrides: the ``KEY VALUE`` list of :func:`fixed_work_opts`, empty when the
            config keeps its own test settings.
        config_weights: the ``MODEL.WEIGHTS`` the config names (its training initialization).
    """

    cfg: object
    opts: List[object]
    weights: str
    fixed_work_overrides: List[object] = field(default_factory=list)
    config_weights: str = ""


def measurement_config(config_file: str, opts: Sequence[str] = (), *, device: str = "cpu",
                       fixed_work: Optional[Tuple[int, int]] = None,
                       pre_nms_topk: Optional[int] = None) -> MeasurementConfig:
    """Load ``config_file`` with ``opts`` for measurement on ``device``; with ``fixed_work=(N, M)``
    at the benchmark's fixed work (``pre_nms_topk``: see :func:`fixed_work_opts`).

    Raises:
        FileNotFoundError: the config does not exist, or ``MODEL.WEIGHTS`` given in ``opts`` would
            be downloaded or does not exist.
    """
    from ..config import load_config

    opts = list(opts)
    cfg = load_config(config_file, opts)
    weights = resolve_weights(cfg, opts)
    config_weights = cfg.MODEL.WEIGHTS
    overrides = fixed_work_opts(cfg, *fixed_work, pre_nms_topk=pre_nms_topk) if fixed_work else []
    if overrides:
        cfg.merge_from_list(overrides)
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = device
    cfg.freeze()
    return MeasurementConfig(cfg=cfg, opts=opts, weights=weights, fixed_work_overrides=overrides,
                             config_weights=config_weights)


def build_detector(cfg, weights: str = "", *, zero_regression: bool = False) -> Tuple[nn.Module, Optional[int]]:
    """``build_model(cfg)`` and, when given, ``weights`` loaded into it; with random weights and
    ``zero_regression``, the box-regression layers zeroed (fixed work, see
    :func:`zero_box_regression`).

    Returns:
        (model, number of zeroed layers or None when nothing was zeroed).
    """
    model = build_model(cfg)
    zeroed = None
    if weights:
        DetectionCheckpointer(model).load(weights)
    elif zero_regression:
        zeroed = zero_box_regression(model)
    return model, zeroed


def calibrate_frozen_bn(model: nn.Module, run: Callable[[], object]) -> int:
    """Give every frozen batch norm of a randomly initialized ``model`` the statistics of its own
    input in ``run()`` (one forward, without gradients), as a trained network's frozen BN has;
    returns how many layers were calibrated.

    Before weights are loaded, detectron2's and torchvision's ``FrozenBatchNorm2d`` are the
    identity, so a full-depth ResNet's activations grow by orders of magnitude through its residual
    blocks (R50-C4's res5 head most of all): the first training losses are huge, one SGD step makes
    them infinite and the RPN stops with "Predicted boxes or scores contain Inf/NaN". A forward
    pre-hook on each frozen BN sets ``running_mean`` / ``running_var`` to its input's per-channel
    mean / variance just before it normalizes; layers run in order, so each sees inputs already
    normalized upstream and a single pass calibrates them all. The layers and their cost are
    unchanged (the scale and shift only change value), which is why the benchmark's train task
    uses this rather than trainable BN, gradient clipping or a smaller network.
    """
    from detectron2.layers import FrozenBatchNorm2d
    from torchvision.ops.misc import FrozenBatchNorm2d as TVFrozenBatchNorm2d

    def pre(module, args):
        x = args[0].detach().float()
        dims = [d for d in range(x.dim()) if d != 1]
        with torch.no_grad():
            module.running_mean.copy_(x.mean(dim=dims))
            module.running_var.copy_(x.var(dim=dims, unbiased=False))
            module.weight.fill_(1.0)
            module.bias.zero_()

    layers = [m for m in model.modules() if isinstance(m, (FrozenBatchNorm2d, TVFrozenBatchNorm2d))]
    handles = [m.register_forward_pre_hook(pre) for m in layers]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return len(layers)


def build_torchvision_detector(name: str, kwargs: Dict[str, object], weights: Optional[str] = None) -> nn.Module:
    """``torchvision.models.get_model(name, **kwargs)`` with random weights, or the local state
    dict ``weights`` (a state dict, or ``{"model": state_dict}``) loaded into it."""
    import torchvision

    model = torchvision.models.get_model(name, weights=None, weights_backbone=None, **kwargs)
    if weights:
        from ..engine.checkpoint import check_weights

        check_weights(weights, key=f"--torchvision-weights {name}")
        sd = torch.load(weights, map_location="cpu")
        if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
            sd = sd["model"]
        model.load_state_dict(sd)
    return model


__all__ = [
    "MeasurementConfig",
    "build_detector",
    "build_torchvision_detector",
    "calibrate_frozen_bn",
    "config_name",
    "fixed_work_opts",
    "measurement_config",
    "resolve_weights",
    "zero_box_regression",
]
