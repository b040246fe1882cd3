"""Speed, memory, FLOPs and size of detectors compared at the same work (``tools/benchmark.py``).

Tasks
-----
``inference`` (default), in one of two modes:

* **fixed work** (default): one synthetic ``H x W`` image, batch size 1, random weights unless
  ``MODEL.WEIGHTS`` is given, and every model processes the same work: the RPN keeps exactly
  ``num_proposals`` proposals per image (``RPN.POST_NMS_TOPK_TEST = N``, ``RPN.NMS_THRESH = 1.0``
  which suppresses nothing because torchvision's NMS drops a box only when IoU > threshold,
  ``PRE_NMS_TOPK_TEST >= N``), and the second stage keeps exactly ``num_detections`` boxes that
  all reach the mask head (``ROI_HEADS.SCORE_THRESH_TEST = 0``, ``ROI_HEADS.NMS_THRESH_TEST = 1``,
  ``TEST.DETECTIONS_PER_IMAGE = M``). Hooks count the proposals, box ROIs, mask ROIs and
  detections of **every** forward; a model whose counts differ from (N, N, M, M) raises
  :class:`FixedWorkError` (so no figure is ever reported for unequal work). The same settings
  are applied to torchvision detectors through their constructor arguments.
* **dataset** (``dataset=NAME``): images of a registered data set through
  ``build_detection_test_loader`` (``num_workers=0``: loading is never timed and never competes
  for the CPU), each model with its own config's test settings and (trained) weights. Counts
  are recorded, not enforced. FLOPs are averaged over ``flops_images`` images.

``train``: training iterations (``model.train()``, forward, ``backward()``, SGD step from
detectron2's ``build_optimizer`` with ``SOLVER.BASE_LR = train_lr``) on synthetic images with
synthetic ground truth (boxes, classes, ``PolygonMasks`` or ``BitMasks`` following
``INPUT.MASK_FORMAT``). ``data``: images/s of
``build_detection_train_loader`` on a registered data set.

Measurement
-----------
Models are built once and measured interleaved (A B A B ...) so that drifts of the machine (turbo,
thermal, other processes) hit all of them alike. Each iteration runs, per model, one *clean* pass
(end-to-end latency; only cheap counting hooks, ``torch.cuda.synchronize()`` before and after) and
one *staged* pass (synchronizing timing hooks, see :mod:`.stage_timer`), alternately in either
order since the second of two back-to-back passes finds warmer caches. The stage means add up
exactly to the staged pass's mean; ``stage_sum_vs_end_to_end`` compares that with the clean mean
(hook overhead and noise), and ``stages_consistent`` says whether it is within 10%.

Peak memory is measured per model in a **fresh Python process** (``memory="subprocess"``): on CUDA
``torch.cuda.max_memory_allocated`` (weights + activations + workspaces of one forward); on the CPU
the process's peak resident set size (``VmHWM`` of ``/proc/self/status``, which unlike
``ru_maxrss`` is not inherited from the parent through fork/exec), reported absolute and as the
increase over the same process right after its imports (``model_peak_mib``). A process-wide high
water mark in the benchmarking process itself would only show the largest model measured so far.

Everything ends up in ``benchmark.json``, ``benchmark.md`` and ``benchmark_stages.png``.
"""
import datetime
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .model_stats import (
    count_parameters,
    detectron2_flop_analysis,
    flops_summary,
    generic_flop_analysis,
    weights_size_mib,
)
from .stage_timer import STAGES, DetectorParts, StageTimer

logger = logging.getLogger(__name__)

MIB = float(2 ** 20)
FLOPS_UNIT = "multiply-adds (fvcore counts one multiply-add as one flop)"
SCHEMA_VERSION = 1


class FixedWorkError(RuntimeError):
    """A model did not process the prescribed number of proposals / mask boxes."""


# ------------------------------------------------------------------------------------------
# What to measure
# ------------------------------------------------------------------------------------------
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


def config_name(config_file: str, opts: Sequence[str] = ()) -> str:
    """Report label of a config: its file name without extension, plus its overrides."""
    stem = os.path.splitext(os.path.basename(config_file))[0]
    if opts:
        stem += "[" + ",".join(f"{k.split('.')[-1]}={v}" for k, v in zip(opts[::2], opts[1::2])) + "]"
    return stem


def _uniquify(names):
    seen, out = {}, []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def make_specs(config_entries, torchvision_models=(), torchvision_weights=(), names=None):
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


def resolve_weights(cfg, opts: Sequence[str]) -> str:
    """The weights to load: ``MODEL.WEIGHTS`` only when given explicitly in ``opts``.

    The ``MODEL.WEIGHTS`` of a config file is the *training initialization* (detectron2's zoo
    configs name ImageNet weights on the network); benchmarks use random weights unless a file is
    named on the command line. A name that would be downloaded fails with a message saying which
    file to provide (see ``light_rcnn.engine.checkpoint.check_weights``).
    """
    keys = list(opts)[::2]
    if "MODEL.WEIGHTS" not in keys:
        return ""
    weights = cfg.MODEL.WEIGHTS
    from ..engine.checkpoint import check_weights

    check_weights(weights)
    return weights


def fixed_work_opts(cfg, num_proposals: int, num_detections: int) -> List[object]:
    """The overrides that make a detectron2 config process exactly ``num_proposals`` proposals and
    ``num_detections`` detections (all reaching the mask head) per image."""
    return [
        "MODEL.RPN.PRE_NMS_TOPK_TEST", max(int(cfg.MODEL.RPN.PRE_NMS_TOPK_TEST), num_proposals),
        "MODEL.RPN.POST_NMS_TOPK_TEST", num_proposals,
        "MODEL.RPN.NMS_THRESH", 1.0,
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0,
        "MODEL.ROI_HEADS.NMS_THRESH_TEST", 1.0,
        "TEST.DETECTIONS_PER_IMAGE", num_detections,
    ]


def zero_box_regression(model) -> int:
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


# ------------------------------------------------------------------------------------------
# Models under test
# ------------------------------------------------------------------------------------------
def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def synthetic_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Random ``H x W x 3`` uint8 image (BGR for detectron2; the same bytes as RGB for torchvision)."""
    rng = np.random.RandomState(seed)
    return rng.randint(0, 256, size=(height, width, 3), dtype=np.uint8)


def _random_polygons(h, w, n, rng):
    """n octagons inside random boxes: (boxes (n, 4) float32, polygons list[list[array]])."""
    boxes, polys = [], []
    for _ in range(n):
        bw = rng.uniform(0.15, 0.5) * w
        bh = rng.uniform(0.15, 0.5) * h
        x0 = rng.uniform(0, w - bw)
        y0 = rng.uniform(0, h - bh)
        cx, cy = x0 + bw / 2, y0 + bh / 2
        ang = np.arange(8) * (2 * np.pi / 8)
        poly = np.stack([cx + bw / 2 * np.cos(ang), cy + bh / 2 * np.sin(ang)], 1).reshape(-1)
        boxes.append([x0, y0, x0 + bw, y0 + bh])
        polys.append([poly.astype(np.float64)])
    return np.asarray(boxes, dtype=np.float32), polys


class Candidate:
    """A built model with everything the benchmark needs to feed, hook and describe it."""

    def __init__(self, spec: ModelSpec, settings: BenchmarkSettings, tv_sizes=None):
        self.spec = spec
        self.name = spec.name
        self.kind = spec.kind
        self.device = settings.device
        self.settings = settings
        self.info: Dict[str, object] = {"kind": spec.kind}
        self.cfg = None
        self.has_mask = False
        torch.manual_seed(settings.seed)
        if spec.kind == "detectron2":
            self._build_detectron2(spec, settings)
        elif spec.kind == "torchvision":
            self._build_torchvision(spec, settings, tv_sizes)
        else:
            raise ValueError(f"unknown model kind {spec.kind}")
        self.model.to(self.device)
        self.model.eval()

    # -- building ---------------------------------------------------------------------------
    def _build_detectron2(self, spec, settings):
        from detectron2.checkpoint import DetectionCheckpointer
        from detectron2.modeling import build_model

        from ..config import load_config

        opts = list(settings.global_opts) + list(spec.opts)
        cfg = load_config(spec.config_file, opts)
        weights = resolve_weights(cfg, opts)
        self.info.update(config_file=spec.config_file, opts=opts,
                         weights=weights or None,
                         weights_note=None if weights else
                         f"random init (config MODEL.WEIGHTS '{cfg.MODEL.WEIGHTS}' not loaded; pass MODEL.WEIGHTS to load a file)")
        overrides = []
        if settings.task == "inference" and not settings.dataset:
            overrides = fixed_work_opts(cfg, settings.num_proposals, settings.num_detections)
            cfg.merge_from_list(overrides)
        self.info["fixed_work_overrides"] = dict(zip(overrides[::2], overrides[1::2])) or None
        cfg.MODEL.WEIGHTS = ""
        cfg.MODEL.DEVICE = settings.device
        cfg.freeze()
        self.cfg = cfg
        model = build_model(cfg)
        if weights:
            DetectionCheckpointer(model).load(weights)
        elif overrides:
            self.info["zeroed_box_regression_layers"] = zero_box_regression(model)
        for attr in ("backbone", "proposal_generator", "roi_heads"):
            if getattr(model, attr, None) is None:
                raise TypeError(f"{type(model).__name__} has no '{attr}': the benchmark measures two-stage "
                                "detectors (GeneralizedRCNN-like models)")
        self.model = model
        self.info["meta_architecture"] = cfg.MODEL.META_ARCHITECTURE
        self.info["backbone"] = cfg.MODEL.BACKBONE.NAME
        self.info["roi_heads"] = cfg.MODEL.ROI_HEADS.NAME
        roi = model.roi_heads
        predictor = roi.box_predictor
        if isinstance(predictor, torch.nn.ModuleList):  # cascade: the last stage's predictor
            predictor = predictor[-1]
        mask_head = getattr(roi, "mask_head", None) if getattr(roi, "mask_on", True) else None
        self.has_mask = mask_head is not None
        self.parts = DetectorParts(
            model=model, backbone=model.backbone, rpn=model.proposal_generator, roi_heads=roi,
            bottom_up=getattr(model.backbone, "bottom_up", None), box_predictor=predictor,
            mask_head=mask_head,
            count_detections=lambda outs: [len(o["instances"]) for o in outs],
        )
        self.child_spec = {"kind": "detectron2", "cfg_yaml": cfg.dump()}

    def _build_torchvision(self, spec, settings, tv_sizes=None):
        import torchvision

        kwargs = {"weights": None, "weights_backbone": None}
        h, w = settings.image_size
        if settings.task != "data":
            kwargs.update(min_size=min(h, w), max_size=max(h, w))
        if settings.task == "inference" and not settings.dataset:
            kwargs.update(
                rpn_pre_nms_top_n_test=max(1000, settings.num_proposals),
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
        model = torchvision.models.get_model(spec.torchvision_name, **kwargs)
        if spec.weights:
            from ..engine.checkpoint import check_weights

            check_weights(spec.weights, key=f"--torchvision-weights {spec.torchvision_name}")
            sd = torch.load(spec.weights, map_location="cpu")
            if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
                sd = sd["model"]
            model.load_state_dict(sd)
        for attr in ("backbone", "rpn", "roi_heads", "transform"):
            if getattr(model, attr, None) is None:
                raise TypeError(f"torchvision model '{spec.torchvision_name}' has no '{attr}': "
                                "only two-stage detectors (Faster/Mask R-CNN) are supported")
        self.model = model
        ctor = {k: v for k, v in kwargs.items() if k not in ("weights", "weights_backbone")}
        self.info.update(torchvision_model=spec.torchvision_name, weights=spec.weights,
                         weights_note=None if spec.weights else "random init",
                         constructor_kwargs=ctor,
                         fixed_work_overrides={k: v for k, v in ctor.items() if k not in ("min_size", "max_size")} or None)
        roi = model.roi_heads
        self.has_mask = bool(roi.has_mask())
        self.parts = DetectorParts(
            model=model, backbone=model.backbone, rpn=model.rpn, roi_heads=roi,
            bottom_up=getattr(model.backbone, "body", None), box_predictor=roi.box_predictor,
            mask_head=roi.mask_head if self.has_mask else None,
            count_detections=lambda outs: [int(o["boxes"].shape[0]) for o in outs],
        )
        self.child_spec = {"kind": "torchvision", "name": spec.torchvision_name, "kwargs": ctor}

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
            boxes, polys = _random_polygons(h, w, num_gt, rng)
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

    def forward(self, inputs):
        return self.model(inputs)

    def train_forward(self, inputs):
        if self.kind == "detectron2":
            return self.model(inputs)
        images, targets = inputs
        return self.model(images, targets)

    # -- static figures ---------------------------------------------------------------------
    def flops(self, inputs) -> Dict[str, object]:
        if self.kind == "detectron2":  # both wrappers name the model "model"
            analysis = detectron2_flop_analysis(self.model, inputs)
        else:
            analysis = generic_flop_analysis(self.model, inputs[0])
        return analysis, flops_summary(analysis, module_prefix="model.")


# ------------------------------------------------------------------------------------------
# Environment
# ------------------------------------------------------------------------------------------
def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_state():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return {"commit": commit or None, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _version(mod):
    try:
        return __import__(mod).__version__
    except Exception:  # noqa: BLE001  (absent or broken package: reported as None)
        return None


def environment(device: str, command_line: Optional[str] = None) -> Dict[str, object]:
    """Versions, machine and numerics flags that the figures depend on."""
    env = {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command_line": command_line if command_line is not None else " ".join(map(shlex.quote, sys.argv)),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "detectron2": _version("detectron2"),
        "fvcore": _version("fvcore"),
        "numpy": np.__version__,
        "light_rcnn_git": _git_state(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "device": device,
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cudnn_enabled": torch.backends.cudnn.enabled,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "device_name": _cpu_model(),
    }
    if str(device).startswith("cuda"):
        idx = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(idx)
        env.update(device_name=torch.cuda.get_device_name(idx),
                   device_capability=f"{props.major}.{props.minor}",
                   device_memory_mib=props.total_memory / MIB)
    return env


# ------------------------------------------------------------------------------------------
# Peak memory in a fresh process
# ------------------------------------------------------------------------------------------
def _proc_status_mib(key):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024 / MIB
    except OSError:
        pass
    return None


def _memory_child(child_spec, device, task, image_size, settings_dict, threads):
    """Runs in a fresh Python process: build one model, run one pass, return peak memory."""
    import resource

    import light_rcnn  # noqa: F401  (registers components)

    if threads:
        torch.set_num_threads(threads)
    base_rss = _proc_status_mib("VmRSS")
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    settings = BenchmarkSettings(models=[], **settings_dict)
    spec = ModelSpec(kind=child_spec["kind"], name="child")
    if child_spec["kind"] == "detectron2":
        from detectron2.modeling import build_model

        from ..config import LightRCNNCfgNode

        cfg = LightRCNNCfgNode.load_cfg(child_spec["cfg_yaml"])
        torch.manual_seed(0)
        cand = Candidate.__new__(Candidate)
        cand.spec, cand.name, cand.kind, cand.device, cand.settings, cand.cfg = spec, "child", "detectron2", device, settings, cfg
        cand.model = build_model(cfg).to(device)
        if task == "inference" and not settings.dataset:
            zero_box_regression(cand.model)  # as the measured model at fixed work (random weights)
        roi = cand.model.roi_heads
        cand.has_mask = getattr(roi, "mask_head", None) is not None and getattr(roi, "mask_on", True)
    else:
        import torchvision

        cand = Candidate.__new__(Candidate)
        cand.spec, cand.name, cand.kind, cand.device, cand.settings, cand.cfg = spec, "child", "torchvision", device, settings, None
        cand.model = torchvision.models.get_model(child_spec["name"], weights=None, weights_backbone=None,
                                                  **child_spec["kwargs"]).to(device)
        cand.has_mask = bool(cand.model.roi_heads.has_mask())
    if task == "train":
        from detectron2.utils.events import EventStorage

        cand.model.train()
        inputs = cand.train_inputs(settings.batch_size, settings.num_gt, settings.seed)
        with EventStorage():
            losses = cand.train_forward(inputs)
            sum(losses.values()).backward()
    else:
        cand.model.eval()
        inputs = cand.eval_inputs_from_bgr(synthetic_image(*image_size, seed=settings.seed))
        with torch.no_grad():
            cand.forward(inputs)
    _sync(device)
    out = {"method": "fresh python process"}
    if str(device).startswith("cuda"):
        out.update(peak_allocated_mib=torch.cuda.max_memory_allocated() / MIB,
                   peak_reserved_mib=torch.cuda.max_memory_reserved() / MIB)
    hwm = _proc_status_mib("VmHWM")
    if hwm is None:  # not Linux: ru_maxrss (kB on Linux, bytes on macOS)
        scale = 1.0 if sys.platform == "darwin" else 1024.0
        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / MIB
    out.update(peak_rss_mib=hwm, baseline_rss_mib=base_rss,
               model_peak_mib=(hwm - base_rss) if base_rss is not None else None)
    return out


def _memory_main():
    """Entry point of the memory child process: JSON arguments on stdin, JSON result on stdout."""
    args = json.loads(sys.stdin.read())
    out = _memory_child(args["child_spec"], args["device"], args["task"], tuple(args["image_size"]),
                        args["settings"], args["threads"])
    sys.stdout.write("\n@@MEMORY@@" + json.dumps(out) + "\n")


def measure_memory(cand: Candidate, settings: BenchmarkSettings, image_size) -> Dict[str, object]:
    """Peak memory of one model in a fresh Python process (see module docstring).

    The child is a new interpreter (``sys.executable``), not a fork, so it inherits neither the
    parent's memory nor its high-water mark.
    """
    keep = ("task", "device", "image_size", "batch_size", "num_gt", "seed", "num_proposals", "num_detections")
    sdict = {k: getattr(settings, k) for k in keep}
    sdict["image_size"] = list(image_size)
    payload = {"child_spec": cand.child_spec, "device": settings.device, "task": settings.task,
               "image_size": list(image_size), "settings": sdict, "threads": settings.threads}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(
        [sys.executable, "-c", "from light_rcnn.analysis.benchmark import _memory_main; _memory_main()"],
        input=json.dumps(payload), capture_output=True, text=True, env=env,
    )
    marker = [line for line in proc.stdout.splitlines() if line.startswith("@@MEMORY@@")]
    if proc.returncode != 0 or not marker:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"memory child exited with {proc.returncode}: {' / '.join(tail)}")
    return json.loads(marker[-1][len("@@MEMORY@@"):])


# ------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------
def latency_stats(seconds: Sequence[float]) -> Dict[str, float]:
    """mean / median / p90 / std / min / max in milliseconds of per-image times in seconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    return {
        "mean": float(ms.mean()),
        "median": float(np.median(ms)),
        "p90": float(np.percentile(ms, 90)),
        "std": float(ms.std()),
        "min": float(ms.min()),
        "max": float(ms.max()),
        "n": int(ms.size),
    }


def _expected_counts(cand, settings):
    n, m = settings.num_proposals, settings.num_detections
    return {"proposals_per_image": [n], "box_rois": n, "mask_rois": m if cand.has_mask else 0, "detections": [m]}


def _as_count_record(counts):
    return {"proposals_per_image": list(counts["proposals"]), "box_rois": int(counts["box_rois"]),
            "mask_rois": int(counts["mask_rois"]), "detections": list(counts.get("detections", []))}


class _Runner:
    """State of one model during the interleaved loop."""

    def __init__(self, cand: Candidate):
        self.cand = cand
        self.timer = StageTimer(cand.parts, cand.device)
        self.clean, self.staged = [], []
        self.counts = []
        self.extra = {}


def _eval_pass(runner, inputs, staged):
    cand = runner.cand
    runner.timer.timing(staged)
    _sync(cand.device)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = cand.forward(inputs)
    _sync(cand.device)
    dt = time.perf_counter() - t0
    runner.timer.record_detections(out)
    runner.timer.timing(False)
    del out
    return dt, _as_count_record(runner.timer.last_counts), (dict(runner.timer.last_stages) if staged else None)


def _check_work(cand, counts, settings):
    expected = _expected_counts(cand, settings)
    if counts != expected:
        raise FixedWorkError(
            f"{cand.name}: fixed work not met: processed {counts}, expected {expected} "
            f"(RPN POST_NMS_TOPK_TEST={settings.num_proposals} with NMS disabled and "
            f"DETECTIONS_PER_IMAGE={settings.num_detections} with score threshold 0 and per-class NMS "
            "disabled). A model that filters proposals or detections in its own way cannot be compared "
            "at fixed work; pass strict_work=False (--allow-unequal-work) to record it anyway."
        )


def _interleaved_inference(runners, settings, get_inputs, fixed):
    """Warm-up then ``iters`` rounds of (clean, staged) passes, model after model."""
    failed = {}

    def run_round(record, order):
        for r in runners:
            if r.cand.name in failed:
                continue
            try:
                inputs = get_inputs(r)
                for staged in order:
                    dt, counts, stages = _eval_pass(r, inputs, staged)
                    if fixed:
                        if settings.strict_work:
                            _check_work(r.cand, counts, settings)
                        elif counts != _expected_counts(r.cand, settings):
                            r.extra["work_mismatch"] = counts
                    if record:
                        (r.staged if staged else r.clean).append(stages if staged else dt)
                        r.counts.append(counts)
            except FixedWorkError:
                raise
            except Exception as e:  # a model that crashes is reported, the others go on
                logger.exception("%s failed while running", r.cand.name)
                failed[r.cand.name] = ("run", f"{type(e).__name__}: {e}")

    # The second pass of a pair finds warmer caches; alternate which one comes first.
    for i in range(settings.warmup):
        run_round(False, (False, True) if i % 2 == 0 else (True, False))
    for i in range(settings.iters):
        run_round(True, (False, True) if i % 2 == 0 else (True, False))
    return failed


def _summarize_inference(r: _Runner, settings):
    rec = {}
    lat = latency_stats(r.clean)
    rec["latency_ms"] = lat
    rec["images_per_s"] = 1000.0 / lat["mean"]
    stage_ms = {s: 1000.0 * float(np.mean([st[s] for st in r.staged])) for s in STAGES}
    rec["stages_ms"] = stage_ms
    rec["preprocess_ms"] = 1000.0 * float(np.mean([st["preprocess"] for st in r.staged]))
    rec["staged_latency_ms"] = latency_stats([st["total"] for st in r.staged])
    rec["stage_sum_ms"] = float(sum(stage_ms.values()))
    # Paired per iteration (the staged pass runs next to the clean pass of the same model), median
    # over iterations: robust to the odd slow pass of a busy machine.
    paired = [sum(st[s] for s in STAGES) / c for st, c in zip(r.staged, r.clean)]
    rec["stage_sum_vs_end_to_end"] = float(np.median(paired))
    rec["stages_consistent"] = bool(abs(rec["stage_sum_vs_end_to_end"] - 1.0) <= 0.10)
    if not rec["stages_consistent"]:
        logger.warning("%s: staged passes take %.2fx the clean passes (more than 10%% apart: noisy machine "
                       "or heavy hook overhead)", r.cand.name, rec["stage_sum_vs_end_to_end"])
    c = r.counts
    rec["counts"] = {
        "proposals_per_image": float(np.mean([np.mean(x["proposals_per_image"]) for x in c])),
        "box_rois": float(np.mean([x["box_rois"] for x in c])),
        "mask_rois": float(np.mean([x["mask_rois"] for x in c])),
        "detections_per_image": float(np.mean([np.mean(x["detections"]) if x["detections"] else 0 for x in c])),
        "identical_every_pass": all(x == c[0] for x in c),
    }
    return rec


def _train_round(runners, settings, inputs_by_name, failed, record):
    from detectron2.utils.events import EventStorage

    for r in runners:
        if r.cand.name in failed:
            continue
        cand = r.cand
        try:
            inputs = inputs_by_name[cand.name]
            opt = r.extra["optimizer"]
            _sync(cand.device)
            t0 = time.perf_counter()
            with EventStorage(r.extra.setdefault("iter", 0)):
                losses = cand.train_forward(inputs)
            loss = sum(losses.values())
            _sync(cand.device)
            t1 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            _sync(cand.device)
            t2 = time.perf_counter()
            opt.step()
            _sync(cand.device)
            t3 = time.perf_counter()
            r.extra["iter"] += 1
            if not torch.isfinite(loss).item():
                raise FloatingPointError(f"loss is {loss.item()} (random init + synthetic data diverged)")
            counts = _as_count_record(r.timer.last_counts)
            if record:
                r.clean.append(t3 - t0)
                r.staged.append({"forward": t1 - t0, "backward": t2 - t1, "optimizer": t3 - t2})
                r.counts.append(counts)
        except Exception as e:
            logger.exception("%s failed while training", cand.name)
            failed[cand.name] = ("run", f"{type(e).__name__}: {e}")


def _summarize_train(r: _Runner, settings):
    lat = latency_stats(r.clean)
    stages = {k: 1000.0 * float(np.mean([s[k] for s in r.staged])) for k in ("forward", "backward", "optimizer")}
    c = r.counts
    return {
        "iter_ms": lat,
        "iters_per_s": 1000.0 / lat["mean"],
        "images_per_s": settings.batch_size * 1000.0 / lat["mean"],
        "stages_ms": stages,
        "stage_sum_ms": float(sum(stages.values())),
        "counts": {
            "proposals_per_image": float(np.mean([np.mean(x["proposals_per_image"]) for x in c])),
            "box_rois": float(np.mean([x["box_rois"] for x in c])),
            "mask_rois": float(np.mean([x["mask_rois"] for x in c])),
        },
    }


# ------------------------------------------------------------------------------------------
# Data loader task
# ------------------------------------------------------------------------------------------
def _measure_loader(spec: ModelSpec, settings: BenchmarkSettings):
    from detectron2.data import build_detection_train_loader

    from ..config import load_config

    opts = list(settings.global_opts) + list(spec.opts)
    cfg = load_config(spec.config_file, opts)
    cfg.DATASETS.TRAIN = (settings.dataset,)
    cfg.MODEL.DEVICE = settings.device
    cfg.freeze()
    loader = build_detection_train_loader(cfg)
    it = iter(loader)
    for _ in range(settings.warmup):
        next(it)
    times, images = [], 0
    t_prev = time.perf_counter()
    for _ in range(settings.iters):
        batch = next(it)
        t = time.perf_counter()
        times.append(t - t_prev)
        images += len(batch)
        t_prev = t
    lat = latency_stats(times)
    total = float(np.sum(times))
    return {
        "config_file": spec.config_file, "opts": opts,
        "batch_ms": lat, "images_per_s": images / total, "batches_per_s": len(times) / total,
        "batch_size": cfg.SOLVER.IMS_PER_BATCH, "num_workers": cfg.DATALOADER.NUM_WORKERS,
        "images": images,
    }


# ------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------
def _apply_numerics(settings):
    if settings.threads:
        torch.set_num_threads(settings.threads)
    if settings.cudnn_benchmark is not None:
        torch.backends.cudnn.benchmark = bool(settings.cudnn_benchmark)
    if settings.tf32 is not None:
        torch.backends.cuda.matmul.allow_tf32 = bool(settings.tf32)
        torch.backends.cudnn.allow_tf32 = bool(settings.tf32)


def _failure(spec, stage, error):
    return {"name": spec.name, "kind": spec.kind, "config_file": spec.config_file,
            "torchvision_model": spec.torchvision_name, "status": "failed", "error_stage": stage, "error": error}


def _add_ratios(results, baseline):
    base = next((m for m in results["models"] if m["name"] == baseline and m["status"] == "ok"), None)
    results["baseline"] = baseline
    if base is None:
        results["baseline_note"] = f"baseline '{baseline}' did not run: no ratios"
        return

    def metric(m, key):
        if key == "latency":
            v = m.get("latency_ms") or m.get("iter_ms") or m.get("batch_ms")
            return v["mean"] if v else None
        if key == "flops":
            return (m.get("flops") or {}).get("total")
        if key == "params":
            return m.get("params")
        return None

    for m in results["models"]:
        if m["status"] != "ok":
            continue
        ratios = {}
        for key in ("latency", "flops", "params"):
            a, b = metric(m, key), metric(base, key)
            ratios[key] = (a / b) if (a is not None and b) else None
        ratios["speedup"] = (1.0 / ratios["latency"]) if ratios.get("latency") else None
        m["ratio_to_baseline"] = ratios


def run_benchmark(settings: BenchmarkSettings) -> Dict[str, object]:
    """Measure every model of ``settings`` and write the report files (when ``output_dir``).

    Returns the results dict that is written to ``benchmark.json`` (schema: see
    :func:`write_reports` and the README of ``tools/benchmark.py``).

    Raises:
        FixedWorkError: in fixed-work mode, a model did not process the prescribed work.
        FileNotFoundError: ``MODEL.WEIGHTS`` would be downloaded or does not exist.
    """
    if settings.task not in ("inference", "train", "data"):
        raise ValueError(f"unknown task '{settings.task}'")
    if settings.task == "data" and not settings.dataset:
        raise ValueError("task 'data' needs a registered data set (dataset=NAME)")
    if str(settings.device).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device '{settings.device}' requested but CUDA is not available")
    if not settings.models:
        raise ValueError("no model to benchmark")
    if settings.iters < 1:
        raise ValueError("iters must be >= 1")
    _apply_numerics(settings)
    # Weights that would be downloaded fail before anything is measured.
    from ..config import load_config

    for spec in settings.models:
        if spec.kind == "detectron2":
            opts = list(settings.global_opts) + list(spec.opts)
            try:
                cfg = load_config(spec.config_file, opts)
            except Exception:  # noqa: BLE001  (reported as a build failure below)
                continue
            resolve_weights(cfg, opts)
        elif spec.weights:
            from ..engine.checkpoint import check_weights

            check_weights(spec.weights, key=f"--torchvision-weights {spec.torchvision_name}")

    fixed = settings.task == "inference" and not settings.dataset
    h, w = settings.image_size
    sdict = asdict(settings)
    sdict.pop("models")
    sdict["image_size"] = f"{h}x{w}"
    results = {
        "schema_version": SCHEMA_VERSION,
        "task": settings.task,
        "mode": ("fixed_work" if fixed else "dataset") if settings.task == "inference" else settings.task,
        "settings": sdict,
        "environment": environment(settings.device, settings.command_line),
        "flops_unit": FLOPS_UNIT,
        "memory_method": ("peak in a fresh Python process per model: CUDA max_memory_allocated; CPU VmHWM "
                          "(model_peak_mib = VmHWM - RSS after imports)") if settings.memory == "subprocess" else "off",
        "stage_definitions": {
            "backbone": "bottom-up network (backbone.bottom_up / torchvision backbone.body), or whole backbone",
            "neck": "backbone minus bottom-up (FPN / large-kernel neck); 0 without bottom_up",
            "rpn": "proposal generator forward",
            "box_head": "ROI heads until the first call after the box predictor (pooling, box head, predictor, box inference/NMS)",
            "mask_head": "rest of ROI heads (mask pooling or shared res5 on detections, mask head, mask inference)",
            "postprocess": "remainder of the forward: preprocess (normalize, pad; also reported as preprocess_ms) "
                           "+ postprocess (box rescale, mask paste) + glue",
        },
        "models": [],
    }
    if fixed:
        results["fixed_work"] = {"proposals_per_image": settings.num_proposals,
                                 "mask_boxes_per_image": settings.num_detections,
                                 "enforced": settings.strict_work}

    if settings.task == "data":
        for spec in settings.models:
            if spec.kind != "detectron2":
                results["models"].append(_failure(spec, "build", "task 'data' measures detectron2 data loaders only"))
                continue
            try:
                rec = _measure_loader(spec, settings)
                results["models"].append({"name": spec.name, "kind": spec.kind, "status": "ok", **rec})
            except Exception as e:
                logger.exception("data loader of %s failed", spec.name)
                results["models"].append(_failure(spec, "run", f"{type(e).__name__}: {e}"))
        _add_ratios(results, settings.baseline or settings.models[0].name)
        if settings.output_dir:
            write_reports(results, settings.output_dir)
        return results

    # Build every model; a failure is recorded and the others go on.
    runners, records = [], {}
    tv_sizes = None
    if settings.dataset:
        for spec in settings.models:
            if spec.kind == "detectron2":
                try:
                    c = load_config(spec.config_file, list(settings.global_opts) + list(spec.opts))
                    tv_sizes = (int(c.INPUT.MIN_SIZE_TEST), int(c.INPUT.MAX_SIZE_TEST))
                    break
                except Exception:  # noqa: BLE001  (reported when that model is built)
                    continue
    for spec in settings.models:
        try:
            cand = Candidate(spec, settings, tv_sizes)
        except Exception as e:
            logger.error("%s failed to build: %s: %s", spec.name, type(e).__name__, e)
            records[spec.name] = _failure(spec, "build", f"{type(e).__name__}: {e}")
            continue
        rec = {"name": spec.name, "status": "ok", **cand.info, "mask_on": cand.has_mask}
        rec["params"] = count_parameters(cand.model)["total"]
        rec["trainable_params"] = count_parameters(cand.model)["trainable"]
        rec["weights_mib"] = weights_size_mib(cand.model)
        records[spec.name] = rec
        runners.append(_Runner(cand))

    # Inputs.
    loaders = {}
    if settings.task == "inference" and settings.dataset:
        from detectron2.config import get_cfg
        from detectron2.data import build_detection_test_loader

        d2_cfg = next((r.cand.cfg for r in runners if r.cand.kind == "detectron2"), None) or get_cfg()
        for r in runners:
            cfg = r.cand.cfg if r.cand.kind == "detectron2" else d2_cfg
            loaders[r.cand.name] = (cfg, build_detection_test_loader(cfg, settings.dataset, num_workers=0))
        iters = {}

        def next_dict(r):
            name = r.cand.name
            for _ in range(2):
                if iters.get(name) is None:
                    iters[name] = iter(loaders[name][1])
                try:
                    return next(iters[name])[0]
                except StopIteration:  # start the data set again
                    iters[name] = None
            raise RuntimeError(f"data set '{settings.dataset}' is empty")

        def get_inputs(r):
            inputs = r.cand.eval_inputs_from_d2(next_dict(r))
            img = inputs[0]["image"] if isinstance(inputs[0], dict) else inputs[0]
            r.extra.setdefault("first_input_hw", tuple(img.shape[-2:]))
            return inputs
    else:
        image = synthetic_image(h, w, settings.seed)
        fixed_inputs = {r.cand.name: r.cand.eval_inputs_from_bgr(image) for r in runners}

        def get_inputs(r):
            return fixed_inputs[r.cand.name]

    # FLOPs (before timing: tracing runs the model once).
    if settings.flops and settings.task in ("inference", "train"):
        for r in runners:
            try:
                if settings.task == "inference" and settings.dataset:
                    from .model_stats import average_flops

                    analyses = []
                    for _, d in zip(range(settings.flops_images), loaders[r.cand.name][1]):
                        analyses.append(r.cand.flops(r.cand.eval_inputs_from_d2(d[0]))[0])
                    fl = average_flops(analyses)
                else:
                    inputs = r.cand.eval_inputs_from_bgr(synthetic_image(h, w, settings.seed))
                    fl = r.cand.flops(inputs)[1]
                    fl["input"] = f"{h}x{w}, inference" + (
                        f", {settings.num_proposals} proposals, {settings.num_detections} detections" if fixed
                        else " at the config's own test settings")
                fl["unit"] = FLOPS_UNIT
                records[r.cand.name]["flops"] = fl
            except Exception as e:
                logger.exception("FLOP count of %s failed", r.cand.name)
                records[r.cand.name]["flops"] = {"total": None, "error": f"{type(e).__name__}: {e}"}

    # Timing.
    failed = {}
    if settings.task == "inference":
        failed = _interleaved_inference(runners, settings, get_inputs, fixed)
    else:
        inputs_by_name = {}
        for r in runners:
            r.cand.model.train()
            if r.cand.kind == "detectron2":
                from detectron2.solver import build_optimizer

                opt_cfg = r.cand.cfg.clone()
                opt_cfg.defrost()
                opt_cfg.SOLVER.BASE_LR = settings.train_lr
                r.extra["optimizer"] = build_optimizer(opt_cfg, r.cand.model)
            else:
                params = [p for p in r.cand.model.parameters() if p.requires_grad]
                r.extra["optimizer"] = torch.optim.SGD(params, lr=settings.train_lr, momentum=0.9, weight_decay=1e-4)
            inputs_by_name[r.cand.name] = r.cand.train_inputs(settings.batch_size, settings.num_gt, settings.seed)
        for _ in range(settings.warmup):
            _train_round(runners, settings, inputs_by_name, failed, False)
        for _ in range(settings.iters):
            _train_round(runners, settings, inputs_by_name, failed, True)

    for r in runners:
        r.timer.remove()
        rec = records[r.cand.name]
        if r.cand.name in failed:
            stage, err = failed[r.cand.name]
            rec.update(status="failed", error_stage=stage, error=err)
            continue
        rec.update(_summarize_inference(r, settings) if settings.task == "inference" else _summarize_train(r, settings))
        if "work_mismatch" in r.extra:
            rec["work_mismatch"] = r.extra["work_mismatch"]
        if fixed:
            rec["work_verified"] = settings.strict_work or "work_mismatch" not in rec

    if fixed:
        ok = [records[r.cand.name] for r in runners if records[r.cand.name]["status"] == "ok"]
        results["fixed_work"]["verified"] = bool(ok) and all(m.get("work_verified") for m in ok)

    # Memory, in fresh processes, after timing (so spawning never disturbs the timed loop).
    if settings.memory == "subprocess":
        for r in runners:
            rec = records[r.cand.name]
            if rec["status"] != "ok":
                continue
            size = settings.image_size
            if settings.dataset and settings.task == "inference":
                # the child cannot see data sets registered in this process: a synthetic image of
                # the size of the first data set image (after the test mapper) stands in
                size = r.extra.get("first_input_hw", size)
            try:
                rec["memory"] = measure_memory(r.cand, settings, size)
                rec["memory"]["input"] = f"{size[0]}x{size[1]} synthetic"
            except Exception as e:
                logger.exception("memory measurement of %s failed", r.cand.name)
                rec["memory"] = {"error": f"{type(e).__name__}: {e}"}
    results["models"] = [records[s.name] for s in settings.models]
    _add_ratios(results, settings.baseline or settings.models[0].name)
    if settings.baseline and settings.baseline not in records:
        raise ValueError(f"--baseline '{settings.baseline}' is none of {list(records)}")
    for r in runners:
        del r.cand.model
    if settings.output_dir:
        write_reports(results, settings.output_dir)
    return results


# ------------------------------------------------------------------------------------------
# Reports
# ------------------------------------------------------------------------------------------
def _fmt(x, nd=1):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def markdown_table(results) -> str:
    """The results as a Markdown document (machine, command, one row per model)."""
    env = results["environment"]
    s = results["settings"]
    lines = [
        f"# Benchmark ({results['task']}, {results['mode']})",
        "",
        f"- command: `{env['command_line']}`",
        f"- machine: {env['device_name']} ({env['device']}), torch {env['torch']}, detectron2 {env['detectron2']}, "
        f"torchvision {env['torchvision']}, python {env['python']}, threads {env['torch_num_threads']}, "
        f"cudnn.benchmark {env['cudnn_benchmark']}, TF32 matmul/cudnn {env['tf32_matmul']}/{env['tf32_cudnn']}",
        f"- {env['timestamp']}; image {s['image_size']}, warm-up {s['warmup']}, iterations {s['iters']}; "
        f"FLOPs = {results['flops_unit']}",
    ]
    if "fixed_work" in results:
        fw = results["fixed_work"]
        lines.append(f"- fixed work: {fw['proposals_per_image']} proposals and {fw['mask_boxes_per_image']} "
                     f"mask boxes per image, verified on every pass: {fw.get('verified')}")
    lines.append(f"- baseline: {results['baseline']}")
    lines.append("")
    ok = [m for m in results["models"] if m["status"] == "ok"]
    failed = [m for m in results["models"] if m["status"] != "ok"]
    if results["task"] == "data":
        lines += ["| model | images/s | ms/batch mean | median | p90 | batch | workers |", "|---|---|---|---|---|---|---|"]
        for m in ok:
            b = m["batch_ms"]
            lines.append(f"| {m['name']} | {_fmt(m['images_per_s'])} | {_fmt(b['mean'])} | {_fmt(b['median'])} | "
                         f"{_fmt(b['p90'])} | {m['batch_size']} | {m['num_workers']} |")
    elif results["task"] == "train":
        lines += ["| model | ms/iter mean | median | p90 | iters/s | images/s | forward | backward | optimizer | "
                  "GMACs (inference) | params (M) | weights MiB | peak mem MiB | x latency |",
                  "|---|" + "---|" * 13]
        for m in ok:
            L, st, r = m["iter_ms"], m["stages_ms"], m.get("ratio_to_baseline") or {}
            lines.append(
                f"| {m['name']} | {_fmt(L['mean'])} | {_fmt(L['median'])} | {_fmt(L['p90'])} | {_fmt(m['iters_per_s'], 2)} | "
                f"{_fmt(m['images_per_s'], 2)} | {_fmt(st['forward'])} | {_fmt(st['backward'])} | {_fmt(st['optimizer'])} | "
                f"{_gmacs(m)} | {_fmt(m['params'] / 1e6, 2)} | {_fmt(m['weights_mib'])} | {_mem(m)} | {_fmt(r.get('latency'), 2)} |")
    else:
        lines += ["| model | ms/img mean | median | p90 | img/s | " + " | ".join(STAGES) +
                  " | GMACs | params (M) | weights MiB | peak mem MiB | x latency | x FLOPs | x params | proposals | mask boxes |",
                  "|---|" + "---|" * (4 + len(STAGES) + 10)]
        for m in ok:
            L, st, r, c = m["latency_ms"], m["stages_ms"], m.get("ratio_to_baseline") or {}, m["counts"]
            lines.append(
                f"| {m['name']} | {_fmt(L['mean'])} | {_fmt(L['median'])} | {_fmt(L['p90'])} | {_fmt(m['images_per_s'], 2)} | "
                + " | ".join(_fmt(st[s]) for s in STAGES)
                + f" | {_gmacs(m)} | {_fmt(m['params'] / 1e6, 2)} | {_fmt(m['weights_mib'])} | {_mem(m)} | "
                f"{_fmt(r.get('latency'), 2)} | {_fmt(r.get('flops'), 2)} | {_fmt(r.get('params'), 2)} | "
                f"{_fmt(c['proposals_per_image'], 0)} | {_fmt(c['mask_rois'], 0)} |")
        lines += ["", "Stages in ms (means of the staged passes; they add up to the staged total). "
                  "`postprocess` includes preprocessing (normalize/pad) and mask pasting."]
    if failed:
        lines += ["", "Failed:", "", "| model | stage | error |", "|---|---|---|"]
        for m in failed:
            err = str(m["error"]).replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {m['name']} | {m.get('error_stage')} | {err} |")
    return "\n".join(lines) + "\n"


def _gmacs(m):
    f = (m.get("flops") or {}).get("total")
    return _fmt(f / 1e9, 2) if f else "-"


def _mem(m):
    mem = m.get("memory") or {}
    v = mem.get("peak_allocated_mib", mem.get("model_peak_mib"))
    return _fmt(v) if v is not None else "-"


def stage_chart(results, path):
    """Stacked horizontal bars of the per-stage latency of every model that ran (PNG, Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ok = [m for m in results["models"] if m["status"] == "ok" and m.get("stages_ms")]
    stages = list(ok[0]["stages_ms"]) if ok else list(STAGES)
    fig = Figure(figsize=(9, 1.2 + 0.6 * max(len(ok), 1)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    names = [m["name"] for m in ok]
    left = np.zeros(len(ok))
    colors = ["#4e79a7", "#59a14f", "#f28e2b", "#e15759", "#b07aa1", "#9c755f", "#76b7b2"]
    for i, s in enumerate(stages):
        vals = np.array([m["stages_ms"][s] for m in ok])
        ax.barh(names, vals, left=left, label=s, color=colors[i % len(colors)])
        left += vals
    for y, m in enumerate(ok):
        lat = (m.get("latency_ms") or m.get("iter_ms"))["mean"]
        ax.text(left[y], y, f"  end-to-end {lat:.1f} ms", va="center", fontsize=8)
    ax.invert_yaxis()
    env = results["environment"]
    unit = "ms per iteration" if results["task"] == "train" else "ms per image"
    ax.set_xlabel(f"{unit} ({env['device_name']}, {results['settings']['image_size']}, "
                  f"{env['torch_num_threads']} threads)")
    ax.set_xlim(0, max(left.max() if len(left) else 1.0, 1e-3) * 1.2)
    failed = [m["name"] for m in results["models"] if m["status"] != "ok"]
    ax.set_title(f"Latency by stage ({results['mode']})" + (f"; failed: {', '.join(failed)}" if failed else ""),
                 fontsize=10)
    ax.legend(fontsize=8, ncol=min(len(stages), 6), loc="lower center", bbox_to_anchor=(0.5, 1.08), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_reports(results, output_dir) -> Dict[str, str]:
    """Write ``benchmark.json``, ``benchmark.md`` and (not for the data task)
    ``benchmark_stages.png`` into ``output_dir``; returns their paths."""
    os.makedirs(output_dir, exist_ok=True)
    paths = {"json": os.path.join(output_dir, "benchmark.json"), "markdown": os.path.join(output_dir, "benchmark.md")}
    with open(paths["json"], "w") as f:
        json.dump(results, f, indent=2, default=str)
    with open(paths["markdown"], "w") as f:
        f.write(markdown_table(results))
    if results["task"] != "data":
        paths["png"] = os.path.join(output_dir, "benchmark_stages.png")
        stage_chart(results, paths["png"])
    results.setdefault("files", paths)
    logger.info("wrote %s", ", ".join(paths.values()))
    return paths


__all__ = [
    "BenchmarkSettings",
    "Candidate",
    "FixedWorkError",
    "ModelSpec",
    "environment",
    "fixed_work_opts",
    "latency_stats",
    "make_specs",
    "markdown_table",
    "resolve_weights",
    "run_benchmark",
    "stage_chart",
    "write_reports",
]
