"""The trainer behind ``tools/train_net.py``: detectron2's DefaultTrainer with these changes.

1. ``build_evaluator`` picks the evaluator from the data set's metadata ``evaluator_type``:
   ``coco`` -> :class:`COCOEvaluator` (bbox + segm AP with APs/APm/APl), ``pascal_voc`` ->
   :class:`PascalVOCDetectionEvaluator`.
2. ``SOLVER.OPTIMIZER`` may pick AdamW instead of detectron2's SGD (:meth:`build_optimizer`); the
   CPU/shapes configs train from scratch in under two thousand iterations, where AdamW converges
   much faster than SGD.
3. Both loaders use :class:`light_rcnn.data.dataset_checks.CheckedDatasetMapper`: training skips an
   undecodable image, evaluation raises ``RuntimeError`` naming it.
4. Checkpoint writes are atomic (:func:`light_rcnn.engine.checkpoint.make_writes_atomic`).
5. ``MODEL.MODELING_HOOKS`` are applied to the built model (:meth:`build_model`, i.e.
   :func:`light_rcnn.build_model`), and ``MODEL_EMA`` adds a weight-averaging hook
   (:class:`light_rcnn.engine.ema.ModelEMAHook`) before the checkpointer and evaluation.
6. CPU processes can train together (``--num-gpus 2`` on a machine without a GPU; ``launch()``
   starts GLOO processes there). See :class:`Trainer`.
7. On the CPU, glibc's malloc keeps freed memory for reuse
   (:func:`light_rcnn.engine.allocator.keep_freed_memory_in_heap`): -9 % time per iteration on the
   demo, same numbers.
"""
import logging
import os
import weakref

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog, build_detection_test_loader, build_detection_train_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, create_ddp_model
from detectron2.engine import hooks as d2_hooks
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator
from detectron2.solver import build_optimizer as build_sgd_optimizer
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..compression import build_model as build_hooked_model
from ..data.dataset_checks import CheckedDatasetMapper
from .allocator import keep_freed_memory_in_heap
from .checkpoint import load_classifier_trunk, make_writes_atomic
from .ema import ModelEMAHook

__all__ = ["Trainer"]


def _on_cpu(cfg):
    """Whether ``cfg`` trains on the CPU."""
    return torch.device(cfg.MODEL.DEVICE).type == "cpu"


def _cpu_processes(cfg):
    """Whether this is one of several processes training a CPU model."""
    return comm.get_world_size() > 1 and _on_cpu(cfg)


class Trainer(DefaultTrainer):
    """detectron2's DefaultTrainer with light_rcnn's evaluators, optimizer and loaders.

    The constructor is ``DefaultTrainer.__init__`` (``super().__init__``), except for several CPU
    processes: DefaultTrainer wraps the model with ``create_ddp_model(model,
    broadcast_buffers=False)``, which passes ``device_ids=[local_rank]`` whenever there is more
    than one process, and PyTorch's ``DistributedDataParallel`` rejects ``device_ids`` for a CPU
    module. detectron2 calls ``create_ddp_model`` unconditionally after ``build_model`` and offers
    no hook for its arguments (wrapping in ``build_model`` does not help: the second wrap fails
    the same way), so only in that case :meth:`_init_cpu_processes` runs the same steps with
    ``device_ids=None``. Every other run, GPU or single-process, uses detectron2's constructor
    unchanged.
    """

    def __init__(self, cfg):
        if _on_cpu(cfg):
            keep_freed_memory_in_heap()
        if _cpu_processes(cfg):
            self._init_cpu_processes(cfg)
        else:
            super().__init__(cfg)
        # The hooks hold this same checkpointer object, so this covers every save.
        make_writes_atomic(self.checkpointer)

    def resume_or_load(self, resume=True):
        """detectron2's, except when ``MODEL.WEIGHTS`` is a classifier trunk and is what gets
        loaded (not when resuming from OUTPUT_DIR's last checkpoint): then it is checked against the
        model's trunk and loaded into the trunk only
        (:func:`light_rcnn.engine.checkpoint.load_classifier_trunk`), a misfit raising ValueError."""
        if not (resume and self.checkpointer.has_checkpoint()):
            if load_classifier_trunk(self.model, self.cfg.MODEL.WEIGHTS):
                return None
        return super().resume_or_load(resume=resume)

    @classmethod
    def build_model(cls, cfg):
        """detectron2's ``build_model`` followed by ``cfg.MODEL.MODELING_HOOKS`` (:func:`light_rcnn.build_model`)."""
        model = build_hooked_model(cfg)
        logging.getLogger(__name__).info("Model:\n{}".format(model))
        return model

    def build_hooks(self):
        """detectron2's hooks, plus :class:`ModelEMAHook` right after the LR scheduler when
        ``MODEL_EMA.ENABLED`` (so PreciseBN, the checkpointer and the evaluation see the averaged weights)."""
        hook_list = super().build_hooks()
        if self.cfg.MODEL_EMA.ENABLED:
            at = next(i for i, h in enumerate(hook_list) if isinstance(h, d2_hooks.LRScheduler)) + 1
            hook_list.insert(at, ModelEMAHook(self.cfg.MODEL_EMA.DECAY, self.cfg.MODEL_EMA.START_FRACTION))
        return hook_list

    def _init_cpu_processes(self, cfg):
        """``DefaultTrainer.__init__`` (detectron2 0.7) with ``device_ids=None`` for the DDP
        wrapper; see the class docstring."""
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False, device_ids=None)
        trainer_cls = AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
        self._trainer = trainer_cls(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_optimizer(cls, cfg, model):
        """detectron2's SGD for ``SOLVER.OPTIMIZER`` "SGD"; ``torch.optim.AdamW`` (betas
        ``SOLVER.ADAM_BETAS``, decoupled weight decay ``SOLVER.WEIGHT_DECAY``, same per-parameter
        groups and gradient clipping as detectron2) for "ADAMW"."""
        name = cfg.SOLVER.OPTIMIZER.upper()
        if name == "SGD":
            return build_sgd_optimizer(cfg, model)
        if name != "ADAMW":
            raise ValueError(f"SOLVER.OPTIMIZER={cfg.SOLVER.OPTIMIZER!r}: expected 'SGD' or 'ADAMW'")
        params = get_default_optimizer_params(
            model,
            base_lr=cfg.SOLVER.BASE_LR,
            weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
            weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        )
        optimizer = torch.optim.AdamW(
            params, lr=cfg.SOLVER.BASE_LR, betas=tuple(cfg.SOLVER.ADAM_BETAS), weight_decay=cfg.SOLVER.WEIGHT_DECAY
        )
        return maybe_add_gradient_clipping(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg):
        """detectron2's train loader; an undecodable image is skipped with a warning."""
        return build_detection_train_loader(cfg, mapper=CheckedDatasetMapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """detectron2's test loader; an undecodable image raises ``RuntimeError`` naming it."""
        return build_detection_test_loader(cfg, dataset_name, mapper=CheckedDatasetMapper(cfg, is_train=False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
        if evaluator_type == "coco":
            return COCOEvaluator(dataset_name, output_dir=output_folder)
        if evaluator_type == "pascal_voc":
            return PascalVOCDetectionEvaluator(dataset_name)
        raise ValueError(
            f"Data set '{dataset_name}' has evaluator_type {evaluator_type!r} in its metadata; "
            "light_rcnn's Trainer supports 'coco' and 'pascal_voc'. Register the set with one of "
            "them (e.g. light_rcnn.data.dataset_checks.register_coco_instances_checked)."
        )
