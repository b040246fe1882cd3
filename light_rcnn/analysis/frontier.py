"""The speed-accuracy frontier as a picture (``tools/plot_frontier.py``): the COCO AP of every config
(mean ± sample std over seeds) against its latency per image (p50, ms), written as ``frontier.png``
and ``frontier.md``.

Inputs (what is read from each file; anything else in it is ignored):

* ``seeds_summary.json`` of ``tools/demo.py --seeds`` (:func:`light_rcnn.demo.run_demo_seeds`), one
  per config: ``config_file``, ``summary.<segm|bbox>.AP.{mean, std, n}`` (a task the run did not
  evaluate is absent: listed as "-"), ``per_seed`` (its keys: the seeds), ``opts`` and, optionally,
  ``command`` (how runs not made by one ``tools/demo.py --seeds`` command were, shown instead);
* ``benchmark.json`` of ``tools/benchmark.py`` (:func:`light_rcnn.analysis.benchmark.run_benchmark`):
  ``task`` (must be "inference"), ``settings.image_size`` / ``settings.dataset``, ``precision``,
  ``environment.{device, torch_num_threads, command_line}`` and per entry of ``models`` ``status``,
  ``kind``, ``config_file`` and ``latency_ms.median`` (the eager p50); failed and torchvision models
  are skipped with a warning;
* ``deploy_benchmark.json`` of ``tools/benchmark_deploy.py``
  (:func:`light_rcnn.deploy.benchmark_report.deploy_record`): ``config_file``, ``dataset``,
  ``settings.threads``, ``runtimes.<name>.latency_ms.p50`` (``eager`` required), and per exported
  runtime ``ap_delta_vs_eager``. A missing file, malformed JSON or a missing key raises
  :class:`FrontierInputError` naming the file and what is missing or expected.

Joining: configs match by :func:`config_key` (``light_rcnn://shapes/x.yaml``,
``/abs/.../configs/shapes/x.yaml`` and ``configs/shapes/x.yaml`` are one config). Per config the
eager point is the deploy benchmark's eager runtime when there is one (the same run as the exported
runtimes it is joined to), else ``tools/benchmark.py``'s; the second point is the exported runtime of
lowest p50, drawn at the eager AP plus that runtime's AP difference to eager measured by the deploy
benchmark (one checkpoint). A summary without latency, or without the plotted metric, is listed in
the table with "-" and a note, not plotted; a latency without summary is ignored with a warning.

Like for like: every latency file must share device, thread count, input (synthetic image size or
data set) and eager precision, or :class:`MixedSettingsError` names the files of each setting
(``allow_mixed_settings=True`` plots them anyway, noted in the figure and the table).
"""
import json
import math
import os
import posixpath
import shlex
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

__all__ = ["FrontierInputError", "MixedSettingsError", "config_key", "load_latency", "load_summary",
           "build_rows", "check_settings", "markdown_report", "draw_frontier", "plot_frontier"]

SUMMARY_FILE = "seeds_summary.json"
METRICS = ("segm", "bbox")
SUMMARY_WHAT = "a seeds_summary.json of tools/demo.py --seeds"
BENCHMARK_WHAT = "a benchmark.json of tools/benchmark.py"
DEPLOY_WHAT = "a deploy_benchmark.json of tools/benchmark_deploy.py"
LATENCY_WHAT = f"{BENCHMARK_WHAT} or {DEPLOY_WHAT}"
SETTING_NAMES = {"device": "device", "threads": "threads", "input": "input", "precision": "eager precision"}


class FrontierInputError(ValueError):
    """An input file is missing, is not JSON, or lacks what the frontier reads (the message names it)."""


class MixedSettingsError(FrontierInputError):
    """Latency files measured under different settings (device, threads, input, precision)."""


def config_key(config_file: str) -> str:
    """One name per config however it was written: ``light_rcnn://<path under configs/>`` for a
    config shipped with light_rcnn (given by prefix, as an existing file inside the package, or as
    any path with a ``configs/`` folder, taken after the last one: files from another machine or
    another working directory), ``detectron2://<path>`` for detectron2's model zoo (by prefix or a
    path under ``model_zoo/configs/``), else the normalized path as given."""
    from ..config import LIGHT_RCNN_PREFIX, MODEL_ZOO_PREFIX, packaged_configs_dir

    name = str(config_file).strip().replace("\\", "/")
    for prefix in (LIGHT_RCNN_PREFIX, MODEL_ZOO_PREFIX):
        if prefix in name:
            return prefix + posixpath.normpath(name.split(prefix, 1)[1].lstrip("/"))
    if os.path.isfile(name):
        real, root = os.path.realpath(name), os.path.realpath(packaged_configs_dir())
        if real.startswith(root + os.sep):
            return LIGHT_RCNN_PREFIX + os.path.relpath(real, root).replace(os.sep, "/")
    parts = posixpath.normpath(name).split("/")
    if "configs" in parts[:-1]:
        i = len(parts) - 2 - parts[-2::-1].index("configs")  # the last "configs" folder
        prefix = MODEL_ZOO_PREFIX if i >= 1 and parts[i - 1] == "model_zoo" else LIGHT_RCNN_PREFIX
        return prefix + "/".join(parts[i + 1:])
    return posixpath.normpath(name)


def _label(key: str) -> str:
    return os.path.splitext(posixpath.basename(key))[0]


def _read_json(path, what, default_name=None):
    path = str(path)
    if default_name and os.path.isdir(path):
        path = os.path.join(path, default_name)
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FrontierInputError(f"{path}: no such file (expected {what})") from None
    except json.JSONDecodeError as e:
        raise FrontierInputError(f"{path}: malformed JSON ({e}); expected {what}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise FrontierInputError(f"{path}: cannot be read ({e}); expected {what}") from None
    if not isinstance(data, dict):
        raise FrontierInputError(f"{path}: the JSON is a {type(data).__name__}, expected an object ({what})")
    return path, data


def _is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _dotted(keys):
    return "".join(f"[{k}]" if isinstance(k, int) else (("." if i else "") + str(k)) for i, k in enumerate(keys))


def _get(obj, keys, path, what, expected=None):
    """``obj[k0][k1]...`` (an int indexes a list) or a :class:`FrontierInputError` naming ``path``, the
    missing key and the file expected; ``expected``: ``"number"``, ``"number or null"`` or a type."""
    cur = obj
    for i, k in enumerate(keys):
        found = (0 <= k < len(cur)) if isinstance(k, int) and isinstance(cur, list) else (
            isinstance(cur, dict) and k in cur)
        if not found:
            where = f"'{_dotted(keys[:i])}'" if i else "the top level"
            raise FrontierInputError(f"{path}: missing key '{_dotted(keys)}' ({where} has no "
                                     f"{'item' if isinstance(k, int) else 'key'} {k!r}); expected {what}")
        cur = cur[k]
    ok = (expected is None or (expected == "number" and _is_number(cur))
          or (expected == "number or null" and (cur is None or _is_number(cur)))
          or (isinstance(expected, type) and isinstance(cur, expected) and not isinstance(cur, bool)))
    if not ok:
        want = expected if isinstance(expected, str) else expected.__name__
        raise FrontierInputError(f"{path}: '{_dotted(keys)}' is {json.dumps(cur)[:60]}, expected a {want} "
                                 f"({what})")
    return cur


@dataclass
class SeedSummary:
    """The AP of one config over seeds (one ``seeds_summary.json``)."""

    path: str
    config_file: str
    ap: Dict[str, Dict[str, float]]  # task -> {"mean", "std", "n"} of COCO AP
    seeds: List[str] = field(default_factory=list)
    opts: List[str] = field(default_factory=list)
    given_command: Optional[str] = None

    @property
    def key(self):
        return config_key(self.config_file)

    @property
    def command(self):
        if self.given_command:
            return self.given_command
        args = ["tools/demo.py", "--config-file", self.config_file]
        args += (["--seeds", *self.seeds] if self.seeds else []) + ["--output-dir", os.path.dirname(self.path) or "."]
        return " ".join(shlex.quote(a) for a in args + list(self.opts))


def load_summary(path) -> SeedSummary:
    """A ``seeds_summary.json`` (or the folder holding one) as a :class:`SeedSummary`."""
    path, data = _read_json(path, SUMMARY_WHAT, SUMMARY_FILE)
    config_file = _get(data, ["config_file"], path, SUMMARY_WHAT, str)
    summary = _get(data, ["summary"], path, SUMMARY_WHAT, dict)
    ap = {}
    for task in METRICS:
        if "AP" not in (summary.get(task) or {}):
            continue
        m = {k: _get(data, ["summary", task, "AP", k], path, SUMMARY_WHAT, t)
             for k, t in (("mean", "number"), ("std", "number or null"), ("n", int))}
        m["std"] = float("nan") if m["std"] is None else float(m["std"])
        ap[task] = m
    seeds = [str(s) for s in (data.get("per_seed") or {})]
    command = _get(data, ["command"], path, SUMMARY_WHAT, str) if "command" in data else None
    return SeedSummary(path, config_file, ap, seeds, [str(o) for o in data.get("opts") or []], command)


@dataclass
class Runtime:
    name: str
    p50: float
    ap_delta: Dict[str, Optional[float]] = field(default_factory=dict)


@dataclass
class Latency:
    """The eager latency of one config in one file, and (deploy benchmark) its exported runtimes."""

    path: str
    tool: str  # "tools/benchmark.py" | "tools/benchmark_deploy.py"
    config_file: str
    name: str
    eager_p50: float
    runtimes: List[Runtime] = field(default_factory=list)

    @property
    def key(self):
        return config_key(self.config_file)

    @property
    def best(self) -> Optional[Runtime]:
        return min(self.runtimes, key=lambda r: r.p50) if self.runtimes else None


@dataclass
class LatencyFile:
    path: str
    tool: str
    settings: Dict[str, object]  # device, threads, input, precision (of eager)
    latencies: List[Latency]
    command: Optional[str]
    warnings: List[str]


def load_latency(path) -> LatencyFile:
    """A ``benchmark.json`` or a ``deploy_benchmark.json`` (told apart by their keys)."""
    path, data = _read_json(path, LATENCY_WHAT)
    if "runtimes" in data:
        return _load_deploy(path, data)
    if "models" in data:
        return _load_benchmark(path, data)
    if "per_seed" in data and "summary" in data:
        raise FrontierInputError(f"{path}: this is {SUMMARY_WHAT}, not a latency file; give it as a summary")
    raise FrontierInputError(f"{path}: neither {BENCHMARK_WHAT} (key 'models') nor {DEPLOY_WHAT} "
                             f"(key 'runtimes')")


def _load_benchmark(path, data):
    w, tool = BENCHMARK_WHAT, "tools/benchmark.py"
    task = _get(data, ["task"], path, w, str)
    if task != "inference":
        raise FrontierInputError(f"{path}: a '{task}' benchmark; the frontier needs inference latency "
                                 f"(tools/benchmark.py --task inference)")
    dataset = _get(data, ["settings"], path, w, dict).get("dataset")
    image = "dataset " + dataset if dataset else (
        "synthetic " + _get(data, ["settings", "image_size"], path, w, str) + " image, fixed work")
    settings = {"device": _get(data, ["environment", "device"], path, w, str),
                "threads": _get(data, ["environment", "torch_num_threads"], path, w, int),
                "input": image, "precision": data.get("precision", "fp32")}
    latencies, warnings = [], []
    for i, m in enumerate(_get(data, ["models"], path, w, list)):
        name = m.get("name", f"models[{i}]") if isinstance(m, dict) else f"models[{i}]"
        status = _get(data, ["models", i, "status"], path, w, str)
        if status != "ok":
            warnings.append(f"{path}: model '{name}' failed ({m.get('error_stage')}): skipped")
        elif m.get("kind", "detectron2") != "detectron2" or not m.get("config_file"):
            warnings.append(f"{path}: model '{name}' is not a config (kind {m.get('kind')}): skipped")
        else:
            p50 = _get(data, ["models", i, "latency_ms", "median"], path, w, "number")
            latencies.append(Latency(path, tool, m["config_file"], name, float(p50)))
    return LatencyFile(path, tool, settings, latencies, (data.get("environment") or {}).get("command_line"), warnings)


def _load_deploy(path, data):
    w, tool = DEPLOY_WHAT, "tools/benchmark_deploy.py"
    config_file = _get(data, ["config_file"], path, w, str)
    runtimes = _get(data, ["runtimes"], path, w, dict)
    eager_p50 = _get(data, ["runtimes", "eager", "latency_ms", "p50"], path, w, "number")
    settings = {"device": "cpu", "threads": _get(data, ["settings", "threads"], path, w, int),
                "input": "dataset " + _get(data, ["dataset"], path, w, str),
                "precision": runtimes["eager"].get("precision", "fp32")}
    others, warnings = [], []
    for name, entry in ((n, e) for n, e in runtimes.items() if n != "eager"):
        p50 = _get(data, ["runtimes", name, "latency_ms", "p50"], path, w, "number or null")
        if p50 is None:
            warnings.append(f"{path}: runtime '{name}' has no p50 latency: skipped")
        else:
            others.append(Runtime(name, float(p50), dict(entry.get("ap_delta_vs_eager") or {})))
    lat = Latency(path, tool, config_file, _label(config_key(config_file)), float(eager_p50), others)
    return LatencyFile(path, tool, settings, [lat], (data.get("environment") or {}).get("command_line"), warnings)


def describe_settings(s) -> str:
    return f"{s['device']}, {s['threads']} threads, {s['input']}, eager {s['precision']}"


def check_settings(files: Sequence[LatencyFile], allow_mixed=False):
    """The settings every latency file shares (``None`` without files). Files that differ raise
    :class:`MixedSettingsError` naming the files of each setting, unless ``allow_mixed`` (then
    ``None`` and a warning)."""
    groups = {}
    for f in files:
        groups.setdefault(tuple(sorted(f.settings.items())), []).append(f.path)
    if len(groups) <= 1:
        return (dict(next(iter(groups))) if groups else None), []
    differ = [SETTING_NAMES[k] for k in SETTING_NAMES if len({dict(g)[k] for g in groups}) > 1]
    lines = [f"  {describe_settings(dict(g))}: {', '.join(paths)}" for g, paths in groups.items()]
    text = (f"the latency files differ in {', '.join(differ)} (a frontier compares like with like):\n"
            + "\n".join(lines))
    if not allow_mixed:
        raise MixedSettingsError(text + "\nmeasure them alike, or pass --allow-mixed-settings to plot them anyway")
    return None, [text.replace("\n  ", "; ") + " (plotted anyway: --allow-mixed-settings)"]


@dataclass
class Row:
    """One config of the table: its AP over seeds and the latencies joined to it."""

    summary: SeedSummary
    label: str
    benchmark: Optional[Latency] = None  # tools/benchmark.py
    deploy: Optional[Latency] = None  # tools/benchmark_deploy.py
    notes: List[str] = field(default_factory=list)

    @property
    def eager(self) -> Optional[Latency]:
        """The source of the eager p50: the deploy benchmark (the run its runtimes come from), else
        tools/benchmark.py."""
        return self.deploy or self.benchmark

    @property
    def best(self) -> Optional[Runtime]:
        return self.deploy.best if self.deploy else None

    def point(self, metric):
        """``(eager x, AP, std, best runtime x or None, its AP)``, or ``None`` when not plotted."""
        ap = self.summary.ap.get(metric)
        if ap is None or self.eager is None:
            return None
        best = self.best
        delta = best.ap_delta.get(metric) if best else None
        y_best = ap["mean"] + delta if _is_number(delta) and math.isfinite(delta) else ap["mean"]
        return self.eager.eager_p50, ap["mean"], ap["std"], (best.p50 if best else None), y_best


def build_rows(summaries: Sequence[SeedSummary], files: Sequence[LatencyFile], metric="segm"):
    """Join summaries and latencies by :func:`config_key`: ``(rows, warnings)``, rows in the order
    of ``summaries``."""
    rows, labels = {}, [_label(s.key) for s in summaries]
    for s in summaries:
        if s.key in rows:
            raise FrontierInputError(f"two seeds summaries of config {s.key}: {rows[s.key].summary.path} and "
                                     f"{s.path}; give one per config")
        rows[s.key] = Row(s, _label(s.key) if labels.count(_label(s.key)) == 1 else s.key)
    warnings = [w for f in files for w in f.warnings]
    for lat in (lat for f in files for lat in f.latencies):
        row = rows.get(lat.key)
        if row is None:
            warnings.append(f"{lat.path}: latency of {lat.key} ('{lat.name}') has no seeds summary: ignored")
            continue
        slot = "deploy" if lat.tool == "tools/benchmark_deploy.py" else "benchmark"
        other = getattr(row, slot)
        if other is not None:
            raise FrontierInputError(f"two {lat.tool} latencies of config {lat.key}: {other.path} ('{other.name}') "
                                     f"and {lat.path} ('{lat.name}'); give one per config")
        setattr(row, slot, lat)
    for row in rows.values():
        if row.deploy and row.benchmark:
            row.notes.append(f"eager p50 from the deploy benchmark, {row.deploy.path} (tools/benchmark.py measured "
                             f"{row.benchmark.eager_p50:.1f} ms, {row.benchmark.path})")
        if row.eager is None:
            row.notes.append("no latency measurement: not plotted")
        elif metric not in row.summary.ap:
            row.notes.append(f"no {metric} AP in the summary: not plotted")
        elif not math.isfinite(row.summary.ap[metric]["std"]):
            row.notes.append("one seed: no error bar")
        best = row.best
        if best and metric in row.summary.ap and not _is_number(best.ap_delta.get(metric)):
            row.notes.append(f"{best.name}: no {metric} AP difference to eager measured: drawn at eager's AP")
    return list(rows.values()), warnings


def pareto(points):
    """The points (``(x, y, ...)``) no other point beats in both latency (lower) and AP (higher),
    by increasing latency."""
    front = [p for p in points if not any(q[0] <= p[0] and q[1] >= p[1] and (q[0], q[1]) != (p[0], p[1])
                                          for q in points)]
    return sorted(front, key=lambda p: (p[0], p[1]))


def _points(rows, metric):
    """``(x, y, text)`` of every plotted marker (eager and best runtime)."""
    out = []
    for r in rows:
        p = r.point(metric)
        if p:
            out.append((p[0], p[1], f"{r.label} eager"))
            if p[3] is not None:
                out.append((p[3], p[4], f"{r.label} {r.best.name}"))
    return out


def _ap_text(m):
    if m is None:
        return "-"
    seeds = f"{m['n']} seed" + ("s" if m["n"] != 1 else "")
    return (f"{m['mean']:.1f} ± {m['std']:.1f} ({seeds})" if math.isfinite(m["std"])
            else f"{m['mean']:.1f} ({seeds})")


def _best_text(row, metric):
    best = row.best
    if best is None:
        return "-"
    d = best.ap_delta.get(metric)
    return f"{best.name} {best.p50:.1f} ({metric} ΔAP {f'{d:+.2f}' if _is_number(d) else '-'})"


def markdown_report(rows, files, metric, settings, warnings, png_name="frontier.png", command_line=None) -> str:
    """The table of every config (plotted or not), the Pareto points, notes and sources."""
    sources = [(f"S{i + 1}", r.summary.path, "tools/demo.py --seeds", r.summary.command) for i, r in enumerate(rows)]
    sources += [(f"L{i + 1}", f.path, f.tool, f.command) for i, f in enumerate(files)]
    refs = {path: ref for ref, path, _, _ in sources}
    lines = [f"# Speed-accuracy frontier: {metric} AP against latency per image", ""]
    if command_line:
        lines.append(f"- command: `{command_line}`")
    lines += [f"- figure: {png_name}; plotted: {metric} AP (COCO, mean ± sample std over seeds) against p50 "
              "latency per image in ms; eager and the fastest exported runtime of the deploy benchmark, joined",
              "- latency settings: " + (describe_settings(settings) if settings else
                                        "**mixed** (see the notes)" if files else "no latency file"), "",
              "| config | segm AP mean ± std (seeds) | bbox AP mean ± std (seeds) | eager p50 ms | "
              "best runtime p50 ms (ΔAP vs eager) | sources |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        used = [r.summary.path] + [lat.path for lat in (r.deploy, r.benchmark) if lat is not None]
        srcs = ", ".join(sorted({refs[p] for p in used}, key=lambda ref: (ref[0] != "S", int(ref[1:]))))
        eager = f"{r.eager.eager_p50:.1f}" if r.eager else "-"
        lines.append(f"| {r.label} | {_ap_text(r.summary.ap.get('segm'))} | {_ap_text(r.summary.ap.get('bbox'))} | "
                     f"{eager} | {_best_text(r, metric)} | {srcs} |")
    front = pareto(_points(rows, metric))
    if front:
        lines += ["", "Pareto frontier (no other point is both faster and more accurate), fastest first: "
                  + ", ".join(f"{t} ({x:.1f} ms, {y:.1f} AP)" for x, y, t in front)]
    notes = [f"{r.label}: {n}" for r in rows for n in r.notes] + list(warnings)
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    lines += ["", "Sources:", ""]
    for ref, path, tool, command in sources:
        lines.append(f"- {ref}: `{path}` ({tool})" + (f": `{command}`" if command else ""))
    return "\n".join(lines) + "\n"


def draw_frontier(rows, metric, settings, path, mixed=False):
    """``frontier.png`` of the rows (see :func:`light_rcnn.analysis.frontier_figure.draw_points`)."""
    from .frontier_figure import draw_points

    plotted = [(r.label, r.point(metric), r.best.name if r.best else None) for r in rows if r.point(metric)]
    where = "mixed settings" if mixed else (describe_settings(settings) if settings else "")
    draw_points(plotted, pareto(_points(rows, metric)), metric, where, path)


def plot_frontier(summary_paths, latency_paths=(), output_dir="output/frontier", metric="segm",
                  allow_mixed_settings=False, command_line=None) -> Dict[str, object]:
    """Read the inputs, join them, write ``frontier.png`` and ``frontier.md`` into ``output_dir``.

    Returns ``{"png", "markdown" (paths), "text" (the Markdown), "rows", "warnings"}``.
    Raises :class:`FrontierInputError` (:class:`MixedSettingsError`) naming the file at fault."""
    if metric not in METRICS:
        raise ValueError(f"metric '{metric}': choose one of {', '.join(METRICS)}")
    summaries = [load_summary(p) for p in summary_paths]
    files = [load_latency(p) for p in latency_paths]
    settings, warnings = check_settings(files, allow_mixed_settings)
    rows, more = build_rows(summaries, files, metric)
    warnings = warnings + more
    os.makedirs(output_dir, exist_ok=True)
    png, md = os.path.join(output_dir, "frontier.png"), os.path.join(output_dir, "frontier.md")
    draw_frontier(rows, metric, settings, png, mixed=bool(files) and settings is None)
    text = markdown_report(rows, files, metric, settings, warnings, os.path.basename(png), command_line)
    with open(md, "w") as f:
        f.write(text)
    return {"png": png, "markdown": md, "text": text, "rows": rows, "warnings": warnings}
