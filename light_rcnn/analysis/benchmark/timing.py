"""The timed loops: interleaved inference passes with work checks, training iterations, and their
statistics.

Models are measured interleaved (A B A B ...) so that drifts of the machine (turbo, thermal, other
processes) hit all of them alike. Each inference iteration runs, per model, one *clean* pass
(end-to-end latency; only cheap counting hooks, ``torch.cuda.synchronize()`` before and after) and
one *staged* pass (synchronizing timing hooks, see :mod:`..stage_timer`), alternately in either
order since the second of two back-to-back passes finds warmer caches.
"""
import logging
import time
from typing import Dict, Sequence

import numpy as np
import torch

from ..stage_timer import STAGES, StageTimer
from .candidate import Candidate
from .nms_work import count_nms_inputs
from .specs import FixedWorkError

logger = logging.getLogger(__name__)


def sync(device) -> None:
    """``torch.cuda.synchronize()`` on a CUDA device, nothing on the CPU."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


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


def expected_counts(cand: Candidate, settings) -> Dict[str, object]:
    """The work of one fixed-work pass, in the format of :func:`count_record`."""
    n, m = settings.num_proposals, settings.num_detections
    return {"proposals_per_image": [n], "box_rois": n, "mask_rois": m if cand.has_mask else 0, "detections": [m]}


def count_record(counts) -> Dict[str, object]:
    """The work a :class:`StageTimer` counted in one pass, as plain lists and ints."""
    return {"proposals_per_image": list(counts["proposals"]), "box_rois": int(counts["box_rois"]),
            "mask_rois": int(counts["mask_rois"]), "detections": list(counts.get("detections", []))}


class Runner:
    """State of one model during the interleaved loop."""

    def __init__(self, cand: Candidate):
        self.cand = cand
        self.timer = StageTimer(cand.parts, cand.device)
        self.clean, self.staged = [], []
        self.counts = []
        self.extra = {}


def eval_pass(runner: Runner, inputs, staged: bool):
    """One inference pass: (seconds, counted work, stage times or None)."""
    cand = runner.cand
    runner.timer.timing(staged)
    sync(cand.device)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = cand.forward(inputs)
    sync(cand.device)
    dt = time.perf_counter() - t0
    runner.timer.record_detections(out)
    runner.timer.timing(False)
    del out
    return dt, count_record(runner.timer.last_counts), (dict(runner.timer.last_stages) if staged else None)


def check_work(cand: Candidate, counts, settings) -> None:
    """Raise :class:`FixedWorkError` when ``counts`` differ from the fixed work."""
    expected = expected_counts(cand, settings)
    if counts != expected:
        raise FixedWorkError(
            f"{cand.name}: fixed work not met: processed {counts}, expected {expected} "
            f"(RPN POST_NMS_TOPK_TEST={settings.num_proposals} with NMS disabled and "
            f"DETECTIONS_PER_IMAGE={settings.num_detections} with score threshold 0 and per-class NMS "
            "disabled). A model that filters proposals or detections in its own way cannot be compared "
            "at fixed work; pass strict_work=False (--allow-unequal-work) to record it anyway."
        )


def verification_pass(runner: Runner, inputs) -> Dict[str, object]:
    """One untimed inference pass under :mod:`torch.profiler`: the work counted by the stage timer
    plus ``nms_inputs``, the boxes entering each NMS (``[RPN, final per-class, ...]``)."""
    cand = runner.cand
    runner.timer.timing(False)
    out = {}

    def run():
        with torch.no_grad():
            out["y"] = cand.forward(inputs)

    nms = count_nms_inputs(run, cand.parts.rpn, cand.parts.roi_heads)
    runner.timer.record_detections(out.pop("y"))
    rec = count_record(runner.timer.last_counts)
    rec["nms_inputs"] = nms
    return rec


WORK_KEYS = ("nms_inputs", "proposals_per_image", "mask_rois", "detections")


def unequal_work(records: Dict[str, Dict[str, object]], reference: str) -> Dict[str, Dict[str, object]]:
    """The models whose verified work differs from that of ``reference``: ``{name: {key: (theirs,
    reference's)}}`` over :data:`WORK_KEYS` (mask boxes only between models that predict masks)."""
    ref = records[reference]
    out = {}
    for name, rec in records.items():
        diff = {}
        for key in WORK_KEYS:
            if key == "mask_rois" and not (rec[key] and ref[key]):
                continue
            if rec[key] != ref[key]:
                diff[key] = (rec[key], ref[key])
        if diff:
            out[name] = diff
    return out


def verify_equal_work(runners, settings, get_inputs, reference: str) -> Dict[str, Dict[str, object]]:
    """Verification pass of every model (before the warm-up and timing); at fixed work, the
    prescribed counts and the same ``nms_inputs`` for every model.

    Returns:
        ``{name: counts of its verification pass}``; models that crash are left out (the timed loop
        reports them).

    Raises:
        FixedWorkError: at fixed work with ``strict_work``, a model misses the prescribed work, or
            two models' verified work differ (naming the models and their counts).
    """
    verified = {}
    for r in runners:
        try:
            rec = verification_pass(r, get_inputs(r))
        except Exception:  # noqa: BLE001  (the timed loop reports the failure)
            logger.exception("verification pass of %s failed", r.cand.name)
            continue
        verified[r.cand.name] = rec
        r.extra["verified_work"] = rec
        if settings.fixed_work and settings.strict_work:
            check_work(r.cand, {k: v for k, v in rec.items() if k != "nms_inputs"}, settings)
    if settings.fixed_work and verified:
        ref = reference if reference in verified else next(iter(verified))
        diff = unequal_work(verified, ref)
        for name, d in diff.items():
            next(r for r in runners if r.cand.name == name).extra["unequal_work"] = {
                "reference": ref, "differences": {k: {"model": a, "reference": b} for k, (a, b) in d.items()}}
        if diff and settings.strict_work:
            lines = "; ".join(f"{name}: " + ", ".join(f"{k} {a} vs {b}" for k, (a, b) in d.items())
                              for name, d in diff.items())
            raise FixedWorkError(
                f"unequal work between models (reference {ref}: nms_inputs {verified[ref]['nms_inputs']}, "
                f"proposals {verified[ref]['proposals_per_image']}, mask boxes {verified[ref]['mask_rois']}): "
                f"{lines}. Models that feed their NMS different numbers of boxes (e.g. another "
                "PRE_NMS_TOPK_TEST, feature stride or number of classes) do not do the same work; pass "
                "--allow-unequal-work (strict_work=False) to measure them anyway.")
    return verified


def interleaved_inference(runners, settings, get_inputs, fixed):
    """Warm-up then ``iters`` rounds of (clean, staged) passes, model after model.

    Returns:
        ``{name: ("run", error)}`` of the models that crashed (the others went on).
    """
    failed = {}

    def run_round(record, order):
        for r in runners:
            if r.cand.name in failed:
                continue
            try:
                inputs = get_inputs(r)
                for staged in order:
                    dt, counts, stages = eval_pass(r, inputs, staged)
                    if fixed:
                        if settings.strict_work:
                            check_work(r.cand, counts, settings)
                        elif counts != expected_counts(r.cand, settings):
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


def summarize_inference(r: Runner, settings) -> Dict[str, object]:
    """Latency, stage means, their agreement with the clean passes, and the counted work.

    The stage means add up exactly to the staged pass's mean; ``stage_sum_vs_end_to_end`` compares
    that with the clean passes (hook overhead and noise), ``stages_consistent`` says whether it is
    within 10%.
    """
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


def train_round(runners, settings, inputs_by_name, failed, record) -> None:
    """One training iteration (forward, backward, optimizer step, each timed) of every model."""
    from detectron2.utils.events import EventStorage

    for r in runners:
        if r.cand.name in failed:
            continue
        cand = r.cand
        try:
            inputs = inputs_by_name[cand.name]
            opt, scaler = r.extra["optimizer"], r.extra.get("grad_scaler")
            sync(cand.device)
            t0 = time.perf_counter()
            with EventStorage(r.extra.setdefault("iter", 0)):
                losses = cand.train_forward(inputs)
            loss = sum(losses.values())
            sync(cand.device)
            t1 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            (scaler.scale(loss) if scaler is not None else loss).backward()
            sync(cand.device)
            t2 = time.perf_counter()
            if scaler is not None:  # fp16: loss scaling, as detectron2's AMPTrainer
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            sync(cand.device)
            t3 = time.perf_counter()
            r.extra["iter"] += 1
            if not torch.isfinite(loss).item():
                raise FloatingPointError(f"loss is {loss.item()} (random init + synthetic data diverged)")
            counts = count_record(r.timer.last_counts)
            if record:
                r.clean.append(t3 - t0)
                r.staged.append({"forward": t1 - t0, "backward": t2 - t1, "optimizer": t3 - t2})
                r.counts.append(counts)
        except Exception as e:
            logger.exception("%s failed while training", cand.name)
            failed[cand.name] = ("run", f"{type(e).__name__}: {e}")


def summarize_train(r: Runner, settings) -> Dict[str, object]:
    """Iteration time, its forward / backward / optimizer parts and the counted ROIs."""
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
