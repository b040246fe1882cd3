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
            opt = r.extra["optimizer"]
            sync(cand.device)
            t0 = time.perf_counter()
            with EventStorage(r.extra.setdefault("iter", 0)):
                losses = cand.train_forward(inputs)
            loss = sum(losses.values())
            sync(cand.device)
            t1 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            sync(cand.device)
            t2 = time.perf_counter()
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
