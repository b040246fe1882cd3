"""What the benchmark measures: the models (:class:`ModelSpec`) and every knob
(:class:`BenchmarkSettings`, the flags of ``tools/benchmark.py`` of the same names)."""
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from ..build import config_name


PRECISIONS = ("fp32", "fp16", "bf16")


class FixedWorkError(RuntimeError):
    """A model did not process the prescribed number of proposals / mask boxes, or the models of a
    fixed-work run did not feed their NMS the same number of boxes."""


@dataclass
class ModelSpec:
    """One model of the comparison.

    Attributes:
        kind: ``"detectron2"`` (a config file + ``KEY VALUE`` opts) or ``"torchvision"`` (a
            detection model name of ``torchvision.models.get_model``).
        name: label in the report.
        config_file: detectron2/light_rcnn YAML (``kind == "detectron2"``).
        opts: ``KEY VALUE`` overrides of this model only (applied after the global ones).
        torchvision_name: e.g. ``maskrcnn_resnet50_fpn`` (``kind == "torchvision"``).
        weights: local checkpoint of a torchvision model (a state dict, or ``{"model": sd}``).
    """

    kind: str
    name: str
    config_file: Optional[str] = None
    opts: List[str] = field(default_factory=list)
    torchvision_name: Optional[str] = None
    weights: Optional[str] = None


@dataclass
class BenchmarkSettings:
    """All knobs of :func:`run_benchmark` (``tools/benchmark.py`` flags of the same names)."""

    models: List[ModelSpec]
    global_opts: List[str] = field(default_factory=list)
    task: str = "inference"  # inference | train | data
    device: str = "cpu"
    image_size: Tuple[int, int] = (800, 1333)  # H, W
    warmup: int = 3
    iters: int = 20
    threads: Optional[int] = None  # torch.set_num_threads
    baseline: Optional[str] = None  # default: first model
    output_dir: Optional[str] = None
    dataset: Optional[str] = None  # registered data set: real-data mode / data task
    num_proposals: int = 300
    num_detections: int = 100
    # Fixed work: boxes ranked per feature level before the RPN NMS (PRE_NMS_TOPK_TEST of every
    # config; torchvision's rpn_pre_nms_top_n_test); None keeps each config's own.
    rpn_pre_nms_topk: Optional[int] = 6000
    # Fixed work: replace the RPN objectness and class scores by model-independent ones so the
    # same boxes enter every NMS (see nms_work.FixedScores); False keeps the models' own scores.
    control_scores: bool = True
    # Fixed work with control_scores: classes of each ROI whose score passes the threshold, so the
    # final NMS receives num_proposals x min(this, NUM_CLASSES) boxes.
    classes_per_roi: int = 12
    precision: str = "fp32"  # fp32 | fp16 | bf16 (torch.autocast around inference / train forward)
    batch_size: int = 2  # train task
    num_gt: int = 4  # train task: synthetic ground-truth instances per image
    # Train task: SGD learning rate. Random weights on random targets diverge at a config's full
    # BASE_LR within a few iterations; the cost of a step does not depend on the value.
    train_lr: float = 1e-4
    memory: str = "subprocess"  # subprocess | off
    flops: bool = True
    flops_images: int = 5  # dataset mode
    seed: int = 0
    cudnn_benchmark: Optional[bool] = None  # None: leave as is
    tf32: Optional[bool] = None  # None: leave as is
    strict_work: bool = True
    command_line: Optional[str] = None

    @property
    def autocast_dtype(self):
        """``torch.float16`` / ``torch.bfloat16`` for autocast, ``None`` for fp32."""
        import torch

        return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[self.precision]

    @property
    def fixed_work(self) -> bool:
        """Whether every model runs at the same fixed work (synthetic inference)."""
        return self.task == "inference" and not self.dataset


def _uniquify(names):
    seen, out = {}, []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def make_specs(config_entries, torchvision_models=(), torchvision_weights=(), names=None) -> List[ModelSpec]:
    """ModelSpecs from CLI-shaped input.

    Args:
        config_entries: list of ``[config_file, KEY, VALUE, ...]`` lists (one per ``--config-file``).
        torchvision_models: torchvision detection model names.
        torchvision_weights: ``NAME=PATH`` strings (or one bare ``PATH`` when there is one
            torchvision model).
        names: optional labels, in the order configs then torchvision models.
    """
    specs = []
    for entry in config_entries:
        entry = list(entry)
        cfg_file, opts = entry[0], entry[1:]
        if len(opts) % 2:
            raise ValueError(f"--config-file {cfg_file}: overrides must be KEY VALUE pairs, got {opts}")
        specs.append(ModelSpec("detectron2", config_name(cfg_file, opts), config_file=cfg_file, opts=opts))
    tv_weights = {}
    for w in torchvision_weights:
        if "=" in w:
            k, v = w.split("=", 1)
            tv_weights[k] = v
        elif len(torchvision_models) == 1:
            tv_weights[torchvision_models[0]] = w
        else:
            raise ValueError(f"--torchvision-weights '{w}': use NAME=PATH with several --torchvision models")
    for name in torchvision_models:
        specs.append(ModelSpec("torchvision", f"tv:{name}", torchvision_name=name, weights=tv_weights.get(name)))
    labels = _uniquify(list(names) if names else [s.name for s in specs])
    if len(labels) != len(specs):
        raise ValueError(f"--names gives {len(labels)} names for {len(specs)} models")
    for s, n in zip(specs, labels):
        s.name = n
    return specs


def parse_image_size(text: str):
    """``"800x1333"`` -> ``(800, 1333)``; the ``--image-size`` argument type of the tools."""
    import argparse

    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--image-size '{text}': expected HxW, e.g. 800x1333") from None
    return h, w
