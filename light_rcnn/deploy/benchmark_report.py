"""Reports of the deploy benchmark (``tools/benchmark_deploy.py``): speed-ups and AP differences
against eager, the benchmark's targets judged met / missed, ``deploy_benchmark.json`` and
``deploy_benchmark.md``.

Targets (:data:`DEFAULT_TARGETS`, a :class:`DeployTargets`; "within" is an absolute difference, a
gain counts like a loss):

* TorchScript and ONNX Runtime fp32 within 0.2 AP of eager, for bbox AP and (mask models) segm AP;
* ONNX Runtime int8 within 1.5 segm AP of eager (bbox AP for a model without masks);
* the best exported runtime at least 1.5x lower latency than eager fp32, by median (p50) latency.

A target whose runtime was not measured is recorded with ``met: None`` ("not measured"); a
non-finite AP (a runtime without any detection) misses.
"""
import dataclasses
import json
import math
import os
from typing import Dict, List

__all__ = ["DEFAULT_TARGETS", "DeployTargets", "TARGETS", "deploy_record", "judge_targets", "markdown_report",
           "write_reports"]


@dataclasses.dataclass(frozen=True)
class DeployTargets:
    """What the deploy benchmark expects of the exported runtimes, against eager fp32."""

    # largest |AP - eager AP| (bbox, segm) of TorchScript and of ONNX Runtime fp32, in AP points
    max_fp32_ap_delta: float = 0.2
    # |segm AP - eager segm AP| of ONNX Runtime int8 (bbox AP for a model without masks), in AP points
    max_int8_ap_delta: float = 1.5
    # smallest eager p50 / best exported runtime's p50
    min_speedup: float = 1.5

    def thresholds(self) -> Dict[str, float]:
        """The thresholds under the keys of ``deploy_benchmark.json``'s ``target_thresholds``."""
        return {"fp32_ap_delta": self.max_fp32_ap_delta, "int8_segm_ap_delta": self.max_int8_ap_delta,
                "speedup": self.min_speedup}


DEFAULT_TARGETS = DeployTargets()
# The same thresholds as a dict, keyed as in ``deploy_benchmark.json`` (``target_thresholds``).
TARGETS = DEFAULT_TARGETS.thresholds()
TARGETS_TITLE = "Targets (deploy benchmark defaults):"
SCHEMA_VERSION = 1


def _ap_value(entry, task):
    return ((entry.get("ap") or {}).get(task) or {}).get("AP")


def _delta(a, b):
    return None if a is None or b is None else a - b


def _add_comparisons(runtimes):
    """Speed-ups and AP differences of every runtime against eager (in place)."""
    eager = runtimes["eager"]
    for entry in runtimes.values():
        lat, ref = entry["latency_ms"], eager["latency_ms"]
        entry["speedup_vs_eager"] = {k: ref[k] / lat[k] if lat[k] > 0 else None for k in ("p50", "mean")}
        entry["ap_delta_vs_eager"] = {task: _delta(_ap_value(entry, task), _ap_value(eager, task))
                                      for task in eager.get("ap", {})}


def _target(name, runtime, measured, threshold, met, detail):
    return {"target": name, "runtime": runtime, "measured": measured, "threshold": threshold, "met": met,
            "detail": detail}


def judge_targets(runtimes) -> List[Dict[str, object]]:
    """The deploy benchmark's targets (:data:`DEFAULT_TARGETS`) against ``runtimes`` (per-runtime
    entries with ``ap_delta_vs_eager`` and ``speedup_vs_eager``). Each: ``target``, ``runtime``,
    ``measured``, ``threshold``, ``met`` (True / False / None = not measured), ``detail``."""
    out = []
    fp32_limit = DEFAULT_TARGETS.max_fp32_ap_delta
    for name, label in (("torchscript", "TorchScript"), ("onnx", "ONNX Runtime fp32")):
        what = f"{label} within {fp32_limit} AP of eager (bbox and segm)"
        if name not in runtimes:
            out.append(_target(what, name, None, fp32_limit, None, "not measured"))
            continue
        deltas = runtimes[name]["ap_delta_vs_eager"]
        detail = ", ".join(f"{t} {_signed(d)}" for t, d in deltas.items())
        if not deltas or any(d is None for d in deltas.values()):
            out.append(_target(what, name, None, fp32_limit, False, f"AP not finite: {detail}"))
            continue
        worst = max(abs(d) for d in deltas.values())
        out.append(_target(what, name, worst, fp32_limit, worst <= fp32_limit, detail))
    int8_limit = DEFAULT_TARGETS.max_int8_ap_delta
    task = "segm" if "segm" in runtimes["eager"].get("ap", {}) else "bbox"
    what = f"ONNX Runtime int8 within {int8_limit} {task} AP of eager"
    if "onnx-int8" not in runtimes:
        out.append(_target(what, "onnx-int8", None, int8_limit, None, "not measured"))
    else:
        d = runtimes["onnx-int8"]["ap_delta_vs_eager"].get(task)
        met = d is not None and abs(d) <= int8_limit
        out.append(_target(what, "onnx-int8", d, int8_limit, met, f"{task} {_signed(d)}"))
    limit = DEFAULT_TARGETS.min_speedup
    what = f"best CPU runtime at least {limit}x lower latency (p50) than eager fp32"
    others = {n: e["speedup_vs_eager"]["p50"] for n, e in runtimes.items() if n != "eager"}
    if not others:
        out.append(_target(what, None, None, limit, None, "no exported runtime measured"))
    else:
        best = max(others, key=lambda n: others[n] or 0.0)
        detail = ", ".join(f"{n} {_x(s)}" for n, s in others.items())
        out.append(_target(what, best, others[best], limit, others[best] is not None and others[best] >= limit,
                           detail))
    return out


def deploy_record(runtimes, *, cfg, config_file, weights, opts, dataset, num_images, settings, load_average):
    """The JSON record of a run: ``runtimes`` (completed with comparisons), ``targets``, the run's
    inputs and the machine (:func:`light_rcnn.analysis.benchmark.environment.environment` plus
    ONNX Runtime / ONNX versions)."""
    from ..analysis.benchmark.environment import environment

    _add_comparisons(runtimes)
    env = environment("cpu")
    for mod in ("onnxruntime", "onnx"):
        try:
            env[mod] = __import__(mod).__version__
        except ImportError:
            env[mod] = None
    env["load_average_1_5_15"] = {"start": load_average[0], "end": load_average[1]}
    return {
        "schema_version": SCHEMA_VERSION,
        "config_file": config_file,
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        "weights": os.path.abspath(weights),
        "opts": [str(o) for o in opts],
        "dataset": dataset,
        "num_images": int(num_images),
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.items()},
        "runtimes": runtimes,
        "targets": judge_targets(runtimes),
        "target_thresholds": DEFAULT_TARGETS.thresholds(),
        "environment": env,
    }


def _f(x, nd=1):
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{nd}f}"


def _signed(x, nd=2):
    return "-" if x is None else f"{x:+.{nd}f}"


def _x(x):
    return "-" if x is None else f"{x:.2f}x"


def markdown_report(record) -> str:
    """``record`` (:func:`deploy_record`) as a Markdown document: run, machine, one row per runtime,
    the targets."""
    env, s = record["environment"], record["settings"]
    la = env["load_average_1_5_15"]
    lines = [
        f"# Deploy benchmark: {record['config_file']}",
        "",
        f"- command: `{env['command_line']}`",
        f"- weights: {record['weights']}" + (f"; overrides: {' '.join(record['opts'])}" if record["opts"] else ""),
        f"- machine: {env['cpu_model']} ({env['cpu_count']} CPUs), {s['threads']} threads; torch {env['torch']}, "
        f"detectron2 {env['detectron2']}, onnxruntime {env['onnxruntime']}, onnx {env['onnx']}, python {env['python']}",
        f"- {env['timestamp']}; load average (1/5/15 min) {_la(la['start'])} at the start, {_la(la['end'])} at the end",
        f"- images: {record['num_images']} of {record['dataset']} (same images, same weights for every runtime), "
        f"warm-up {s['warmup']} per runtime, order {s['order']}"
        + (f" ({s.get('rounds', 1)} rounds, pooled)" if s['order'] == 'blocked' else "") + f"; latency = `predictor([image])` (pre-processing, "
        f"model, mask pasting; decoding excluded); int8 calibrated on {s['calibration_images']} training images",
        "",
        "| runtime | ms p50 | p90 | mean | x vs eager (p50) | bbox AP | segm AP | ΔAP vs eager (bbox / segm) | "
        "max \\|Δbox\\| px | file MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in record["runtimes"].items():
        lat, d = e["latency_ms"], e["ap_delta_vs_eager"]
        box = _f(e["parity_vs_eager"]["box_px"], 4) if "parity_vs_eager" in e else "(reference)"
        size = _f(e["file_mib"], 2) + (f" ({_f(e['weights_mib'], 2)} fp32 weights)" if "weights_mib" in e else "")
        lines.append(
            f"| {name} ({e['precision']}) | {_f(lat['p50'])} | {_f(lat['p90'])} | {_f(lat['mean'])} | "
            f"{_x(e['speedup_vs_eager']['p50'])} | {_f(_ap_value(e, 'bbox'), 2)} | {_f(_ap_value(e, 'segm'), 2)} | "
            f"{_signed(d.get('bbox'))} / {_signed(d.get('segm'))} | {box} | {size} |")
    lines += ["", TARGETS_TITLE, ""]
    for t in record["targets"]:
        verdict = {True: "met", False: "**MISSED**", None: "not measured"}[t["met"]]
        measured = "" if t["measured"] is None else f": {t['measured']:.2f} (threshold {t['threshold']})"
        lines.append(f"- {verdict}: {t['target']}{measured}; {t['detail']}")
    return "\n".join(lines) + "\n"


def _la(values):
    return "/".join(f"{v:.2f}" for v in values)


def _clean(x):
    """JSON-safe copy: non-finite floats -> None."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_reports(record, json_path, markdown_path):
    """Write ``record`` to ``json_path`` and its Markdown to ``markdown_path``; neither may exist
    (``FileExistsError`` naming it: files are opened in exclusive-create mode)."""
    text = markdown_report(record)
    for path, content in ((json_path, json.dumps(_clean(record), indent=2, allow_nan=False) + "\n"),
                          (markdown_path, text)):
        try:
            with open(path, "x") as f:
                f.write(content)
        except FileExistsError:
            raise FileExistsError(f"refusing to overwrite existing file: {path}") from None
