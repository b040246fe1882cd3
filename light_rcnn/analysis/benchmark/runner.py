"""``run_benchmark``: build every model, count FLOPs, time them interleaved, measure memory in fresh
processes, compute ratios to a baseline and write the reports."""
import logging
from dataclasses import asdict
from typing import Dict

import torch

from ..model_stats import average_flops, count_parameters, weights_size_mib
from .candidate import Candidate
from .environment import apply_numerics, environment
from .inputs import synthetic_image
from .loader import measure_loader
from .memory import measure_memory
from .report import write_reports
from .specs import PRECISIONS, BenchmarkSettings
from .timing import (Runner, interleaved_inference, summarize_inference, summarize_train, train_round,
                     verify_equal_work)

logger = logging.getLogger(__name__)

FLOPS_UNIT = "multiply-adds (fvcore counts one multiply-add as one flop)"
SCHEMA_VERSION = 1
STAGE_DEFINITIONS = {
    "backbone": "bottom-up network (backbone.bottom_up / torchvision backbone.body), or whole backbone",
    "neck": "backbone minus bottom-up (FPN / large-kernel neck); 0 without bottom_up",
    "rpn": "proposal generator forward",
    "box_head": "ROI heads until the first call after the box predictor (pooling, box head, predictor, box inference/NMS)",
    "mask_head": "rest of ROI heads (mask pooling or shared res5 on detections, mask head, mask inference)",
    "postprocess": "remainder of the forward: preprocess (normalize, pad; also reported as preprocess_ms) "
                   "+ postprocess (box rescale, mask paste) + glue",
}


def _validate(settings: BenchmarkSettings) -> None:
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
    if settings.classes_per_roi < 1:
        raise ValueError("classes_per_roi must be >= 1")
    if settings.rpn_pre_nms_topk is not None and settings.rpn_pre_nms_topk < 1:
        raise ValueError("rpn_pre_nms_topk must be >= 1 (None: each config's own)")
    _validate_precision(settings)


def _validate_precision(settings: BenchmarkSettings) -> None:
    """``--precision`` must name a dtype that ``torch.autocast`` supports on the device: torch
    disables autocast with a warning otherwise, which would silently measure fp32."""
    import warnings

    if settings.precision not in PRECISIONS:
        raise ValueError(f"--precision '{settings.precision}': expected one of {', '.join(PRECISIONS)}")
    dtype = settings.autocast_dtype
    if dtype is None:
        return
    device_type = torch.device(settings.device).type
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with torch.autocast(device_type=device_type, dtype=dtype):
                pass
        except (RuntimeError, ValueError) as e:
            raise ValueError(f"--precision {settings.precision} is not supported on {device_type} by torch "
                             f"{torch.__version__}: {e}") from e
    disabled = [w for w in caught if "autocast" in str(w.message).lower()]
    if disabled:
        raise ValueError(f"--precision {settings.precision} is not supported on {device_type} by torch "
                         f"{torch.__version__}: {disabled[0].message}")


def _check_weights(settings: BenchmarkSettings) -> None:
    """Weights that would be downloaded fail before anything is measured."""
    from ...config import load_config
    from ...engine.checkpoint import check_weights
    from ..build import resolve_weights

    for spec in settings.models:
        if spec.kind == "detectron2":
            opts = list(settings.global_opts) + list(spec.opts)
            try:
                cfg = load_config(spec.config_file, opts)
            except Exception:  # noqa: BLE001  (reported as a build failure below)
                continue
            resolve_weights(cfg, opts)
        elif spec.weights:
            check_weights(spec.weights, key=f"--torchvision-weights {spec.torchvision_name}")


def _results_header(settings: BenchmarkSettings) -> Dict[str, object]:
    h, w = settings.image_size
    sdict = asdict(settings)
    sdict.pop("models")
    sdict["image_size"] = f"{h}x{w}"
    results = {
        "schema_version": SCHEMA_VERSION,
        "task": settings.task,
        "precision": settings.precision,
        "mode": ("fixed_work" if settings.fixed_work else "dataset") if settings.task == "inference" else settings.task,
        "settings": sdict,
        "environment": environment(settings.device, settings.command_line),
        "flops_unit": FLOPS_UNIT,
        "memory_method": ("peak in a fresh Python process per model: CUDA max_memory_allocated; CPU VmHWM "
                          "(model_peak_mib = VmHWM - RSS after imports)") if settings.memory == "subprocess" else "off",
        "stage_definitions": dict(STAGE_DEFINITIONS),
        "models": [],
    }
    if settings.fixed_work:
        results["fixed_work"] = {"proposals_per_image": settings.num_proposals,
                                 "mask_boxes_per_image": settings.num_detections,
                                 "rpn_pre_nms_topk": settings.rpn_pre_nms_topk or "each config's own",
                                 "score_control": settings.control_scores,
                                 "classes_per_roi": settings.classes_per_roi if settings.control_scores else None,
                                 "nms_inputs": "boxes entering [RPN NMS, final per-class NMS] of one image, "
                                               "counted on a verification pass (torch.profiler)",
                                 "enforced": settings.strict_work}
    return results


def failure(spec, stage, error) -> Dict[str, object]:
    """The record of a model that failed to build or run."""
    return {"name": spec.name, "kind": spec.kind, "config_file": spec.config_file,
            "torchvision_model": spec.torchvision_name, "status": "failed", "error_stage": stage, "error": error}


def add_ratios(results, baseline) -> None:
    """``ratio_to_baseline`` (latency, FLOPs, parameters, speedup) of every model that ran."""
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


def _finish(results, settings) -> Dict[str, object]:
    add_ratios(results, settings.baseline or settings.models[0].name)
    if settings.output_dir:
        write_reports(results, settings.output_dir)
    return results


def _run_data_task(settings, results):
    for spec in settings.models:
        if spec.kind != "detectron2":
            results["models"].append(failure(spec, "build", "task 'data' measures detectron2 data loaders only"))
            continue
        try:
            rec = measure_loader(spec, settings)
            results["models"].append({"name": spec.name, "kind": spec.kind, "status": "ok", **rec})
        except Exception as e:
            logger.exception("data loader of %s failed", spec.name)
            results["models"].append(failure(spec, "run", f"{type(e).__name__}: {e}"))
    return _finish(results, settings)


def _torchvision_sizes(settings):
    """Dataset mode: the test sizes of the first detectron2 config that loads (torchvision models
    resize to them)."""
    from ...config import load_config

    for spec in settings.models:
        if spec.kind == "detectron2":
            try:
                c = load_config(spec.config_file, list(settings.global_opts) + list(spec.opts))
                return int(c.INPUT.MIN_SIZE_TEST), int(c.INPUT.MAX_SIZE_TEST)
            except Exception:  # noqa: BLE001  (reported when that model is built)
                continue
    return None


def _build(settings):
    """Build every model; a failure is recorded and the others go on."""
    runners, records = [], {}
    tv_sizes = _torchvision_sizes(settings) if settings.dataset else None
    for spec in settings.models:
        try:
            cand = Candidate.from_spec(spec, settings, tv_sizes)
        except Exception as e:
            logger.error("%s failed to build: %s: %s", spec.name, type(e).__name__, e)
            records[spec.name] = failure(spec, "build", f"{type(e).__name__}: {e}")
            continue
        rec = {"name": spec.name, "status": "ok", **cand.info, "mask_on": cand.has_mask}
        rec["params"] = count_parameters(cand.model)["total"]
        rec["trainable_params"] = count_parameters(cand.model)["trainable"]
        rec["weights_mib"] = weights_size_mib(cand.model)
        records[spec.name] = rec
        runners.append(Runner(cand))
    return runners, records


def _dataset_inputs(runners, settings):
    """Dataset mode: each model's test loader (``num_workers=0``) and a function that gives the
    next image of a model, starting the data set again at its end."""
    from detectron2.config import get_cfg
    from detectron2.data import build_detection_test_loader

    loaders = {}
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

    return get_inputs, loaders


def _count_flops(runners, records, settings, loaders):
    """FLOPs of every model (before timing: tracing runs the model once)."""
    h, w = settings.image_size
    for r in runners:
        try:
            if settings.task == "inference" and settings.dataset:
                analyses = []
                for _, d in zip(range(settings.flops_images), loaders[r.cand.name][1]):
                    analyses.append(r.cand.flops(r.cand.eval_inputs_from_d2(d[0]))[0])
                fl = average_flops(analyses)
            else:
                inputs = r.cand.eval_inputs_from_bgr(synthetic_image(h, w, settings.seed))
                fl = r.cand.flops(inputs)[1]
                fl["input"] = f"{h}x{w}, inference" + (
                    f", {settings.num_proposals} proposals, {settings.num_detections} detections"
                    if settings.fixed_work else " at the config's own test settings")
            fl["unit"] = FLOPS_UNIT
            records[r.cand.name]["flops"] = fl
        except Exception as e:
            logger.exception("FLOP count of %s failed", r.cand.name)
            records[r.cand.name]["flops"] = {"total": None, "error": f"{type(e).__name__}: {e}"}


def _run_train(runners, settings):
    """Warm-up and timed training iterations of every model; returns the failures.

    Models with random weights get their frozen batch norms calibrated on their training batch
    first (:func:`light_rcnn.analysis.build.calibrate_frozen_bn`): without it a random full-depth
    ResNet (R50-C4) diverges in its first iterations. fp16 uses loss scaling (``GradScaler``).
    """
    from detectron2.utils.events import EventStorage

    from ..build import calibrate_frozen_bn

    failed, inputs_by_name = {}, {}
    for r in runners:
        r.cand.model.train()
        inputs_by_name[r.cand.name] = r.cand.train_inputs(settings.batch_size, settings.num_gt, settings.seed)
        if not r.cand.info.get("weights"):
            with EventStorage(0):
                n = calibrate_frozen_bn(r.cand.model, lambda: r.cand.train_forward(inputs_by_name[r.cand.name]))
            r.extra["calibrated_frozen_bn_layers"] = n
        if settings.precision == "fp16":
            r.extra["grad_scaler"] = torch.amp.GradScaler(torch.device(settings.device).type)
        if r.cand.kind == "detectron2":
            from detectron2.solver import build_optimizer

            opt_cfg = r.cand.cfg.clone()
            opt_cfg.defrost()
            opt_cfg.SOLVER.BASE_LR = settings.train_lr
            r.extra["optimizer"] = build_optimizer(opt_cfg, r.cand.model)
        else:
            params = [p for p in r.cand.model.parameters() if p.requires_grad]
            r.extra["optimizer"] = torch.optim.SGD(params, lr=settings.train_lr, momentum=0.9, weight_decay=1e-4)
    for _ in range(settings.warmup):
        train_round(runners, settings, inputs_by_name, failed, False)
    for _ in range(settings.iters):
        train_round(runners, settings, inputs_by_name, failed, True)
    return failed


def _measure_memories(runners, records, settings):
    """Memory, in fresh processes, after timing (so spawning never disturbs the timed loop)."""
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


def run_benchmark(settings: BenchmarkSettings) -> Dict[str, object]:
    """Measure every model of ``settings`` and write the report files (when ``output_dir``).

    Returns the results dict that is written to ``benchmark.json`` (schema: see
    :func:`write_reports` and the README of ``tools/benchmark.py``).

    Raises:
        FixedWorkError: in fixed-work mode, a model did not process the prescribed work.
        FileNotFoundError: ``MODEL.WEIGHTS`` would be downloaded or does not exist.
    """
    _validate(settings)
    apply_numerics(settings)
    _check_weights(settings)
    fixed = settings.fixed_work
    results = _results_header(settings)
    if settings.task == "data":
        return _run_data_task(settings, results)

    runners, records = _build(settings)
    loaders = {}
    if settings.task == "inference" and settings.dataset:
        get_inputs, loaders = _dataset_inputs(runners, settings)
    else:
        image = synthetic_image(*settings.image_size, settings.seed)
        fixed_inputs = {r.cand.name: r.cand.eval_inputs_from_bgr(image) for r in runners}

        def get_inputs(r):
            return fixed_inputs[r.cand.name]

    if settings.flops and settings.task in ("inference", "train"):
        _count_flops(runners, records, settings, loaders)

    if settings.task == "inference":
        # counts (and, at fixed work, checks) the boxes entering every NMS before anything is timed
        verify_equal_work(runners, settings, get_inputs, settings.baseline or settings.models[0].name)
        failed = interleaved_inference(runners, settings, get_inputs, fixed)
    else:
        failed = _run_train(runners, settings)

    for r in runners:
        r.timer.remove()
        rec = records[r.cand.name]
        if r.cand.name in failed:
            stage, err = failed[r.cand.name]
            rec.update(status="failed", error_stage=stage, error=err)
            continue
        rec.update(summarize_inference(r, settings) if settings.task == "inference" else summarize_train(r, settings))
        for key in ("work_mismatch", "unequal_work", "calibrated_frozen_bn_layers"):
            if key in r.extra:
                rec[key] = r.extra[key]
        if "verified_work" in r.extra:
            rec["nms_inputs"] = r.extra["verified_work"]["nms_inputs"]
            rec["verified_work"] = r.extra["verified_work"]
        if fixed:
            rec["work_verified"] = settings.strict_work or not ({"work_mismatch", "unequal_work"} & set(rec))
    if fixed:
        ok = [records[r.cand.name] for r in runners if records[r.cand.name]["status"] == "ok"]
        results["fixed_work"]["verified"] = bool(ok) and all(m.get("work_verified") for m in ok)

    if settings.memory == "subprocess":
        _measure_memories(runners, records, settings)
    results["models"] = [records[s.name] for s in settings.models]
    add_ratios(results, settings.baseline or settings.models[0].name)
    if settings.baseline and settings.baseline not in records:
        raise ValueError(f"--baseline '{settings.baseline}' is none of {list(records)}")
    for r in runners:
        del r.cand.model
    if settings.output_dir:
        write_reports(results, settings.output_dir)
    return results
