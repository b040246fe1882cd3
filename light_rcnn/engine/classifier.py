"""ImageNet-style classification pre-training of the backbones (tools/train_classifier.py).

The mobile detectors of this project start from a classifier of the same backbone (as the
FD-MobileNet paper's VOC detectors start from its ImageNet classifiers), and the ResNet detectors
(Mask R-CNN R50-C4, Light Mask R-CNN) from a classifier of their ResNet (as the Light Mask R-CNN
paper starts both from ImageNet ResNet-50; arch ``resnet``, see below). :func:`train_classifier`
trains one from an image folder (:mod:`light_rcnn.data.image_folder`, which also states the pixel
convention: BGR 0-255 normalized with the detection configs' PIXEL_MEAN / PIXEL_STD) and writes a
checkpoint that a detection config's ``MODEL.WEIGHTS`` loads into the bottom-up backbone. It runs
in every process of a ``launch()``-ed job; several processes train with PyTorch's
``DistributedDataParallel`` (GLOO on a CPU-only machine).

ResNet trunks (arch ``resnet``): detectron2's own ``build_resnet_backbone`` builds the stem and
res2-res5 from a detection config's ``MODEL.RESNETS`` (``config_file`` + ``opts``, e.g.
``light_rcnn://shapes/mask_rcnn_R_50_C4_shapes.yaml`` for the quarter-width shapes trunk; the
width comes from the config, so ``width_mult`` must stay 1), and detectron2's ``ResNet(...,
num_classes=N)`` adds the global average pool and the fc named "linear" (output "linear").
FrozenBN becomes BN (a classifier trains its BN) and nothing is frozen; the other RESNETS keys
(depth, widths, STRIDE_IN_1X1, RES5_DILATION) are kept, so the trunk's tensors have the shapes
of the detector built from the same config. Where they load (matching heuristics, by suffix):

* Mask R-CNN R50-C4 (``mask_rcnn_R_50_C4*.yaml``): ``stem.*``, ``res2.*``-``res4.*`` at
  ``backbone.``, ``res5.*`` at ``roi_heads.res5.`` (detectron2's Res5ROIHeads): every tensor used.
* Light Mask R-CNN (``Base-LightRCNN-C4.yaml``, frameworks 1/2): ``stem.*``-``res4.*`` at
  ``backbone.bottom_up.``; the network stops at C4, so ``res5.*`` is not used (the
  separated large-kernel neck and the subnet start from scratch, as in the paper). With
  ``ThinRes5ROIHeads`` (Table II's C5, the slim res5 subnet) too: its res5-shaped blocks read the
  neck, so the classifier's ``res5.*`` neither must nor may load into them.

:func:`light_rcnn.engine.checkpoint.check_pretrained_backbone` checks exactly this and fails
naming any trunk tensor left out or checkpoint tensor unused. The classifier's input convention
is fixed (below); a config whose PIXEL_MEAN / PIXEL_STD / INPUT.FORMAT differ gets a warning
(detectron2's COCO R50 configs use PIXEL_STD [1, 1, 1] for the Caffe2 weights).

Schedules (:data:`SCHEDULES`, :func:`resolve_schedule`; explicitly given values override the
preset):

* ``fd_mobilenet_imagenet`` - FD-MobileNet paper Sec. 3.1 (ILSVRC 2012): 90 epochs, batch 256,
  SGD momentum 0.9, lr 0.1 divided by 10 every 30 epochs, weight decay 4e-5, no colour jitter,
  "slightly less aggressive multi-scale augmentation" (interpreted as crop scale (0.25, 1); the
  paper gives no number).
* ``dilated_caltech`` - dilated-MobileNetV2 paper Sec. 3.1-3.2 (Caltech-101/256, 2,000 random
  test images): 300 epochs, batch 512, lr 0.045 halved at epochs 50, 100, 130, 160, 190, 220,
  250, 280. The paper states neither optimizer nor weight decay: SGD momentum 0.9 and weight
  decay 4e-5 (MobileNetV2's) are our choices; crop scale (0.08, 1).

BatchNorm statistics: before every evaluation (so the reported top-1 and the saved checkpoint hold
the same statistics) the running BN statistics are re-estimated on ``precise_bn_batches`` training
batches at the final weights (fvcore's ``update_bn_stats``, detectron2's ``TEST.PRECISE_BN``).
The running averages kept during training lag behind weights that move fast; with small batches
of a small data set the eval-mode network then disagrees with the train-mode one (measured: a
3-colour toy set learned to loss ~0 in train mode gave chance top-1 in eval mode for 2 of 5 seeds
on an Intel Xeon, 5 of 5 correct after re-estimation). ``precise_bn_batches=0`` keeps the running
averages. Each process re-estimates on its own shard; rank 0's statistics are saved.

Batch size is the total over all processes. When the epochs are changed and the milestones are
not given, the preset's milestones are scaled by ``epochs / preset_epochs``.

Checkpoint (``torch.save``, written to a temporary sibling and ``os.replace``-d)::

    {"model": backbone state dict without the classifier ("linear.*") and MobileNetV2's
               1x1 head conv ("head.*"), keys as in the backbone ("stem.0.conv.weight", ...;
               ResNet: "stem.conv1.weight", "res2.0.conv1.weight", ..., "res5.*"),
     "matching_heuristics": True,   # DetectionCheckpointer matches keys by suffix, so the same
                                    # file loads at "backbone.bottom_up." (Light Mask R-CNN) and
                                    # at "backbone." (plain Faster R-CNN, R50-C4)
     "arch", "width_mult", "mobilenet_opts" (the ``opts``), "classes", "epoch" (completed
     epochs), "top1", "pixel_mean", "pixel_std", "input_format",
     "config_file" (arch resnet: the config given, else ""), "resnets" (arch resnet: the
     MODEL.RESNETS keys the trunk was built with; None otherwise),
     "classifier": the full state dict (with linear / head), "optimizer", "scheduler"}

``"model"`` and ``"classifier"`` share tensors, so the file holds them once.
"""
import dataclasses
import logging
import os
import random
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from fvcore.nn.precise_bn import get_bn_modules, update_bn_stats

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import ResNet, build_resnet_backbone
from detectron2.utils import comm

from .. import modeling as _modeling  # noqa: F401  (registers the backbone builders)
from ..config import load_config
from ..data.image_folder import INPUT_FORMAT, PIXEL_MEAN_BGR, PIXEL_STD_BGR, build_image_folder_datasets
from .checkpoint import AtomicFile

__all__ = [
    "ARCH_BUILDERS",
    "PIXEL_MEAN_BGR",
    "PIXEL_STD_BGR",
    "SCHEDULES",
    "Schedule",
    "build_classifier",
    "evaluate",
    "export_detection_state",
    "resnet_spec",
    "resolve_schedule",
    "train_classifier",
]

logger = logging.getLogger(__name__)

# arch -> registered BACKBONE builder (light_rcnn/modeling/backbone; "resnet": detectron2's).
ARCH_BUILDERS = {
    "resnet": "build_resnet_backbone",
    "fd_mobilenet": "build_fd_mobilenet_backbone",
    "mobilenet_v1": "build_mobilenet_v1_backbone",
    "mobilenet_v2": "build_mobilenet_v2_backbone",
    "dilated_mobilenet_v2": "build_dilated_mobilenet_v2_backbone",
}

SCHEDULES = {
    # FD-MobileNet paper Sec. 3.1, ImageNet.
    "fd_mobilenet_imagenet": dict(
        epochs=90, batch_size=256, lr=0.1, momentum=0.9, weight_decay=4e-5,
        lr_steps=(30, 60), lr_gamma=0.1, min_crop_scale=0.25,
    ),
    # dilated-MobileNetV2 paper Sec. 3.2, Caltech-101/256 (optimizer / weight decay: our choice).
    "dilated_caltech": dict(
        epochs=300, batch_size=512, lr=0.045, momentum=0.9, weight_decay=4e-5,
        lr_steps=(50, 100, 130, 160, 190, 220, 250, 280), lr_gamma=0.5, min_crop_scale=0.08,
    ),
}

# Keys of the classifier that a detection backbone (NUM_CLASSES 0) does not have.
CLASSIFIER_ONLY_PREFIXES = ("linear.", "head.")
# MODEL.RESNETS keys that fix the tensors of a ResNet trunk (saved as the checkpoint's "resnets").
RESNET_SPEC_KEYS = ("DEPTH", "NUM_GROUPS", "WIDTH_PER_GROUP", "STEM_OUT_CHANNELS",
                    "RES2_OUT_CHANNELS", "STRIDE_IN_1X1", "RES5_DILATION", "NORM",
                    "DEFORM_ON_PER_STAGE", "DEFORM_MODULATED", "DEFORM_NUM_GROUPS")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Optimization schedule of one classifier training (SGD with momentum, step decay)."""

    # Preset it was resolved from (a key of SCHEDULES).
    name: str
    epochs: int
    # Total over all processes.
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    # Epoch milestones at which the lr is multiplied by lr_gamma.
    lr_steps: Tuple[int, ...]
    lr_gamma: float
    # Lower area bound of the training RandomResizedCrop.
    min_crop_scale: float


def resolve_schedule(name: Optional[str] = None, *, caltech: bool = False, **overrides) -> Schedule:
    """The preset ``name`` with ``overrides`` (a ``None`` value keeps the preset's).

    Args:
        name: a key of :data:`SCHEDULES`; default ``dilated_caltech`` when ``caltech`` (the
            Caltech protocol), else ``fd_mobilenet_imagenet``.
        overrides: any :class:`Schedule` field but ``name``. Without ``lr_steps``, the preset's
            milestones are scaled by ``epochs / preset epochs`` (those not in ``(0, epochs)``
            are dropped).
    Raises:
        ValueError: unknown preset or field, or non-positive epochs / batch size / lr.
    """
    if name is None:
        name = "dilated_caltech" if caltech else "fd_mobilenet_imagenet"
    if name not in SCHEDULES:
        raise ValueError(f"Unknown schedule '{name}'; expected one of {sorted(SCHEDULES)}")
    preset = SCHEDULES[name]
    unknown = sorted(set(overrides) - set(preset))
    if unknown:
        raise ValueError(f"Unknown schedule fields {unknown}; expected some of {sorted(preset)}")
    values = {k: (preset[k] if overrides.get(k) is None else overrides[k]) for k in preset}
    if overrides.get("lr_steps") is None:
        scale = values["epochs"] / preset["epochs"]
        values["lr_steps"] = sorted({int(round(s * scale)) for s in preset["lr_steps"]
                                     if 0 < int(round(s * scale)) < values["epochs"]})
    values["lr_steps"] = tuple(int(s) for s in values["lr_steps"])
    if values["epochs"] < 1 or values["batch_size"] < 1 or values["lr"] <= 0:
        raise ValueError("epochs, batch size and lr must be positive")
    return Schedule(name=name, **values)


def _classifier_cfg(arch: str, width_mult: float, opts: Sequence = (),
                    config_file: Optional[str] = None):
    """The config the classifier ``arch`` is built from (see :func:`build_classifier`)."""
    if arch not in ARCH_BUILDERS:
        raise ValueError(f"Unknown arch '{arch}'; expected one of {sorted(ARCH_BUILDERS)}")
    if arch != "resnet" and config_file:
        raise ValueError(f"config_file is read for arch 'resnet' only (got arch '{arch}'); give "
                         f"mobile backbone options as KEY VALUE opts")
    if arch == "resnet" and float(width_mult) != 1.0:
        raise ValueError(f"width_mult {width_mult} with arch 'resnet': the ResNet's width comes "
                         f"from MODEL.RESNETS (WIDTH_PER_GROUP, RES2_OUT_CHANNELS, "
                         f"STEM_OUT_CHANNELS) of the config; leave width_mult at 1")
    cfg = load_config(config_file or None, opts)
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    if arch == "resnet":
        if cfg.MODEL.RESNETS.NORM == "FrozenBN":
            cfg.MODEL.RESNETS.NORM = "BN"
        cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    return cfg


def resnet_spec(arch: str, width_mult: float = 1.0, opts: Sequence = (),
                config_file: Optional[str] = None) -> Optional[Dict]:
    """The MODEL.RESNETS keys (:data:`RESNET_SPEC_KEYS`) the ``resnet`` classifier is built with;
    None for the other archs."""
    if arch != "resnet":
        return None
    r = _classifier_cfg(arch, width_mult, opts, config_file).MODEL.RESNETS
    return {k: (list(r[k]) if isinstance(r[k], (list, tuple)) else r[k]) for k in RESNET_SPEC_KEYS}


def build_classifier(arch: str, width_mult: float, num_classes: int, opts: Sequence = (),
                     config_file: Optional[str] = None):
    """The registered backbone ``arch`` with a ``num_classes``-way classifier (feature "linear"),
    built from the same config keys as the detectors, BN, nothing frozen.

    Mobile archs: ``cfg.MODEL.MOBILENET`` with ``WIDTH_MULT = width_mult``. ``resnet``:
    detectron2's ``build_resnet_backbone`` from ``MODEL.RESNETS`` of ``config_file`` (stem and
    res2-res5; FrozenBN -> BN), wrapped by detectron2's ``ResNet(..., num_classes)`` (global
    average pool + fc "linear"); ``width_mult`` must be 1. ``opts``: extra ``KEY VALUE`` pairs
    merged after ``config_file`` (e.g. ``MODEL.MOBILENET.DILATION_RATES``,
    ``MODEL.RESNETS.WIDTH_PER_GROUP``).
    """
    cfg = _classifier_cfg(arch, width_mult, opts, config_file)
    if arch == "resnet":
        trunk = build_resnet_backbone(cfg, ShapeSpec(channels=3))
        # detectron2's classifier form of the same modules: keys "stem.*", "res2.*".."res5.*",
        # "linear.*"; output {"linear": (N, num_classes) logits}. out_features stays None (=
        # ["linear"]): ResNet keeps only the stages up to the last res* named in out_features.
        return ResNet(trunk.stem, [list(stage) for stage in trunk.stages],
                      num_classes=int(num_classes), out_features=None, freeze_at=0)
    cfg.MODEL.MOBILENET.WIDTH_MULT = float(width_mult)
    cfg.MODEL.MOBILENET.NUM_CLASSES = int(num_classes)
    cfg.MODEL.MOBILENET.OUT_FEATURES = ["linear"]
    cfg.MODEL.MOBILENET.NORM = "BN"
    cfg.MODEL.MOBILENET.STAGE5_DILATION = 1
    return BACKBONE_REGISTRY.get(ARCH_BUILDERS[arch])(cfg, ShapeSpec(channels=3))


def _warn_pixel_convention(config_file: Optional[str], opts: Sequence) -> None:
    """Warn when the detection config normalizes its input otherwise than the classifier."""
    cfg = load_config(config_file or None, opts)
    if (cfg.INPUT.FORMAT != INPUT_FORMAT or list(cfg.MODEL.PIXEL_MEAN) != list(PIXEL_MEAN_BGR)
            or list(cfg.MODEL.PIXEL_STD) != list(PIXEL_STD_BGR)):
        logger.warning(
            f"'{config_file}' normalizes its input with INPUT.FORMAT {cfg.INPUT.FORMAT}, "
            f"PIXEL_MEAN {list(cfg.MODEL.PIXEL_MEAN)}, PIXEL_STD {list(cfg.MODEL.PIXEL_STD)}; the "
            f"classifier uses {INPUT_FORMAT}, {list(PIXEL_MEAN_BGR)}, {list(PIXEL_STD_BGR)}. Set "
            f"the detector's to the classifier's when it starts from this checkpoint.")


def export_detection_state(classifier_state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The classifier's state dict without the classification-only modules ("linear", "head"),
    i.e. exactly the keys of a detection backbone built with ``NUM_CLASSES 0``."""
    return {k: v for k, v in classifier_state.items()
            if not k.startswith(CLASSIFIER_ONLY_PREFIXES)}


def save_checkpoint_atomic(obj, path: str) -> None:
    """``torch.save`` to a temporary file next to ``path``, then ``os.replace`` it over ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with AtomicFile(path, "wb") as f:
        torch.save(obj, f)


@torch.no_grad()
def evaluate(model, val_set, batch_size, num_workers, device) -> Optional[float]:
    """Top-1 accuracy (%) on ``val_set``, each process taking every world_size-th image."""
    if len(val_set) == 0:
        return None
    world, rank = comm.get_world_size(), comm.get_rank()
    shard = Subset(val_set, range(rank, len(val_set), world))
    loader = DataLoader(shard, batch_size=batch_size, num_workers=num_workers)
    was_training = model.training
    model.eval()
    counts = torch.zeros(2, dtype=torch.float64, device=device)
    for images, labels in loader:
        logits = model(images.to(device))["linear"]
        counts[0] += (logits.argmax(1).cpu() == labels).sum().item()
        counts[1] += labels.numel()
    if world > 1:
        dist.all_reduce(counts)
    model.train(was_training)
    return 100.0 * counts[0].item() / max(counts[1].item(), 1.0)


def _recompute_bn_stats(model, loader, max_batches, device):
    """Re-estimate the BN running statistics of ``model`` on up to ``max_batches`` batches of
    ``loader`` (train-time augmentation, as the statistics were meant to describe)."""
    was_training = model.training
    model.train()  # get_bn_modules finds BN layers in training mode only
    if not get_bn_modules(model):
        model.train(was_training)
        return
    num = min(int(max_batches), len(loader))
    update_bn_stats(model, (images.to(device, non_blocking=True) for images, _ in loader), num_iters=num)
    model.train(was_training)


def _device(name: Optional[str]) -> torch.device:
    device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", comm.get_local_rank() if comm.get_world_size() > 1 else
                              torch.cuda.current_device())
    return device


def train_classifier(
    *,
    arch: str,
    data: str,
    output: str,
    schedule: Optional[Schedule] = None,
    width_mult: float = 1.0,
    caltech_split: Optional[int] = None,
    split_seed: int = 0,
    image_size: int = 224,
    resume: bool = False,
    device: Optional[str] = None,
    num_workers: int = 4,
    seed: int = 0,
    log_period: int = 20,
    opts: Sequence = (),
    precise_bn_batches: int = 200,
    config_file: Optional[str] = None,
) -> Dict:
    """Train a classifier; runs in every process of a ``launch()``-ed job. Rank 0 writes
    ``output`` after every epoch.

    Args:
        arch: a key of :data:`ARCH_BUILDERS`.
        data: folder with ``train/`` and ``val/`` ImageFolder trees, or (with ``caltech_split``)
            one folder of class sub-folders.
        output: checkpoint path (.pth); must not exist unless ``resume``.
        schedule: default :func:`resolve_schedule` ``(caltech=bool(caltech_split))``.
        width_mult: width multiplier alpha.
        caltech_split: test images drawn from ``data`` (paper: 2000), seeded by ``split_seed``.
        image_size: side of the square crops.
        resume: continue from ``output`` if it exists.
        device: "cuda" or "cpu" (default: cuda if available).
        num_workers: data loader workers per process.
        seed: seed of this job (process ``r`` uses ``seed + r``).
        log_period: iterations between log lines (0: none).
        opts: extra backbone ``KEY VALUE`` config pairs, e.g. ``MODEL.MOBILENET.DILATION_RATES``
            or ``MODEL.RESNETS.WIDTH_PER_GROUP`` (merged after ``config_file``).
        precise_bn_batches: training batches (at most one epoch's) on which the BN statistics are
            re-estimated before each evaluation and save; 0 keeps the running averages.
        config_file: arch ``resnet``: the detection config whose ``MODEL.RESNETS`` defines the
            trunk (path or ``light_rcnn://...``; default: detectron2's defaults, ResNet-50).
    Returns:
        dict with "losses" (this process's per-iteration training losses), "top1" (last
        validation top-1 in % or None), "epoch" (completed epochs), "output" (checkpoint path).
    """
    if schedule is None:
        schedule = resolve_schedule(caltech=bool(caltech_split))
    if precise_bn_batches < 0:
        raise ValueError(f"precise_bn_batches must be >= 0, got {precise_bn_batches}")
    spec = resnet_spec(arch, width_mult, opts, config_file)  # also validates arch / width
    if arch == "resnet" and comm.is_main_process():
        _warn_pixel_convention(config_file, opts)
    if os.path.exists(output) and not resume:
        raise FileExistsError(f"Checkpoint '{output}' already exists; pass --resume to "
                              f"continue it or choose another --output")
    world, rank = comm.get_world_size(), comm.get_rank()
    device = _device(device)
    torch.manual_seed(seed + rank)
    random.seed(seed + rank)
    np.random.seed(seed + rank)

    classes, train_set, val_set = build_image_folder_datasets(
        data, image_size, schedule.min_crop_scale, caltech_split, split_seed)
    per_process_batch = max(1, schedule.batch_size // world)
    if per_process_batch * world != schedule.batch_size:
        logger.warning(f"Batch size {schedule.batch_size} is not divisible by {world} processes; "
                       f"using {per_process_batch} per process")
    if len(train_set) < per_process_batch * world:
        raise ValueError(f"{len(train_set)} training images are fewer than one batch "
                         f"({per_process_batch} x {world} processes)")
    sampler = DistributedSampler(train_set, world, rank, shuffle=True, seed=seed) \
        if world > 1 else None
    loader = DataLoader(train_set, batch_size=per_process_batch, shuffle=sampler is None,
                        sampler=sampler, num_workers=num_workers, drop_last=True,
                        pin_memory=device.type == "cuda",
                        persistent_workers=num_workers > 0)

    model = build_classifier(arch, width_mult, len(classes), opts, config_file).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=schedule.lr, momentum=schedule.momentum,
                                weight_decay=schedule.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(schedule.lr_steps),
                                                     schedule.lr_gamma)
    start_epoch, top1 = 0, None
    if resume and os.path.exists(output):
        ckpt = torch.load(output, map_location="cpu")
        if ckpt.get("arch") != arch or ckpt.get("width_mult") != width_mult:
            raise ValueError(f"'{output}' holds {ckpt.get('arch')} "
                             f"{ckpt.get('width_mult')}x, not {arch} {width_mult}x")
        if ckpt.get("resnets") != spec:
            raise ValueError(f"'{output}' holds a ResNet with MODEL.RESNETS {ckpt.get('resnets')}, "
                             f"not {spec}")
        model.load_state_dict(ckpt["classifier"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, top1 = ckpt["epoch"], ckpt.get("top1")
        logger.info(f"Resumed from '{output}' after epoch {start_epoch}")
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    size = (f"R{spec['DEPTH']} ({spec['WIDTH_PER_GROUP']}/group, res2 {spec['RES2_OUT_CHANNELS']}, "
            f"stem {spec['STEM_OUT_CHANNELS']})" if spec else f"{width_mult}x")
    logger.info(f"{arch} {size}, {len(classes)} classes, {len(train_set)} "
                f"train / {len(val_set)} val images, schedule {schedule.name}: {schedule.epochs} "
                f"epochs, batch {schedule.batch_size}, lr {schedule.lr} x{schedule.lr_gamma} at "
                f"{list(schedule.lr_steps)}, wd {schedule.weight_decay}, {world} process(es) on "
                f"{device}")
    criterion = nn.CrossEntropyLoss()
    losses: List[float] = []
    for epoch in range(start_epoch, schedule.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        net.train()
        start = time.perf_counter()
        for it, (images, labels) in enumerate(loader):
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            loss = criterion(net(images)["linear"], labels)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"Loss became {loss.item()} at epoch {epoch + 1}, "
                                         f"iteration {it}; lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if log_period and it % log_period == 0:
                logger.info(f"epoch {epoch + 1}/{schedule.epochs} iter {it}/{len(loader)} "
                            f"loss {loss.item():.4f} lr {optimizer.param_groups[0]['lr']:.5g}")
        scheduler.step()
        if precise_bn_batches:
            _recompute_bn_stats(model, loader, precise_bn_batches, device)
        top1 = evaluate(model, val_set, per_process_batch, num_workers, device)
        logger.info(f"epoch {epoch + 1} done in {time.perf_counter() - start:.1f}s"
                    + (f", val top-1 {top1:.2f}%" if top1 is not None else ""))
        if comm.is_main_process():
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            save_checkpoint_atomic({
                "model": export_detection_state(state),
                "matching_heuristics": True,
                "classifier": state,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "arch": arch,
                "width_mult": width_mult,
                "mobilenet_opts": [str(o) for o in opts],
                "config_file": config_file or "",
                "resnets": spec,
                "classes": list(classes),
                "epoch": epoch + 1,
                "top1": top1,
                "image_size": image_size,
                "input_format": INPUT_FORMAT,
                "pixel_mean": list(PIXEL_MEAN_BGR),
                "pixel_std": list(PIXEL_STD_BGR),
            }, output)
        comm.synchronize()
    return {"losses": losses, "top1": top1, "epoch": schedule.epochs, "output": output}
