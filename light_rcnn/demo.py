"""The end-to-end demo behind ``make demo`` (``tools/demo.py``).

It trains through the same :class:`light_rcnn.engine.Trainer` as ``tools/train_net.py`` (one
process), evaluates with detectron2's COCOEvaluator on ``shapes_val``, and draws the trained
model's masks with detectron2's ``Visualizer``. Training is seeded by the config's ``SEED``
(as ``default_setup`` does for train_net); :func:`run_demo_seeds` repeats the demo over several
seeds and reports mean, standard deviation and minimum of each AP.

Resuming (``tools/demo.py --resume``, for studies that outlive a session): a run continues from
its folder's last checkpoint as ``tools/train_net.py --resume`` does (model, optimizer, scheduler
and iteration; not the data loader's position, so a resumed run is not bit-identical to an
uninterrupted one), after checking that the folder's ``config.yaml`` is the config asked for. A
finished run leaves ``results.json`` (its COCO results and timings) beside ``model_final.pth``;
with several seeds, a seed whose ``results.json`` exists is read back, not trained again, and its
time is the one recorded when it finished (a resumed seed's time counts its last invocation only).
"""
import contextlib
import json
import logging
import os
import statistics
import time

import cv2
import numpy as np
import yaml
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import ColorMode, Visualizer

from .config import flatten_config, load_config
from .data import register_builtin_datasets
from .engine import AtomicFile, Trainer, check_output_dir, check_weights
from .engine.predictor import Predictor

DEFAULT_DEMO_CONFIG = "light_rcnn://shapes/light_mask_rcnn_fd_mobilenet_iou_loss_shapes.yaml"
# The AP figures :func:`run_demo_seeds` aggregates, per task.
SEED_SUMMARY_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# What a finished run leaves beside model_final.pth: {"results": {task: {metric: value}}, "timings": {...}}.
RESULTS_FILE = "results.json"


def draw_predictions(cfg, weights, dataset_name, out_file, num_images=6, min_score=0.5):
    """Load ``weights`` into the model of ``cfg`` (:class:`light_rcnn.engine.predictor.Predictor`), draw its masks
    scoring at least ``min_score`` on the first ``num_images`` images of ``dataset_name`` side by
    side and write ``out_file`` (PNG). (Evaluation keeps every detection down to the config's
    ``ROI_HEADS.SCORE_THRESH_TEST``, as COCO AP needs; drawing those would bury the picture.)"""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = weights
    predictor = Predictor(cfg)
    metadata = MetadataCatalog.get(dataset_name)
    panels = []
    for d in DatasetCatalog.get(dataset_name)[:num_images]:
        image = read_image(d["file_name"], format="BGR")
        instances = predictor(image)["instances"].to("cpu")
        instances = instances[instances.scores >= min_score]
        vis = Visualizer(image[:, :, ::-1], metadata=metadata, scale=2.0, instance_mode=ColorMode.IMAGE)
        panels.append(vis.draw_instance_predictions(instances).get_image()[:, :, ::-1])
    height = max(p.shape[0] for p in panels)
    panels = [np.pad(p, ((0, height - p.shape[0]), (0, 4), (0, 0)), constant_values=255) for p in panels]
    os.makedirs(os.path.dirname(out_file) or ".", exist_ok=True)
    if not cv2.imwrite(out_file, np.concatenate(panels, axis=1)):
        raise OSError(f"could not write {out_file}")
    return out_file


def format_summary(results, timings, output_dir, png):
    lines = ["", "=" * 72, "light_rcnn demo summary", "=" * 72]
    for task in ("bbox", "segm"):
        r = results.get(task, {})
        lines.append(
            f"{task:5s} AP {r.get('AP', float('nan')):5.1f}  AP50 {r.get('AP50', float('nan')):5.1f}  "
            f"AP75 {r.get('AP75', float('nan')):5.1f}  APs {r.get('APs', float('nan')):5.1f}  "
            f"APm {r.get('APm', float('nan')):5.1f}  APl {r.get('APl', float('nan')):5.1f}"
        )
    lines.append("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    lines.append(f"outputs: {os.path.abspath(output_dir)}")
    lines.append(f"  checkpoint  {os.path.join(os.path.abspath(output_dir), 'model_final.pth')}")
    lines.append(f"  predictions {os.path.abspath(png)}")
    return "\n".join(lines)


@contextlib.contextmanager
def _run_log(output_dir):
    """detectron2's logger printing to stdout and writing ``<output_dir>/log.txt`` for one run only.

    ``setup_logger`` adds a console and a file handler for every new output folder and never
    removes them, so a second run in the same process (``--seeds 0 1 2``) would print each line
    twice and keep writing into the first run's log.txt. The handlers this run added go when it
    ends (the file stream stays with detectron2's cache). ``setup_logger`` is called past its
    ``lru_cache`` (``__wrapped__``): that cache only guards against adding handlers twice, which
    this removal already does, and it would leave a second run into the same folder unlogged."""
    logger = logging.getLogger("detectron2")
    before = list(logger.handlers)
    setup_logger.__wrapped__(output=output_dir)
    try:
        yield
    finally:
        for handler in [h for h in logger.handlers if h not in before]:
            logger.removeHandler(handler)


def run_demo(config_file, output_dir, opts=(), num_images=6, resume=False):
    """Generate data, train, evaluate, draw; prints and returns ``(results, timings, png)``.
    ``resume``: continue the run in ``output_dir`` from its last checkpoint (module docstring)."""
    t0 = time.perf_counter()
    cfg = load_config(config_file, list(opts) + ["OUTPUT_DIR", output_dir])
    check_output_dir(cfg.OUTPUT_DIR, resume=resume, eval_only=False)
    if resume:
        check_same_config(cfg, os.path.join(cfg.OUTPUT_DIR, "config.yaml"))
    check_weights(cfg.MODEL.WEIGHTS)
    cfg.freeze()
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    with _run_log(cfg.OUTPUT_DIR):
        results, timings, png = _train_evaluate_draw(cfg, t0, num_images, resume)
    with AtomicFile(os.path.join(cfg.OUTPUT_DIR, RESULTS_FILE), "w") as f:
        json.dump({"results": results, "timings": timings}, f, indent=2)
    print(format_summary(results, timings, cfg.OUTPUT_DIR, png), flush=True)
    return results, timings, png


def check_same_config(cfg, saved_file):
    """Before resuming: the run's saved ``config.yaml`` must hold ``cfg`` (compared as YAML data),
    else ValueError naming the folder and the keys that differ. ``OUTPUT_DIR`` is not compared (a
    run's folder may have moved; it is where the run is now). A missing file is fine (the run had
    not started)."""
    if not os.path.isfile(saved_file):
        return
    with open(saved_file) as f:
        saved = flatten_config(yaml.safe_load(f))
    asked = flatten_config(yaml.safe_load(cfg.dump()))
    keys = sorted(k for k in set(saved) | set(asked) if saved.get(k) != asked.get(k) and k != "OUTPUT_DIR")
    if keys:
        listed = ", ".join(f"{k} ({saved.get(k)!r} there, {asked.get(k)!r} asked)" for k in keys[:8])
        raise ValueError(f"cannot resume the run in '{os.path.dirname(saved_file)}': its config.yaml differs from "
                         f"the config asked for in {listed}{' ...' if len(keys) > 8 else ''}; resume with the "
                         "run's own config and overrides, or start a new folder")


def _train_evaluate_draw(cfg, t0, num_images, resume=False):
    # Same seeding as detectron2's default_setup (one process): SEED < 0 draws a random seed.
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED)
    with AtomicFile(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), "w") as f:
        f.write(cfg.dump())
    register_builtin_datasets(cfg)  # shapes, and its VOC / KITTI layouts when the config names them
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        DatasetCatalog.get(name)  # generates the embedded data on first use
    timings = {"data": time.perf_counter() - t0}

    t1 = time.perf_counter()
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()  # the final EvalHook runs COCOEvaluator on DATASETS.TEST
    results = trainer._last_eval_results or {}
    timings["train+eval"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    weights = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    png = os.path.join(cfg.OUTPUT_DIR, "predictions.png")
    draw_predictions(cfg, weights, cfg.DATASETS.TEST[0], png, num_images)
    timings["draw"] = time.perf_counter() - t2
    timings["total"] = time.perf_counter() - t0
    logging.getLogger("light_rcnn").info("demo finished")
    return results, timings, png


def summarize_seeds(per_seed):
    """``{seed: {task: {metric: value}}}`` -> ``{task: {metric: {"mean", "std", "min", "max", "n"}}}``
    (sample standard deviation, ``nan`` for one seed); missing or NaN values are left out."""
    summary = {}
    for task in ("bbox", "segm"):
        for key in SEED_SUMMARY_KEYS:
            values = [r.get(task, {}).get(key) for r in per_seed.values()]
            values = [float(v) for v in values if v is not None and v == v]
            if not values:
                continue
            summary.setdefault(task, {})[key] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else float("nan"),
                "min": min(values),
                "max": max(values),
                "n": len(values),
            }
    return summary


def format_seed_summary(per_seed, summary, seconds):
    lines = ["", "=" * 72, f"light_rcnn demo over {len(per_seed)} seeds", "=" * 72]
    for seed, r in per_seed.items():
        lines.append(
            f"seed {seed}: bbox AP {r.get('bbox', {}).get('AP', float('nan')):5.1f}  "
            f"segm AP {r.get('segm', {}).get('AP', float('nan')):5.1f}  ({seconds[seed]:.0f} s)"
        )
    for task in ("bbox", "segm"):
        for key in ("AP", "AP50"):
            m = summary.get(task, {}).get(key)
            if m:
                lines.append(
                    f"{task:5s} {key:5s} mean {m['mean']:5.1f} +- {m['std']:4.1f} (std)  "
                    f"min {m['min']:5.1f}  max {m['max']:5.1f}  n={m['n']}"
                )
    return "\n".join(lines)


def run_demo_seeds(config_file, output_dir, seeds, opts=(), num_images=6, resume=False):
    """Run :func:`run_demo` once per seed (``SEED <s>``, outputs in ``<output_dir>/seed<s>``), then
    print and write (``<output_dir>/seeds_summary.json``) mean +- std and min of every AP.
    ``resume``: a seed whose run finished (``results.json``) is read back, the others continue from
    their last checkpoint (or start, when they had not).

    Returns ``(per_seed_results, summary)``."""
    if not seeds:
        raise ValueError("run_demo_seeds: give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"run_demo_seeds: seeds must differ, got {list(seeds)}")
    if any(int(s) < 0 for s in seeds):
        raise ValueError(f"run_demo_seeds: seeds must be >= 0 (a negative SEED is random), got {list(seeds)}")
    summary_file = os.path.join(output_dir, "seeds_summary.json")
    if os.path.exists(summary_file):
        raise FileExistsError(f"{summary_file} exists (an earlier multi-seed run); pick a new --output-dir")
    per_seed, seconds = {}, {}
    for seed in seeds:
        t0 = time.perf_counter()
        seed_dir = os.path.join(output_dir, f"seed{int(seed)}")
        seed_opts = list(opts) + ["SEED", int(seed)]
        finished = os.path.join(seed_dir, RESULTS_FILE)
        if resume and os.path.isfile(finished):
            check_same_config(load_config(config_file, seed_opts + ["OUTPUT_DIR", seed_dir]),
                              os.path.join(seed_dir, "config.yaml"))
            with open(finished) as f:
                record = json.load(f)
            results, seconds[int(seed)] = record["results"], record["timings"]["total"]
            print(f"seed {seed}: finished earlier, read back from {finished}", flush=True)
        else:
            results, _, _ = run_demo(config_file, seed_dir, seed_opts, num_images, resume=resume)
            seconds[int(seed)] = time.perf_counter() - t0
        per_seed[int(seed)] = {t: dict(results.get(t, {})) for t in ("bbox", "segm")}
    summary = summarize_seeds(per_seed)
    os.makedirs(output_dir, exist_ok=True)
    with open(summary_file, "w") as f:
        json.dump({"config_file": config_file, "opts": [str(o) for o in opts], "per_seed": per_seed,
                   "seconds": seconds, "summary": summary}, f, indent=2)
    print(format_seed_summary(per_seed, summary, seconds), flush=True)
    return per_seed, summary
