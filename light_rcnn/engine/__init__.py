"""Training and evaluation entry points built on detectron2's DefaultTrainer."""
from .checkpoint import AtomicDetectionCheckpointer, AtomicFile, check_output_dir, check_weights
from .trainer import Trainer

__all__ = ["AtomicDetectionCheckpointer", "Trainer", "check_output_dir", "check_weights"]
