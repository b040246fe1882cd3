"""Parity and speed of every runtime side by side (``tools/benchmark_deploy.py``).

One config and one eager checkpoint are exported to each runtime (:func:`export_model`), then every
runtime runs the same images of a registered data set through the same interface
(:func:`load_predictor`): eager fp32, TorchScript (traced), ONNX Runtime fp32 and ONNX Runtime
int8 (static QDQ, calibrated on training images). Per runtime: latency per image, COCO bbox/segm AP
through detectron2's ``COCOEvaluator``, the largest box difference to eager on matched
detections, the artifact's size; the deploy benchmark's targets are judged in :mod:`.benchmark_report`.

Protocol (the choices this benchmark makes):

* a latency is what a stopwatch around ``predictor([image])`` sees: pre-processing (resize),
  the model, post-processing (box scaling, mask pasting at image size); decoding the image file is
  outside (each image is read once and handed to every runtime);
* ``order="blocked"`` (default): each runtime runs over all images in turn (eager first), in the
  same process (keeping eager's outputs of every image for the comparisons), as a deployment runs
  one runtime; ``order="interleaved"``: each image runs through every runtime before the next
  image, the order rotating by one per image (A B C D, B C D A, ...). Interleaving spreads drifts
  of a shared machine over every runtime, but it also makes torch's and ONNX Runtime's thread pools
  wake each other up image after image, which slowed eager and TorchScript (not ONNX Runtime) by
  30-50 % on the 2-core development machine (RESULTS.md "Deploy"), so it is not the default;
* warm-up: the first ``warmup`` images run once through every runtime, untimed and not evaluated;
  then every image is timed and evaluated (so AP covers the whole set);
* threads: ``torch.set_num_threads(threads)`` for the process (eager, TorchScript, and the
  post-processing of every runtime) and ``intra_op_num_threads = threads`` for each ONNX Runtime
  session; the thread counts in effect are recorded;
* ``max_images`` takes the data set's first images; AP is computed on exactly those
  (``COCOEvaluator.evaluate(img_ids=...)``);
* the eager "file" is the checkpoint as given (``weights_mib`` adds its fp32 state dict size).
"""
import contextlib
import dataclasses
import io
import logging
import os
import time
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch

from .artifacts import CONFIG_NAME, detect_format
from .datasets import registered_dataset_dicts
from .export import EXPORT_FORMATS, INT8_NAME, compare_predictions, export_model, within_tolerance
from .runtimes import load_predictor

__all__ = [
    "ORDERS",
    "RUNTIMES",
    "DeployBenchmarkSettings",
    "check_runtimes",
    "dataset_dicts",
    "export_runtimes",
    "latency_record",
    "planned_files",
    "refuse_existing",
    "run_deploy_benchmark",
]

logger = logging.getLogger(__name__)

# Runtime names, in report order; "eager" is the reference of every comparison.
RUNTIMES = ("eager", "torchscript", "onnx", "onnx-int8")
ORDERS = ("interleaved", "blocked")
# The report files written in the output folder.
REPORT_JSON = "deploy_benchmark.json"
REPORT_MD = "deploy_benchmark.md"
# Model file of each exported runtime (written by export_model in the output folder).
ARTIFACT_FILES = {"torchscript": EXPORT_FORMATS["torchscript"], "onnx": EXPORT_FORMATS["onnx"], "onnx-int8": INT8_NAME}
MIB = 2.0 ** 20


@dataclasses.dataclass
class DeployBenchmarkSettings:
    """What to measure (see the module docstring for the protocol).

    Attributes:
        runtimes: names from :data:`RUNTIMES`; must include "eager".
        dataset: registered data set to time and evaluate (None: ``cfg.DATASETS.TEST[0]``).
        threads: CPU threads of every runtime.
        warmup: untimed images per runtime before the timed pass.
        max_images: evaluate the data set's first N images only (None: all).
        calibration_images: training images (``DATASETS.TRAIN[0]``) calibrating int8.
        num_check_images: images of export_model's own parity check.
        order: "interleaved" or "blocked".
        rounds: with order "blocked", timed passes over the images per runtime; round r starts with
            the r-th runtime (round 0, evaluated, with eager), so slow drifts of the machine spread
            over every runtime; latencies are pooled over the rounds.
        progress: tqdm bar over the images.
    """

    runtimes: Sequence[str] = RUNTIMES
    dataset: Optional[str] = None
    threads: int = 2
    warmup: int = 5
    max_images: Optional[int] = None
    calibration_images: int = 100
    num_check_images: int = 3
    order: str = "blocked"
    rounds: int = 3
    progress: bool = False


def check_runtimes(names) -> tuple:
    """``names`` as a tuple in :data:`RUNTIMES` order; ``ValueError`` naming an unknown or repeated
    runtime, or a list without the "eager" reference."""
    names = [str(n) for n in names]
    unknown = [n for n in names if n not in RUNTIMES]
    if unknown:
        raise ValueError(f"unknown runtime(s) {', '.join(map(repr, unknown))}; choose from {', '.join(RUNTIMES)}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"runtime(s) {', '.join(map(repr, repeated))} given more than once")
    if "eager" not in names:
        raise ValueError("the runtimes must include 'eager': it is the reference of the speed-ups, box differences "
                         "and AP differences")
    return tuple(n for n in RUNTIMES if n in names)


def _check_settings(s: DeployBenchmarkSettings):
    if s.order not in ORDERS:
        raise ValueError(f"order {s.order!r}: choose one of {', '.join(ORDERS)}")
    if int(s.threads) < 1:
        raise ValueError(f"threads {s.threads}: need at least 1")
    if int(s.warmup) < 0:
        raise ValueError(f"warmup {s.warmup}: need 0 or more images")
    if s.max_images is not None and int(s.max_images) < 1:
        raise ValueError(f"max_images {s.max_images}: need at least 1 image")
    if "onnx-int8" in s.runtimes and int(s.calibration_images) < 1:
        raise ValueError(f"calibration_images {s.calibration_images}: int8 needs at least 1 image")


def planned_files(output_dir, runtimes) -> Dict[str, str]:
    """Every file a run writes in ``output_dir``: ``{role: path}`` (model files, config.yaml, reports).
    An ONNX fp32 model is written for "onnx-int8" even without "onnx" (it is quantized from it)."""
    files = {}
    for name in runtimes:
        if name in ARTIFACT_FILES:
            files[name] = os.path.join(output_dir, ARTIFACT_FILES[name])
    if "onnx-int8" in runtimes:
        files["onnx"] = os.path.join(output_dir, ARTIFACT_FILES["onnx"])
    if len(files):
        files["config"] = os.path.join(output_dir, CONFIG_NAME)
    files["json"] = os.path.join(output_dir, REPORT_JSON)
    files["markdown"] = os.path.join(output_dir, REPORT_MD)
    return files


def refuse_existing(paths):
    """``FileExistsError`` naming every path of ``paths`` that exists."""
    existing = [p for p in paths if os.path.lexists(p)]
    if existing:
        raise FileExistsError(f"refusing to overwrite existing file(s): {', '.join(existing)}; nothing was written, "
                              "choose a new --output-dir")


def export_runtimes(cfg, output_dir, runtimes, settings, log=print):
    """Export ``cfg`` (weights ``cfg.MODEL.WEIGHTS``) for the exported runtimes of ``runtimes`` into
    ``output_dir``. Returns ``{runtime: {"path", "export_s", "export_check"}}`` where
    ``export_check`` is export_model's own check against eager (:class:`ExportedArtifact`)."""
    exported = {}
    jobs = []
    if "torchscript" in runtimes:
        jobs.append(("torchscript", False))
    if "onnx" in runtimes or "onnx-int8" in runtimes:
        jobs.append(("onnx", "onnx-int8" in runtimes))
    for fmt, int8 in jobs:
        t0 = time.perf_counter()
        artifacts = export_model(cfg, fmt, output_dir, int8=int8, calibration_images=settings.calibration_images,
                                 num_check_images=settings.num_check_images, threads=settings.threads, log=log)
        seconds = time.perf_counter() - t0
        for artifact in artifacts:
            name = "onnx-int8" if artifact.precision == "int8" else fmt
            exported[name] = {"path": artifact.path, "export_s": seconds, "export_check": artifact}
    return exported


def dataset_dicts(cfg, dataset, max_images=None):
    """The registered data set's dicts (:func:`registered_dataset_dicts`), its first ``max_images``
    if given, refused unless its metadata names the COCO annotation file COCOEvaluator reads."""
    from detectron2.data import MetadataCatalog

    dicts = registered_dataset_dicts(cfg, dataset)
    if not MetadataCatalog.get(dataset).get("json_file", None):
        raise ValueError(f"data set {dataset!r} has no COCO annotation file (metadata json_file), which "
                         "COCOEvaluator reads; register it with detectron2's register_coco_instances")
    return list(dicts[: int(max_images)] if max_images else dicts)


class _RuntimeRecord:
    """What one runtime accumulates over the timed pass."""

    def __init__(self, name, predictor, evaluator):
        self.name, self.predictor, self.evaluator = name, predictor, evaluator
        self.seconds = []
        self.detections = 0
        self.parity = []
        self.warmup_runs = 0

    def warm(self, image):
        self.predictor([image])
        self.warmup_runs += 1

    def run(self, image, evaluated=True):
        """Time one call; ``evaluated``: the pass whose outputs are evaluated (detections counted)."""
        t0 = time.perf_counter()
        out = self.predictor([image])[0]
        self.seconds.append(time.perf_counter() - t0)
        if evaluated:
            self.detections += len(out)
        return out


def _measure(records, dicts, settings, read):
    """Warm-up, then the timed and evaluated pass over ``dicts`` in ``settings.order``."""
    from tqdm import tqdm

    names = list(records)
    warm = [read(dicts[i % len(dicts)]) for i in range(int(settings.warmup))]

    def finish(d, outputs):
        inp = {"image_id": d["image_id"], "file_name": d["file_name"]}  # what COCOEvaluator.process reads
        for name, out in outputs.items():
            records[name].evaluator.process([inp], [{"instances": out}])
            if name != "eager":
                records[name].parity.append(compare_predictions([eager_out[d["image_id"]]], [out]))

    eager_out = {}
    bar = tqdm(total=len(dicts) * (len(names) * max(1, int(settings.rounds)) if settings.order == "blocked" else 1),
               unit="image",
               disable=not settings.progress)
    if settings.order == "interleaved":
        for image in warm:
            for name in names:
                records[name].warm(image)
        for i, d in enumerate(dicts):
            image = read(d)
            k = i % len(names)
            outputs = {name: records[name].run(image) for name in names[k:] + names[:k]}
            eager_out.clear()
            eager_out[d["image_id"]] = outputs["eager"]
            finish(d, outputs)
            bar.update(1)
    else:
        rounds = max(1, int(settings.rounds))
        for r in range(rounds):
            k = r % len(names)
            for name in names[k:] + names[:k]:  # round 0: eager first, its outputs are the reference
                for image in warm:
                    records[name].warm(image)
                for d in dicts:
                    out = records[name].run(read(d), evaluated=r == 0)
                    if r == 0:
                        if name == "eager":
                            eager_out[d["image_id"]] = out
                        finish(d, {name: out})
                    bar.update(1)
    bar.close()


def _parity_summary(per_image):
    """Per-image :func:`compare_predictions` results -> totals (``box_px``, ``score``: max over
    images; ``mask_iou``: the worst image's pooled mask IoU)."""
    keys = ("detections_eager", "detections_artifact", "unmatched")
    out = {k: int(sum(p[k] for p in per_image)) for k in keys}
    out["box_px"] = float(max((p["box_px"] for p in per_image), default=0.0))
    out["score"] = float(max((p["score"] for p in per_image), default=0.0))
    out["mask_iou"] = float(min((p["mask_iou"] for p in per_image), default=1.0))
    out["within_export_tolerance"] = bool(within_tolerance(out))
    return out


def latency_record(seconds):
    """Per-image seconds -> ``{"p50", "p90", "mean", "std", "min", "max", "n", "per_image"}`` in ms."""
    from ..analysis.benchmark.timing import latency_stats

    stats = latency_stats(seconds)
    out = {"p50": stats.pop("median"), "p90": stats.pop("p90"), "mean": stats.pop("mean")}
    out.update(stats)
    out["per_image"] = [round(s * 1000.0, 3) for s in seconds]
    return out


def _finite(x):
    return float(x) if x is not None and np.isfinite(x) else None


def _ap(results):
    return {task: {k: _finite(v) for k, v in metrics.items()} for task, metrics in results.items()}


def _threads_in_effect(predictor):
    session = getattr(predictor, "session", None)
    if session is not None:
        return {"onnxruntime_intra_op": session.get_session_options().intra_op_num_threads,
                "torch": torch.get_num_threads()}
    return {"torch": torch.get_num_threads()}


def run_deploy_benchmark(config_file, weights, output_dir, opts=(), settings=None,
                         log: Callable[[str], None] = print) -> Dict[str, object]:
    """Export, time and evaluate every runtime of ``settings`` and write the reports.

    Args:
        config_file: the config the checkpoint was trained with (path or ``light_rcnn://...``).
        weights: the eager checkpoint (.pth/.pkl).
        output_dir: created if needed; model files, ``config.yaml``, :data:`REPORT_JSON` and
            :data:`REPORT_MD` go there; any of them already present is refused before anything runs.
        opts: KEY VALUE config overrides (applied to every runtime; baked into the exports).
        settings: :class:`DeployBenchmarkSettings`.
    Returns:
        the JSON record (also written): ``runtimes`` (per runtime: ``latency_ms``, ``speedup_vs_eager``,
        ``ap``, ``ap_delta_vs_eager``, ``parity_vs_eager``, ``file_mib``, ...), ``targets``,
        ``settings``, ``environment``.
    """
    from detectron2.data.detection_utils import read_image
    from detectron2.evaluation import COCOEvaluator

    from ..analysis.model_stats import weights_size_mib
    from ..config import load_config
    from .benchmark_report import deploy_record, write_reports

    settings = settings or DeployBenchmarkSettings()
    settings = dataclasses.replace(settings, runtimes=check_runtimes(settings.runtimes))
    _check_settings(settings)
    opts = list(opts)
    if "MODEL.WEIGHTS" in opts[::2]:
        raise ValueError("MODEL.WEIGHTS in the KEY VALUE overrides: give the checkpoint as weights (--weights) only")
    fmt = detect_format(weights)
    if fmt != "eager":
        raise ValueError(f"weights {weights!r} is a {fmt} file: the benchmark exports from an eager checkpoint "
                         "(.pth/.pkl) and its config")
    files = planned_files(output_dir, settings.runtimes)
    refuse_existing(files.values())
    torch.set_num_threads(int(settings.threads))
    cfg = load_config(config_file, opts + ["MODEL.WEIGHTS", weights])
    dataset = settings.dataset or (cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else None)
    if not dataset:
        raise ValueError("no data set: pass one (--dataset) or set DATASETS.TEST in the config")
    dicts = dataset_dicts(cfg, dataset, settings.max_images)

    os.makedirs(output_dir, exist_ok=True)
    # export_model re-registers the built-in sets; their metadata carries the category-id mapping
    # COCOEvaluator reads from registration on (light_rcnn.data.builtin), so ``dicts`` stays valid.
    exported = export_runtimes(cfg, output_dir, settings.runtimes, settings, log=log)
    tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
    records = {}
    for name in settings.runtimes:
        path = weights if name == "eager" else exported[name]["path"]
        predictor = (load_predictor(weights, config_file, opts, threads=settings.threads) if name == "eager"
                     else load_predictor(path, threads=settings.threads))
        evaluator = COCOEvaluator(dataset, tasks=tasks, distributed=False, output_dir=None)
        evaluator.reset()
        records[name] = _RuntimeRecord(name, predictor, evaluator)
    torch.set_num_threads(int(settings.threads))
    load_avg_start = os.getloadavg()
    log(f"Timing {', '.join(records)} on {len(dicts)} images of {dataset} ({settings.order}, warm-up "
        f"{settings.warmup}, {settings.threads} threads)")
    _measure(records, dicts, settings, lambda d: read_image(d["file_name"], format="BGR"))
    load_avg_end = os.getloadavg()

    img_ids = [d["image_id"] for d in dicts]
    per_runtime = {}
    for name, rec in records.items():
        path = weights if name == "eager" else exported[name]["path"]
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' per-task printout; figures go to the reports
            results = rec.evaluator.evaluate(img_ids=img_ids)
        entry = {
            "format": rec.predictor.format,
            "precision": rec.predictor.precision,
            "path": os.path.abspath(path),
            "file_mib": os.path.getsize(path) / MIB,
            "threads": _threads_in_effect(rec.predictor),
            "latency_ms": latency_record(rec.seconds),
            "warmup_runs": rec.warmup_runs,
            "detections": rec.detections,
            "ap": _ap(results),
        }
        if name == "eager":
            entry["weights_mib"] = weights_size_mib(rec.predictor.model)
        else:
            check = exported[name]["export_check"]
            entry["parity_vs_eager"] = _parity_summary(rec.parity)
            entry["export_s"] = exported[name]["export_s"]
            entry["export_check"] = {"parity": dict(check.parity), "passed": check.passed}
        per_runtime[name] = entry
    record = deploy_record(per_runtime, cfg=cfg, config_file=config_file, weights=weights, opts=opts,
                           dataset=dataset, num_images=len(dicts), settings=dataclasses.asdict(settings),
                           load_average=[list(load_avg_start), list(load_avg_end)])
    write_reports(record, files["json"], files["markdown"])
    log(f"Wrote {files['json']} and {files['markdown']}")
    return record
