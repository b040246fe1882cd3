"""Model analysis: speed/memory/FLOPs benchmarks at equal work and static model statistics.

* :mod:`.benchmark` -- :func:`run_benchmark` (``tools/benchmark.py``): latency by stage, peak memory,
  FLOPs, parameters and ratios to a baseline, for detectron2 configs and torchvision detectors.
* :mod:`.frontier` -- the speed-accuracy frontier (``tools/plot_frontier.py``): AP over seeds against latency.
* :mod:`.build` -- a config (or torchvision name) built for measurement: random weights unless
  given, optionally at fixed work; shared by the benchmark, its memory child and ``model_stats``.
* :mod:`.model_stats` -- parameters, fp32 weight size, FLOPs (fvcore; one multiply-add = one flop),
  activations, parameter tables (``tools/analyze_model.py``).
* :mod:`.stage_timer` -- forward-hook stage timing and work counting of two-stage detectors.
"""
from .benchmark import BenchmarkSettings, FixedWorkError, ModelSpec, make_specs, run_benchmark
from .model_stats import analyze_configs, count_parameters, summary_line, weights_size_mib
from .stage_timer import STAGES, DetectorParts, StageTimer

__all__ = [
    "BenchmarkSettings",
    "DetectorParts",
    "FixedWorkError",
    "ModelSpec",
    "STAGES",
    "StageTimer",
    "analyze_configs",
    "count_parameters",
    "make_specs",
    "run_benchmark",
    "summary_line",
    "weights_size_mib",
]
