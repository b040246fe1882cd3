"""Decomposition of a trained detector from its config and checkpoint (He et al., CVPR-W 2019,
Sec. 3.1-3.6), the library side of ``tools/decompose_net.py``: strict weight loading, the data the
responses are sampled from, Algorithm 1-3 over the matched layers, and the config that rebuilds the
decomposed model."""
import logging
import os

import numpy as np
from detectron2.checkpoint import DetectionCheckpointer

from ..modeling_hooks import build_model
from .hook import find_decomposable_convs
from .solvers import decompose_layers

__all__ = [
    "build_decomposition_loader",
    "check_rebuilds",
    "decompose_trained_model",
    "decomposed_config",
    "format_reports",
    "load_weights_strict",
]

logger = logging.getLogger(__name__)

# Buffers that detectron2's checkpointer does not require (set from MODEL.PIXEL_MEAN / PIXEL_STD).
_OPTIONAL_KEYS = ("pixel_mean", "pixel_std")


def build_decomposition_loader(cfg, num_images=None, seed=None):
    """Deterministic batches (one image each) of ``num_images`` random images of DATASETS.TRAIN.

    The images are drawn once with ``seed`` and mapped like test images (resize to
    INPUT.MIN_SIZE_TEST, no flip), so every pass over the loader -- Algorithm 3 makes one per layer
    -- sees the same inputs, at the size the network is used at.
    """
    from detectron2.data import build_detection_test_loader, get_detection_dataset_dicts

    from ...data.dataset_checks import CheckedDatasetMapper

    d = cfg.MODEL.DECOMPOSE
    num_images = d.NUM_IMAGES if num_images is None else num_images
    seed = d.SEED if seed is None else seed
    dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)
    if num_images <= 0:
        raise ValueError(f"MODEL.DECOMPOSE.NUM_IMAGES={num_images}: expected a positive number")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(dicts), size=min(num_images, len(dicts)), replace=False).tolist())
    return build_detection_test_loader(
        dataset=[dicts[i] for i in chosen],
        mapper=CheckedDatasetMapper(cfg, is_train=False),
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )


def load_weights_strict(model, path, key="weights", what="the model"):
    """Load ``path`` into ``model`` with detectron2's DetectionCheckpointer and refuse weights that
    leave parameters or buffers missing or mis-shaped (decomposing partly random layers would
    silently produce garbage). detectron2 drops mis-shaped tensors before ``load_state_dict``, so
    both show up as missing keys, which a load-state-dict post-hook collects.

    Raises:
        ValueError naming ``key``, ``path``, ``what`` and the first offending keys.
    """
    missing = []

    def collect(module, incompatible):
        missing.extend(k for k in incompatible.missing_keys if k not in _OPTIONAL_KEYS)

    handle = model.register_load_state_dict_post_hook(collect)
    try:
        DetectionCheckpointer(model).load(path)
    finally:
        handle.remove()
    if missing:
        state = model.state_dict()
        bad = [f"{k} {tuple(state[k].shape)}" for k in missing]
        raise ValueError(
            f"{key} '{path}' does not fit {what}: missing or of another shape in the file: "
            f"{'; '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}"
        )


def decompose_trained_model(cfg, weights, layers, layers_key="MODEL.DECOMPOSE.LAYERS", weights_key="weights",
                            what="the model"):
    """Build ``cfg``'s model (:func:`light_rcnn.build_model`), load ``weights`` strictly and replace
    every conv matched by ``layers`` with a decomposition fitted to responses sampled from
    DATASETS.TRAIN (``MODEL.DECOMPOSE``: METHOD, NUM_IMAGES, PATCHES_PER_IMAGE, COMPENSATE,
    MULTI_LAYER, CHANNEL_RANK_RATIO, SEED).

    ``cfg.MODEL.DECOMPOSE.LAYERS`` must be empty: ``cfg`` describes the undecomposed model whose
    weights these are. ``layers_key`` / ``weights_key`` / ``what`` name the inputs in error messages.
    Returns (model, list of :class:`LayerReport`).
    """
    if cfg.MODEL.DECOMPOSE.LAYERS:
        raise ValueError(
            f"the config already decomposes MODEL.DECOMPOSE.LAYERS={list(cfg.MODEL.DECOMPOSE.LAYERS)}; "
            "give the config of the undecomposed model whose weights these are"
        )
    d = cfg.MODEL.DECOMPOSE
    model = build_model(cfg)
    load_weights_strict(model, weights, key=weights_key, what=what)
    names = find_decomposable_convs(model, layers, key=layers_key)
    logger.info("decomposing %d layers with %s, %d images x %d patches", len(names), d.METHOD, d.NUM_IMAGES,
                d.PATCHES_PER_IMAGE)
    reports = decompose_layers(
        model, names, build_decomposition_loader(cfg), method=d.METHOD, compensate=d.COMPENSATE,
        multi_layer=d.MULTI_LAYER, rank_ratio=d.CHANNEL_RANK_RATIO, num_images=d.NUM_IMAGES,
        patches_per_image=d.PATCHES_PER_IMAGE, seed=d.SEED,
    )
    return model, reports


def decomposed_config(cfg, layers, weights, output_dir):
    """``cfg`` for the decomposed model: ``MODEL.DECOMPOSE.LAYERS`` = ``layers``, META_ARCHITECTURE
    "GeneralizedRCNN" turned into "DecomposedGeneralizedRCNN" (a config that already applies the
    decomposition through its META_ARCHITECTURE or ``MODEL.MODELING_HOOKS`` keeps them),
    ``MODEL.WEIGHTS`` = ``weights`` (absolute) and OUTPUT_DIR ``<output_dir>/finetune``."""
    out = cfg.clone()
    out.defrost()
    if out.MODEL.META_ARCHITECTURE == "GeneralizedRCNN" and "DecompositionHook" not in out.MODEL.MODELING_HOOKS:
        out.MODEL.META_ARCHITECTURE = "DecomposedGeneralizedRCNN"
    out.MODEL.DECOMPOSE.LAYERS = list(layers)
    out.MODEL.WEIGHTS = os.path.abspath(weights)
    out.OUTPUT_DIR = os.path.join(os.path.abspath(output_dir), "finetune")
    return out


def check_rebuilds(cfg, model):
    """Raise RuntimeError unless ``cfg`` builds (:func:`light_rcnn.build_model`, on the CPU) a model
    with exactly ``model``'s state-dict keys."""
    probe = cfg.clone()
    probe.defrost()
    probe.MODEL.DEVICE = "cpu"
    rebuilt = set(build_model(probe).state_dict())
    have = set(model.state_dict())
    if rebuilt != have:
        raise RuntimeError(
            f"META_ARCHITECTURE {cfg.MODEL.META_ARCHITECTURE!r} with MODEL.MODELING_HOOKS "
            f"{list(cfg.MODEL.MODELING_HOOKS)} does not rebuild the decomposed model (keys only in the rebuilt "
            f"one: {sorted(rebuilt - have)[:5]}, only in the decomposed one: {sorted(have - rebuilt)[:5]}); "
            "add 'DecompositionHook' to MODEL.MODELING_HOOKS"
        )


def format_reports(reports):
    """One line per decomposed layer: kernel, channels, multiply-adds per position, relative error."""
    lines = [f"{'layer':<44}{'kernel':>8}{'C_in->C_out':>14}{'MACs/pos':>20}{'speed-up':>9}{'rel. error':>11}"]
    for r in reports:
        kernel = "x".join(map(str, r.kernel_size))
        lines.append(f"{r.name:<44}{kernel:>8}{f'{r.in_channels}->{r.out_channels}':>14}"
                     f"{f'{r.macs_before}->{r.macs_after}':>20}{r.speedup:>8.1f}x{r.relative_error:>11.4f}")
    return "\n".join(lines)
