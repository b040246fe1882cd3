"""Checkpoints that are never lost: atomic writes, no silent overwrite, no hidden downloads.

Choices (README "Bad input"):
* a checkpoint is written to a temporary file in the same folder and renamed over the target, so a
  run killed while saving never leaves a truncated ``model_*.pth`` or ``last_checkpoint``;
* a fresh run (no ``--resume``) refuses an OUTPUT_DIR that already holds checkpoints, naming it,
  because detectron2 would overwrite them as soon as it saves; pass ``--resume`` to continue, or
  choose another OUTPUT_DIR;
* weights that would be fetched from the network (``detectron2://``, ``http(s)://``) fail with a
  message saying which file to provide, since these machines reach only package registries.
  Set ``LIGHT_RCNN_ALLOW_DOWNLOAD=1`` on a machine that can download.
"""
import glob
import os
import tempfile

from detectron2.checkpoint import DetectionCheckpointer

REMOTE_PREFIXES = ("detectron2://", "http://", "https://")


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
    """detectron2's checkpointer whose checkpoint and ``last_checkpoint`` writes are atomic."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        make_writes_atomic(self)


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
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"{key} '{weights}' does not exist or is not a file")
