"""Speed, memory, FLOPs and size of detectors compared at the same work (``tools/benchmark.py``).

Tasks: ``inference`` at **fixed work** (one synthetic image, every model keeps exactly N proposals
and M detections that all reach the mask head, verified on every pass, see
:mod:`light_rcnn.analysis.build`; the same boxes enter every NMS of every model, counted on a
verification pass, see :mod:`.nms_work`) or on a registered data set (``dataset=NAME``: each
config's own test settings and weights, counts recorded not enforced); ``train`` (forward,
backward, SGD step on synthetic ground truth); ``data`` (images/s of detectron2's training loader).
Inference and the train task's forward run under ``torch.autocast`` at ``precision`` fp16 / bf16.

Modules: :mod:`.specs` (what to measure), :mod:`.candidate` (a built, hooked model),
:mod:`.nms_work` (equal NMS work), :mod:`.timing` (verification pass, interleaved loops),
:mod:`.memory` (peak memory in a fresh process), :mod:`.environment`, :mod:`.report`
(``benchmark.json``, ``benchmark.md``, ``benchmark_stages.png``) and :mod:`.runner`
(:func:`run_benchmark`).
"""
from ..build import config_name, fixed_work_opts, resolve_weights, zero_box_regression
from .candidate import Candidate
from .environment import environment, git_state
from .inputs import synthetic_image
from .memory import measure_memory
from .nms_work import FixedScores, count_nms_inputs
from .report import markdown_table, stage_chart, write_reports
from .runner import FLOPS_UNIT, SCHEMA_VERSION, run_benchmark
from .specs import BenchmarkSettings, FixedWorkError, ModelSpec, make_specs
from .timing import latency_stats

__all__ = [
    "BenchmarkSettings",
    "Candidate",
    "FLOPS_UNIT",
    "FixedScores",
    "FixedWorkError",
    "ModelSpec",
    "SCHEMA_VERSION",
    "config_name",
    "count_nms_inputs",
    "environment",
    "fixed_work_opts",
    "git_state",
    "latency_stats",
    "make_specs",
    "markdown_table",
    "measure_memory",
    "resolve_weights",
    "run_benchmark",
    "stage_chart",
    "synthetic_image",
    "write_reports",
    "zero_box_regression",
]
