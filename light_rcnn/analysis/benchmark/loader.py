"""The ``data`` task: images/s of detectron2's training data loader on a registered data set."""
import time
from typing import Dict

import numpy as np

from .specs import BenchmarkSettings, ModelSpec
from .timing import latency_stats


def measure_loader(spec: ModelSpec, settings: BenchmarkSettings) -> Dict[str, object]:
    """Batches of ``build_detection_train_loader`` timed after ``warmup`` batches."""
    from detectron2.data import build_detection_train_loader

    from ...config import load_config

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
