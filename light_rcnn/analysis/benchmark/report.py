"""The benchmark's reports: ``benchmark.json``, ``benchmark.md`` (one row per model, with the
machine and the command) and ``benchmark_stages.png`` (latency by stage)."""
import json
import logging
import os
from typing import Dict

import numpy as np

from ..stage_timer import STAGES

logger = logging.getLogger(__name__)


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
        f"- {env['timestamp']}; image {s['image_size']}, warm-up {s['warmup']}, iterations {s['iters']}, "
        f"precision {results.get('precision', 'fp32')}; FLOPs = {results['flops_unit']}",
    ]
    if "fixed_work" in results:
        fw = results["fixed_work"]
        lines.append(f"- fixed work: {fw['proposals_per_image']} proposals and {fw['mask_boxes_per_image']} "
                     f"mask boxes per image, verified on every pass: {fw.get('verified')}")
        scores = (f"model-independent RPN and class scores, {fw['classes_per_roi']} classes per ROI"
                  if fw.get("score_control") else "the models' own scores")
        lines.append(f"- NMS inputs (boxes entering [RPN, final] NMS, verification pass): {scores}; RPN pre-NMS "
                     f"top-k {fw.get('rpn_pre_nms_topk')}")
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
                  " | GMACs | params (M) | weights MiB | peak mem MiB | x latency | x FLOPs | x params | proposals "
                  "| mask boxes | NMS inputs |",
                  "|---|" + "---|" * (4 + len(STAGES) + 11)]
        for m in ok:
            L, st, r, c = m["latency_ms"], m["stages_ms"], m.get("ratio_to_baseline") or {}, m["counts"]
            lines.append(
                f"| {m['name']} | {_fmt(L['mean'])} | {_fmt(L['median'])} | {_fmt(L['p90'])} | {_fmt(m['images_per_s'], 2)} | "
                + " | ".join(_fmt(st[s]) for s in STAGES)
                + f" | {_gmacs(m)} | {_fmt(m['params'] / 1e6, 2)} | {_fmt(m['weights_mib'])} | {_mem(m)} | "
                f"{_fmt(r.get('latency'), 2)} | {_fmt(r.get('flops'), 2)} | {_fmt(r.get('params'), 2)} | "
                f"{_fmt(c['proposals_per_image'], 0)} | {_fmt(c['mask_rois'], 0)} | {_nms(m)} |")
        lines += ["", "Stages in ms (means of the staged passes; they add up to the staged total). "
                  "`postprocess` includes preprocessing (normalize/pad) and mask pasting."]
    if failed:
        lines += ["", "Failed:", "", "| model | stage | error |", "|---|---|---|"]
        for m in failed:
            err = str(m["error"]).replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {m['name']} | {m.get('error_stage')} | {err} |")
    return "\n".join(lines) + "\n"


def _nms(m):
    nms = m.get("nms_inputs")
    text = "/".join(str(n) for n in nms) if nms else "-"
    return text + (" (unequal)" if m.get("unequal_work") else "")


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
