"""Static and traced statistics of a model: parameters, weight size, FLOPs, activations.

FLOPs come from fvcore's jit-trace counter (through :class:`detectron2.utils.analysis.FlopCountAnalysis`
for detectron2 models). fvcore counts **one multiply-add as one flop**, so every "FLOPs" figure
here is a number of multiply-accumulates (MACs); papers that count a multiply-add as two flops
report twice as much. Operators without a flop formula (NMS, sort, element-wise ops, grid sampling
when pasting masks) count as zero. The count depends on the input: image size and, for two-stage
detectors, the number of proposals and detections, so every figure is reported together with the
input it was measured on.

:func:`analyze_configs` is what ``tools/analyze_model.py`` calls.
"""
import logging
import warnings
from collections import Counter
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .build import build_detector, config_name, measurement_config

logger = logging.getLogger(__name__)

MIB = float(2 ** 20)


def count_parameters(model: nn.Module) -> Dict[str, int]:
    """Number of parameters: ``total`` and ``trainable`` (``requires_grad``)."""
    params = list(model.parameters())
    return {
        "total": int(sum(p.numel() for p in params)),
        "trainable": int(sum(p.numel() for p in params if p.requires_grad)),
    }


def weights_size_mib(model: nn.Module) -> float:
    """Size in MiB of ``model.state_dict()`` (parameters and buffers) stored in fp32.

    Floating-point tensors count 4 bytes per element whatever their current dtype; integer
    buffers (e.g. BatchNorm's ``num_batches_tracked``) count their own element size.
    """
    total = 0
    for t in model.state_dict().values():
        if not torch.is_tensor(t):
            continue
        total += t.numel() * (4 if t.is_floating_point() else t.element_size())
    return total / MIB


def parameter_table(model: nn.Module, max_depth: int = 3) -> str:
    """fvcore's parameter-count table by module (as detectron2's ``tools/analyze_model.py``)."""
    from fvcore.nn import parameter_count_table

    return parameter_count_table(model, max_depth=max_depth)


def _quiet(analysis):
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    return analysis


def detectron2_flop_analysis(model: nn.Module, inputs: list):
    """fvcore ``FlopCountAnalysis`` of a detectron2 model in inference mode on ``inputs``
    (``list[dict]`` in detectron2's format, batch size 1). Module names are the model's own."""
    from detectron2.utils.analysis import FlopCountAnalysis

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about data-dependent shapes
            analysis = _quiet(FlopCountAnalysis(model, inputs))
            analysis.total()  # runs the trace now, under no_grad and eval
    finally:
        model.train(was_training)
    return analysis


class _FlatOutputs(nn.Module):
    """Wraps a model taking ``list[Tensor]`` and returning nested dicts/lists of tensors (e.g. a
    torchvision detector) so that it can be traced: input one image tensor, output a flat tuple."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image):
        out = self.model([image])
        flat = []

        def visit(x):
            if torch.is_tensor(x):
                flat.append(x)
            elif isinstance(x, dict):
                for k in sorted(x):
                    visit(x[k])
            elif isinstance(x, (list, tuple)):
                for v in x:
                    visit(v)

        visit(out)
        return tuple(flat)


def generic_flop_analysis(model: nn.Module, image: torch.Tensor):
    """fvcore ``FlopCountAnalysis`` of a model called as ``model([image])`` in eval mode (torchvision
    detectors). Module names are prefixed with ``model.``."""
    from fvcore.nn import FlopCountAnalysis

    from detectron2.utils.analysis import _IGNORED_OPS

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about data-dependent shapes
            analysis = _quiet(FlopCountAnalysis(_FlatOutputs(model), (image,)))
            analysis.set_op_handle(**{k: None for k in _IGNORED_OPS})
            analysis.total()
    finally:
        model.train(was_training)
    return analysis


def flops_summary(analysis, module_prefix: str = "") -> Dict[str, object]:
    """Total and per-module MACs (fvcore flops) of an analysis, for the modules a detector has:
    ``backbone``, ``backbone.bottom_up``/``backbone.body``, proposal generator, ROI heads and their
    direct children."""
    by_module = analysis.by_module()
    total = float(analysis.total())
    keep = {}
    for name, value in by_module.items():
        if module_prefix and name == module_prefix.rstrip("."):
            continue  # the wrapped model itself: that is the total
        short = name[len(module_prefix):] if module_prefix and name.startswith(module_prefix) else name
        if not short or short.count(".") > 1:
            continue
        head = short.split(".")[0]
        if short.count(".") == 1 and head not in ("backbone", "roi_heads", "rpn", "proposal_generator"):
            continue
        if value:
            keep[short] = float(value)
    return {
        "total": total,
        "by_module": keep,
        "by_operator": {k: float(v) for k, v in analysis.by_operator().items()},
    }


def activation_count(model: nn.Module, inputs: list) -> float:
    """Number of output elements of convolutions and matmuls (fvcore activation count, in
    units of one element) for one detectron2 input."""
    from detectron2.utils.analysis import activation_count_operators

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            counts = activation_count_operators(model, inputs)
    finally:
        model.train(was_training)
    return float(sum(counts.values())) * 1e6  # fvcore returns millions


def synthetic_d2_inputs(height: int, width: int, device="cpu", seed: int = 0) -> list:
    """One random uint8 BGR image of ``height x width`` in detectron2's input format."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8).to(device)
    return [{"image": image, "height": height, "width": width}]


def _format_num(x: float, unit: str = "") -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= div:
            return f"{x / div:.2f}{suffix}{unit}"
    return f"{x:.0f}{unit}"


def summary_line(name: str, stats: Dict[str, object]) -> str:
    """One line: name, parameters, weight size, MACs (and activations) at the analyzed input."""
    if stats.get("error"):
        return f"{name}: FAILED {stats['error']}"
    parts = [f"{name}: params {_format_num(stats['params']['total'])}",
             f"weights {stats['weights_mib']:.1f} MiB"]
    if stats.get("flops") is not None:
        parts.append(f"FLOPs {_format_num(stats['flops']['total'])} (multiply-adds)")
    if stats.get("activations") is not None:
        parts.append(f"activations {_format_num(stats['activations'])}")
    if stats.get("input"):
        parts.append(f"@ {stats['input']}")
    return " | ".join(parts)


def analyze_configs(
    config_files: Sequence[str],
    opts: Sequence[str] = (),
    tasks: Sequence[str] = ("flop", "parameter"),
    image_size=(800, 1333),
    device: str = "cpu",
    max_depth: int = 3,
    per_config_opts: Optional[List[Sequence[str]]] = None,
    names: Optional[Sequence[str]] = None,
    fixed_work: Optional[Sequence[int]] = None,
) -> List[Dict[str, object]]:
    """Analyze each config: build it with random weights (``MODEL.WEIGHTS`` only loaded when it is
    a local file given in ``opts``) and compute the requested ``tasks`` among ``flop``,
    ``activation``, ``parameter``, ``structure``.

    FLOPs and activations are measured on one synthetic ``image_size`` image at each config's own
    test settings (proposal and detection counts are those of the config), or, with
    ``fixed_work=(N, M)``, at the benchmark's fixed work (N proposals, M detections reaching the mask
    head; see :func:`light_rcnn.analysis.build.fixed_work_opts`). A config that fails is reported
    with its error and the others still run.

    Returns:
        one dict per config: ``name``, ``config_file``, ``params`` ({total, trainable}),
        ``weights_mib``, and per task ``flops`` ({total, by_module, by_operator}),
        ``activations``, ``parameter_table``, ``structure``; ``summary`` (one line); ``error``
        (None or "Type: message").
    """
    per_config_opts = per_config_opts or [()] * len(config_files)
    results = []
    names = list(names) if names else [config_name(f, o) for f, o in zip(config_files, per_config_opts)]
    h, w = image_size
    for name, cfg_file, own_opts in zip(names, config_files, per_config_opts):
        all_opts = list(opts) + list(own_opts)
        rec = {"name": name, "config_file": cfg_file, "opts": all_opts, "input": f"{h}x{w}", "error": None}
        try:
            mc = measurement_config(cfg_file, all_opts, device=device, fixed_work=fixed_work)
            weights = mc.weights
            if fixed_work:
                rec["input"] += f", {fixed_work[0]} proposals, {fixed_work[1]} detections"
            # random weights at fixed work: keep every box on the image (see zero_box_regression)
            model, _ = build_detector(mc.cfg, weights, zero_regression=bool(fixed_work))
            model.eval()
            rec["weights"] = weights
            rec["params"] = count_parameters(model)
            rec["weights_mib"] = weights_size_mib(model)
            inputs = synthetic_d2_inputs(h, w, device=device)
            rec["flops"] = None
            rec["activations"] = None
            for task in tasks:
                if task == "flop":
                    rec["flops"] = flops_summary(detectron2_flop_analysis(model, inputs), module_prefix="model.")
                elif task == "activation":
                    rec["activations"] = activation_count(model, inputs)
                elif task == "parameter":
                    rec["parameter_table"] = parameter_table(model, max_depth=max_depth)
                elif task == "structure":
                    rec["structure"] = str(model)
                else:
                    raise ValueError(f"unknown task '{task}'")
            del model
        except Exception as e:  # reported, the other configs still run
            rec["error"] = f"{type(e).__name__}: {e}"
            logger.exception("analysis of %s failed", name)
        rec["summary"] = summary_line(name, rec)
        results.append(rec)
    return results


def average_flops(analyses) -> Dict[str, float]:
    """Mean and standard deviation of the totals of several analyses (real-data mode)."""
    totals = np.array([float(a.total()) for a in analyses], dtype=np.float64)
    c = Counter()
    for a in analyses:
        c.update({k: float(v) for k, v in a.by_operator().items()})
    return {
        "total": float(totals.mean()),
        "std": float(totals.std()),
        "num_inputs": int(len(totals)),
        "by_operator": {k: v / len(totals) for k, v in c.items()},
    }


def format_analysis(results: Sequence[Dict[str, object]]) -> str:
    """The report ``tools/analyze_model.py`` prints: per config its parameter table, FLOPs by
    module and operator, structure (those computed), then one summary line per config."""
    lines = []
    for r in results:
        lines.append(f"===== {r['name']} ({r['config_file']})")
        if r.get("error"):
            lines.append(f"FAILED: {r['error']}")
            continue
        if "parameter_table" in r:
            lines.append("Parameters by module:\n" + r["parameter_table"])
        if r.get("flops"):
            lines.append("FLOPs (multiply-adds) by module:")
            for k, v in sorted(r["flops"]["by_module"].items()):
                lines.append(f"  {k:40s} {v / 1e9:10.3f} G")
            lines.append("FLOPs by operator: "
                         + ", ".join(f"{k} {v / 1e9:.3f}G" for k, v in r["flops"]["by_operator"].items()))
        if "structure" in r:
            lines.append(r["structure"])
    lines.append("\nSummary:")
    lines.extend(r["summary"] for r in results)
    return "\n".join(lines)
