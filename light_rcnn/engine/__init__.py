"""Training and evaluation entry points built on detectron2's DefaultTrainer."""
from .checkpoint import (
    AtomicDetectionCheckpointer,
    AtomicFile,
    check_output_dir,
    check_weights,
    make_writes_atomic,
)
from .trainer import Trainer

__all__ = [
    "AtomicDetectionCheckpointer",
    "AtomicFile",
    "Trainer",
    "check_output_dir",
    "check_weights",
    "make_writes_atomic",
]
