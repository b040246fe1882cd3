"""Checkpoints that are never lost: atomic writes, no silent overwrite, no hidden downloads.

Choices (README "Bad input"):
* a checkpoint is written to a temporary file in the same folder and renamed over the target, so a
  run killed while saving never leaves a truncated ``model_*.pth`` or ``last_checkpoint``;
* a fresh run (no ``--resume``) refuses an OUTPUT_DIR that already holds checkpoints, naming it,
  because detectron2 would overwrite them as soon as it saves; pass ``--resume`` to continue, or
  choose another OUTPUT_DIR;
* weights that would be fetched from the network (``detectron2://``, ``http(s)://``) fail with a
  message saying which file to provide, since these machines reach only package registries.
  Set ``LIGHT_RCNN_ALLOW_DOWNLOAD=1`` on a machine that can download;
* a classifier trunk (tools/train_classifier.py) that does not fit the detector fails, naming the
  keys, instead of leaving layers at their random initialization (detectron2 only logs them):
  :func:`check_pretrained_backbone`, run by :class:`AtomicDetectionCheckpointer` whenever the
  loaded file is such a checkpoint (it has an ``"arch"`` entry). It applies detectron2's own
  matching rule (with ``matching_heuristics``: a checkpoint key loads into the model key it is the
  longest dot-separated suffix of, if the shapes agree; without: equal names). Counters
  (``num_batches_tracked``) are ignored. A last trunk stage the detector does not have at all
  (:data:`OPTIONAL_TRUNK_MODULES`: ``res5`` for Light Mask R-CNN, which stops at C4; ``stage5``
  for stage4 mobile detectors) may go unused; a stage the detector has must load completely.
  Only the trunk loads from such a file (:func:`trunk_prefixes`), nothing else of the detector.
"""
import glob
import logging
import os
import tempfile

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager

REMOTE_PREFIXES = ("detectron2://", "http://", "https://")
# Top-level checkpoint modules (last trunk stages) that a detector may lack entirely.
OPTIONAL_TRUNK_MODULES = ("res5", "stage5")
# Keys listed in full in a ValueError; longer lists are cut with a count.
_MAX_LISTED_KEYS = 12

logger = logging.getLogger(__name__)


class AtomicFile:
    """A file opened for writing as a temporary sibling; renamed over the target on a clean close,
    deleted if the ``with`` block raised, so ``path`` is either untouched or complete::

        with AtomicFile(path, "wb") as f:
            torch.save(obj, f)
    """

    def __init__(self, path, mode):
        self._path = path
        fd, self._tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=os.path.dirname(path) or ".")
        self._f = os.fdopen(fd, mode)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self._f

    def __exit__(self, exc_type, exc, tb):
        self._f.close()
        if exc_type is None:
            os.replace(self._tmp, self._path)
        else:
            os.remove(self._tmp)
        return False


class _AtomicWritePathManager:
    """Delegates to iopath's PathManager, but local writes go through :class:`AtomicFile`."""

    def __init__(self, path_manager):
        self._pm = path_manager

    def __getattr__(self, name):
        return getattr(self._pm, name)

    def open(self, path, mode="r", **kwargs):
        if "w" in mode and "://" not in path:
            return AtomicFile(path, mode)
        return self._pm.open(path, mode, **kwargs)


def make_writes_atomic(checkpointer):
    """Make an fvcore/detectron2 ``Checkpointer``'s local writes (checkpoints and
    ``last_checkpoint``) atomic, in place; returns it. Idempotent."""
    if not isinstance(checkpointer.path_manager, _AtomicWritePathManager):
        checkpointer.path_manager = _AtomicWritePathManager(checkpointer.path_manager)
    return checkpointer


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """detectron2's checkpointer whose checkpoint and ``last_checkpoint`` writes are atomic, and
    which refuses a classifier checkpoint (one with an ``"arch"`` entry, written by
    tools/train_classifier.py) that does not fit the detector's trunk
    (:func:`check_pretrained_backbone`, ``ValueError``). ``strict_pretrained=False`` loads such a
    file as detectron2 does (mismatches only logged). Detection checkpoints (resume,
    ``model_final.pth``) are loaded unchanged."""

    def __init__(self, *args, strict_pretrained=True, **kwargs):
        super().__init__(*args, **kwargs)
        self.strict_pretrained = bool(strict_pretrained)
        make_writes_atomic(self)

    def load(self, path, *args, **kwargs):
        self._loading_path = path
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self._loading_path = None

    def _load_model(self, checkpoint):
        if self.strict_pretrained and is_classifier_checkpoint(checkpoint):
            loaded = check_pretrained_backbone(self.model, checkpoint,
                                               name=getattr(self, "_loading_path", None))
            # Load the trunk only: detectron2's suffix matching would also fill non-trunk layers
            # whose names and shapes happen to agree (e.g. res5 norms of ThinRes5ROIHeads).
            trunk_sources = set(loaded.values())
            checkpoint["model"] = {k: v for k, v in checkpoint["model"].items() if k in trunk_sources}
        return super()._load_model(checkpoint)


def load_classifier_trunk(model, weights):
    """Load ``weights``, a classifier checkpoint (tools/train_classifier.py), into ``model``'s
    trunk only, after :func:`check_pretrained_backbone`. Returns False, loading nothing, when
    ``weights`` is not a local classifier ``.pth`` (a detection checkpoint, a ``.pkl``, none)."""
    local = local_weights_path(weights)
    if not local or not local.endswith(".pth") or not os.path.isfile(local):
        return False
    if not is_classifier_checkpoint(torch.load(local, map_location="cpu", weights_only=False)):
        return False
    AtomicDetectionCheckpointer(model).load(local, checkpointables=[])
    return True


def is_classifier_checkpoint(checkpoint):
    """Whether ``checkpoint`` (a loaded dict) was written by tools/train_classifier.py."""
    return isinstance(checkpoint, dict) and "arch" in checkpoint and "model" in checkpoint


def _unwrap(model):
    return model.module if isinstance(model, (torch.nn.parallel.DistributedDataParallel,
                                              torch.nn.DataParallel)) else model


def trunk_prefixes(model):
    """Prefixes of ``model``'s state-dict keys that a classifier trunk must fill completely:
    ``backbone.bottom_up.`` when the backbone wraps a bottom-up network (Light Mask R-CNN's
    large-kernel neck, FPN), else ``backbone.``; plus ``roi_heads.res5.`` when the ROI heads hold
    ResNet's res5 stage on res4 (detectron2's Res5ROIHeads, Mask R-CNN C4), not when they say
    ``res5_is_trunk_stage = False`` (ThinRes5ROIHeads: res5-shaped blocks on the neck's output)."""
    model = _unwrap(model)
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        raise ValueError(f"{type(model).__name__} has no 'backbone'; pass the trunk prefixes")
    prefixes = ["backbone.bottom_up." if hasattr(backbone, "bottom_up") else "backbone."]
    roi_heads = getattr(model, "roi_heads", None)
    if hasattr(roi_heads, "res5") and getattr(roi_heads, "res5_is_trunk_stage", True):
        prefixes.append("roi_heads.res5.")
    return tuple(prefixes)


def _list_keys(keys, limit=_MAX_LISTED_KEYS):
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


def _is_counter(key):
    return key.rsplit(".", 1)[-1] == "num_batches_tracked"


def check_pretrained_backbone(model, checkpoint, prefixes=None,
                              optional_modules=OPTIONAL_TRUNK_MODULES, name=None):
    """Check that a pretrained trunk fills the detector's trunk and is used completely.

    Args:
        model: the detector (a DDP/DataParallel wrapper is unwrapped).
        checkpoint: a path (``torch.load``-ed), a loaded checkpoint dict with ``"model"`` (its
            ``"matching_heuristics"`` decides the matching, as in DetectionCheckpointer), or a
            bare state dict (matched by suffix).
        prefixes: model key prefixes whose every tensor must come from the checkpoint (default
            :func:`trunk_prefixes`).
        optional_modules: top-level checkpoint modules that may go unused when no model key has
            a component of that name (default :data:`OPTIONAL_TRUNK_MODULES`).
        name: how the error names the checkpoint (default: the path, else "the checkpoint").
    Returns:
        dict model key -> checkpoint key of every tensor that loads.
    Raises:
        ValueError: naming the trunk tensors the checkpoint does not provide ("missing", with the
            shapes where a key matched with another shape), the checkpoint tensors that load
            nowhere ("unused"), and checkpoint keys that would load into several model keys.
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        name = name or os.fspath(checkpoint)
        checkpoint = torch.load(os.fspath(checkpoint), map_location="cpu", weights_only=False)
    name = f"'{name}'" if name else "the checkpoint"
    if "model" in checkpoint and isinstance(checkpoint["model"], dict):
        ckpt, heuristics = checkpoint["model"], bool(checkpoint.get("matching_heuristics", False))
    else:
        ckpt, heuristics = checkpoint, True
    model = _unwrap(model)
    prefixes = tuple(prefixes) if prefixes is not None else trunk_prefixes(model)
    model_state = model.state_dict()

    loaded, wrong_shape = {}, {}
    for key in model_state:
        if heuristics:  # detectron2's align_and_update_state_dicts: the longest matching suffix
            parts = key.split(".")
            source = next((s for s in (".".join(parts[i:]) for i in range(len(parts)))
                           if s in ckpt), None)
        else:
            source = key if key in ckpt else None
        if source is None:
            continue
        if tuple(ckpt[source].shape) != tuple(model_state[key].shape):
            wrong_shape[key] = (source, tuple(ckpt[source].shape), tuple(model_state[key].shape))
            continue
        loaded[key] = source

    required = [k for k in model_state if k.startswith(prefixes) and not _is_counter(k)]
    if not required:
        raise ValueError(f"{type(model).__name__} has no state under {list(prefixes)}")
    # Only the trunk loads: a checkpoint tensor that fits a layer outside it (the res5 of
    # ThinRes5ROIHeads, which reads the neck, not res4) is not a use of that tensor.
    loaded = {k: v for k, v in loaded.items() if k.startswith(prefixes)}
    targets = {}
    for key, source in loaded.items():
        targets.setdefault(source, []).append(key)
    missing = [k for k in required if k not in loaded]
    components = {c for k in required for c in k.split(".")}
    unused = [k for k in ckpt if k not in targets and not _is_counter(k)
              and not (k.split(".", 1)[0] in optional_modules
                       and k.split(".", 1)[0] not in components)]
    ambiguous = {k: v for k, v in targets.items() if len(v) > 1}

    problems = []
    if missing:
        shapes = [f"{k} (checkpoint {wrong_shape[k][0]} {wrong_shape[k][1]}, model "
                  f"{wrong_shape[k][2]})" for k in sorted(missing) if k in wrong_shape]
        problems.append(f"missing backbone keys, not provided by the checkpoint: "
                        f"{_list_keys(missing)}"
                        + (f"; shape mismatches: {_list_keys(shapes, 3)}" if shapes else ""))
    if unused:
        problems.append(f"unused checkpoint keys, loaded nowhere in the model: {_list_keys(unused)}")
    if ambiguous:
        problems.append("checkpoint keys matching several model keys: " + _list_keys(
            f"{k} -> {' and '.join(v)}" for k, v in ambiguous.items()))
    if problems:
        raise ValueError(
            f"{name} does not fit the trunk of {type(model).__name__} (under {list(prefixes)}): "
            + "; ".join(problems) + ". Build the detector with the MODEL.RESNETS / "
            "MODEL.MOBILENET keys the classifier was trained with (the checkpoint's 'resnets', "
            "'width_mult', 'mobilenet_opts').")
    skipped = sorted({k.split(".", 1)[0] for k in ckpt if k not in targets and not _is_counter(k)})
    logger.info(f"Pretrained trunk fits {type(model).__name__}: {len(loaded)} tensors under "
                f"{list(prefixes)}" + (f"; not used (absent from this detector): {skipped}"
                                       if skipped else ""))
    return loaded


def existing_checkpoints(output_dir):
    """Checkpoint files (``*.pth``, ``last_checkpoint``) already in ``output_dir``."""
    found = sorted(glob.glob(os.path.join(output_dir, "*.pth")))
    if os.path.exists(os.path.join(output_dir, "last_checkpoint")):
        found.append(os.path.join(output_dir, "last_checkpoint"))
    return found


def check_output_dir(output_dir, resume, eval_only):
    """Refuse to start a fresh training run over existing checkpoints (see module docstring)."""
    if resume or eval_only:
        return
    found = existing_checkpoints(output_dir)
    if found:
        raise FileExistsError(
            f"OUTPUT_DIR '{output_dir}' already holds checkpoints ({', '.join(map(os.path.basename, found[:3]))}"
            f"{', ...' if len(found) > 3 else ''}); a fresh run would overwrite them. "
            "Pass --resume to continue that run, or set OUTPUT_DIR to a new folder."
        )


def check_weights(weights, key="MODEL.WEIGHTS"):
    """Fail early, naming ``key``, when ``weights`` would be downloaded or does not exist."""
    if not weights:
        return
    if weights.startswith(REMOTE_PREFIXES):
        if os.environ.get("LIGHT_RCNN_ALLOW_DOWNLOAD") == "1":
            return
        raise FileNotFoundError(
            f"{key} is '{weights}', which would be downloaded, and this machine cannot download "
            f"model weights. Fetch that file on a machine with internet access and pass "
            f"'{key} /path/to/{os.path.basename(weights)}', or '{key} \"\"' to train from scratch "
            "(use trainable normalization then), or set LIGHT_RCNN_ALLOW_DOWNLOAD=1 where downloads work."
        )
    local = local_weights_path(weights)  # raises, naming the build command, for an unbuilt generated trunk
    if not os.path.isfile(local):
        raise FileNotFoundError(f"{key} '{weights}' does not exist or is not a file")


def local_weights_path(weights):
    """The local file of ``weights``: itself, or what a registered ``PREFIX://`` handler (e.g.
    ``light_rcnn_trunk://``, :mod:`light_rcnn.engine.shapes_trunks`) resolves it to. Remote
    prefixes are not resolved (:func:`check_weights` refuses them)."""
    if weights and "://" in weights and not weights.startswith(REMOTE_PREFIXES):
        return PathManager.get_local_path(weights)
    return weights
