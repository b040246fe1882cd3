"""ImageNet-style classification pre-training of the mobile backbones (tools/train_classifier.py).

The mobile detectors of this project start from a classifier of the same backbone (as the
FD-MobileNet paper's VOC detectors start from its ImageNet classifiers). This module trains one
from an image folder and writes a checkpoint that a detection config's ``MODEL.WEIGHTS`` loads
into the bottom-up backbone.

Pixel convention (the one of every mobile detection config in ``configs/``): images are read as
**BGR, 0-255** (``cv2.imread``; PIL only as a fallback, flipped to BGR), and normalized exactly as
detectron2's ``GeneralizedRCNN.preprocess_image`` does with those configs' values::

    x = (bgr_0_255 - PIXEL_MEAN) / PIXEL_STD
    PIXEL_MEAN = [103.530, 116.280, 123.675]   # ImageNet mean, B, G, R, 0-255 scale
    PIXEL_STD  = [57.375, 57.120, 58.395]      # ImageNet std,  B, G, R, 0-255 scale

(these are torchvision's RGB mean/std ``[0.485, 0.456, 0.406]`` / ``[0.229, 0.224, 0.225]``
reversed to BGR and multiplied by 255), so a backbone sees the same numbers in classification and
in detection: no silent colour or scale change. The values are stored in the checkpoint
(``"pixel_mean"``, ``"pixel_std"``, ``"input_format"``).

Augmentation: ``RandomResizedCrop(image_size, scale=(min_crop_scale, 1))`` + horizontal flip for
training; shorter side resized to ``image_size * 256 / 224`` + centre crop for validation (the
FD-MobileNet paper's 256 / 224 evaluation protocol).

Schedules (``--schedule``; any explicitly passed option overrides the preset):

* ``fd_mobilenet_imagenet`` - FD-MobileNet paper Sec. 3.1 (ILSVRC 2012): 90 epochs, batch 256,
  SGD momentum 0.9, lr 0.1 divided by 10 every 30 epochs, weight decay 4e-5, no colour jitter,
  "slightly less aggressive multi-scale augmentation" (interpreted as crop scale (0.25, 1); the
  paper gives no number).
* ``dilated_caltech`` - dilated-MobileNetV2 paper Sec. 3.1-3.2 (Caltech-101/256, 2,000 random
  test images): 300 epochs, batch 512, lr 0.045 halved at epochs 50, 100, 130, 160, 190, 220,
  250, 280. The paper states neither optimizer nor weight decay: SGD momentum 0.9 and weight
  decay 4e-5 (MobileNetV2's) are our choices; crop scale (0.08, 1).

Batch size is the total over all processes. When ``--epochs`` is changed and ``--lr-steps`` is
not given, the preset's milestones are scaled by ``epochs / preset_epochs``.

Checkpoint (``torch.save``, written to a temporary sibling and ``os.replace``-d)::

    {"model": backbone state dict without the classifier ("linear.*") and MobileNetV2's
               1x1 head conv ("head.*"), keys as in the backbone ("stem.0.conv.weight", ...),
     "matching_heuristics": True,   # DetectionCheckpointer matches keys by suffix, so the same
                                    # file loads at "backbone.bottom_up." (Light Mask R-CNN) and
                                    # at "backbone." (plain Faster R-CNN)
     "arch", "width_mult", "mobilenet_opts", "classes", "epoch" (completed epochs), "top1",
     "pixel_mean", "pixel_std", "input_format",
     "classifier": the full state dict (with linear / head), "optimizer", "scheduler"}

``"model"`` and ``"classifier"`` share tensors, so the file holds them once.
"""
import argparse
import logging
import os
import random
import time
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision import transforms
from torchvision.datasets.folder import IMG_EXTENSIONS

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.utils import comm

import light_rcnn.modeling  # noqa: F401  (registers the backbone builders)
from light_rcnn.config import get_light_rcnn_cfg
from light_rcnn.engine.checkpoint import AtomicFile

__all__ = [
    "ARCH_BUILDERS",
    "PIXEL_MEAN_BGR",
    "PIXEL_STD_BGR",
    "SCHEDULES",
    "ImageListDataset",
    "build_arg_parser",
    "build_classifier",
    "caltech_split",
    "export_detection_state",
    "main",
    "resolve_schedule",
    "scan_image_folder",
    "train",
]

logger = logging.getLogger(__name__)

# --arch -> registered BACKBONE builder (light_rcnn/modeling/backbone).
ARCH_BUILDERS = {
    "fd_mobilenet": "build_fd_mobilenet_backbone",
    "mobilenet_v1": "build_mobilenet_v1_backbone",
    "mobilenet_v2": "build_mobilenet_v2_backbone",
    "dilated_mobilenet_v2": "build_dilated_mobilenet_v2_backbone",
}

# detectron2 convention of the mobile detection configs: BGR, 0-255, minus mean, divided by std.
PIXEL_MEAN_BGR = (103.530, 116.280, 123.675)
PIXEL_STD_BGR = (57.375, 57.120, 58.395)
INPUT_FORMAT = "BGR"

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


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


def scan_image_folder(root: str, classes: Optional[Sequence[str]] = None
                      ) -> Tuple[List[str], List[Tuple[str, int]]]:
    """Classes (sorted sub-folder names) and ``(path, label)`` samples of an ImageFolder tree.

    Args:
        root: folder with one sub-folder of images per class (torchvision ImageFolder layout).
        classes: the class list to label with (e.g. the training set's, for a validation folder);
            every sub-folder of ``root`` must be one of them. Default: ``root``'s own sub-folders.
    Raises:
        FileNotFoundError: ``root`` missing, without class folders, or a class folder without
            images (the message names the folder).
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"Data folder '{root}' does not exist (expected one sub-folder "
                                f"of images per class)")
    found = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not found:
        raise FileNotFoundError(f"Data folder '{root}' has no class sub-folders")
    if classes is None:
        classes = found
    index = {c: i for i, c in enumerate(classes)}
    unknown = [c for c in found if c not in index]
    if unknown:
        raise ValueError(f"Class folders {unknown} in '{root}' are not among the training "
                         f"classes")
    samples = []
    for name in found:
        folder = os.path.join(root, name)
        files = sorted(f for f in os.listdir(folder)
                       if _is_image(f) and os.path.isfile(os.path.join(folder, f)))
        if not files:
            raise FileNotFoundError(f"Class folder '{folder}' contains no images (extensions "
                                    f"{', '.join(IMG_EXTENSIONS)})")
        samples.extend((os.path.join(folder, f), index[name]) for f in files)
    return list(classes), samples


def caltech_split(root: str, num_test: int = 2000, seed: int = 0):
    """The dilated-MobileNetV2 paper's protocol: ``num_test`` images drawn at random (seeded) from
    a single Caltech-101/256-style folder are the test set, the rest the training set.

    Returns:
        (classes, train_samples, test_samples)
    """
    classes, samples = scan_image_folder(root)
    if not 0 < num_test < len(samples):
        raise ValueError(f"--caltech-split {num_test} must be between 1 and {len(samples) - 1} "
                         f"('{root}' has {len(samples)} images)")
    order = np.random.RandomState(seed).permutation(len(samples))
    test = [samples[i] for i in sorted(order[:num_test])]
    train = [samples[i] for i in sorted(order[num_test:])]
    return classes, train, test


def read_bgr(path: str) -> np.ndarray:
    """(H, W, 3) uint8 BGR image; grey / alpha / CMYK images are converted to 3 channels."""
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:  # formats OpenCV cannot decode (e.g. some GIFs): PIL, then RGB -> BGR
        try:
            with Image.open(path) as pil:
                img = np.asarray(pil.convert("RGB"))[:, :, ::-1]
        except Exception as e:  # noqa: BLE001 - re-raised with the path
            raise OSError(f"Cannot read image '{path}': {e}") from e
    return np.ascontiguousarray(img)


def build_transforms(image_size: int, train: bool, min_crop_scale: float = 0.08):
    """Geometric transforms on (3, H, W) uint8 tensors (normalization is done afterwards)."""
    if train:
        return transforms.Compose([
            transforms.RandomResizedCrop(image_size, scale=(min_crop_scale, 1.0), antialias=True),
            transforms.RandomHorizontalFlip(),
        ])
    return transforms.Compose([
        transforms.Resize(int(round(image_size * 256 / 224)), antialias=True),
        transforms.CenterCrop(image_size),
    ])


class ImageListDataset(Dataset):
    """``(path, label)`` samples -> (normalized (3, S, S) float BGR tensor, label)."""

    def __init__(self, samples, transform, pixel_mean=PIXEL_MEAN_BGR, pixel_std=PIXEL_STD_BGR):
        self.samples = list(samples)
        self.transform = transform
        self.mean = torch.tensor(pixel_mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(pixel_std, dtype=torch.float32).view(3, 1, 1)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, idx):
        path, label = self.samples[idx]
        img = torch.from_numpy(read_bgr(path).transpose(2, 0, 1).copy())
        img = self.transform(img).float()
        return (img - self.mean) / self.std, label


# --------------------------------------------------------------------------------------------
# Model and checkpoint
# --------------------------------------------------------------------------------------------
def build_classifier(arch: str, width_mult: float, num_classes: int, opts: Sequence = ()):
    """The registered backbone ``arch`` with a ``num_classes``-way classifier (feature "linear"),
    built from the same config keys as the detectors (``cfg.MODEL.MOBILENET``), BN, nothing
    frozen. ``opts``: extra ``KEY VALUE`` pairs (e.g. ``MODEL.MOBILENET.DILATION_RATES``)."""
    if arch not in ARCH_BUILDERS:
        raise ValueError(f"Unknown --arch '{arch}'; expected one of {sorted(ARCH_BUILDERS)}")
    cfg = get_light_rcnn_cfg()
    if opts:
        cfg.merge_from_list(list(opts))
    cfg.MODEL.MOBILENET.WIDTH_MULT = float(width_mult)
    cfg.MODEL.MOBILENET.NUM_CLASSES = int(num_classes)
    cfg.MODEL.MOBILENET.OUT_FEATURES = ["linear"]
    cfg.MODEL.MOBILENET.NORM = "BN"
    cfg.MODEL.MOBILENET.STAGE5_DILATION = 1
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    return BACKBONE_REGISTRY.get(ARCH_BUILDERS[arch])(cfg, ShapeSpec(channels=3))


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


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------
def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Classification pre-training of a mobile backbone (BGR 0-255 input, "
                    "normalized with the detection configs' PIXEL_MEAN / PIXEL_STD).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--arch", required=True, choices=sorted(ARCH_BUILDERS))
    p.add_argument("--width-mult", type=float, default=1.0, help="width multiplier alpha")
    p.add_argument("--data", required=True,
                   help="folder with train/ and val/ ImageFolder trees, or (with "
                        "--caltech-split) a single folder of class sub-folders")
    p.add_argument("--caltech-split", type=int, nargs="?", const=2000, default=None,
                   metavar="N", help="random seeded N-image test split of --data (paper: 2000)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of --caltech-split")
    p.add_argument("--schedule", choices=sorted(SCHEDULES), default=None,
                   help="preset from the papers (default: dilated_caltech with --caltech-split, "
                        "else fd_mobilenet_imagenet)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="total over all processes")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--momentum", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--lr-steps", type=int, nargs="*", default=None, help="epoch milestones")
    p.add_argument("--lr-gamma", type=float, default=None, help="lr factor at each milestone")
    p.add_argument("--min-crop-scale", type=float, default=None,
                   help="lower area bound of RandomResizedCrop")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--output", required=True, help="checkpoint path (.pth)")
    p.add_argument("--resume", action="store_true",
                   help="continue from --output if it exists (without it an existing --output "
                        "is an error)")
    p.add_argument("--num-gpus", type=int, default=1,
                   help="processes (DistributedDataParallel; GLOO on a CPU-only machine)")
    p.add_argument("--dist-url", default="auto")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--num-workers", type=int, default=4, help="data loader workers per process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-period", type=int, default=20, help="iterations between log lines")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                   help="extra backbone config options, e.g. MODEL.MOBILENET.DILATION_RATES "
                        "[1,2,3,4]")
    return p


def resolve_schedule(args) -> argparse.Namespace:
    """Fill the unset schedule options of ``args`` (in place) from the chosen preset."""
    if args.schedule is None:
        args.schedule = "dilated_caltech" if args.caltech_split else "fd_mobilenet_imagenet"
    preset = SCHEDULES[args.schedule]
    steps_given = args.lr_steps is not None
    for key, value in preset.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if not steps_given:
        scale = args.epochs / preset["epochs"]
        args.lr_steps = sorted({int(round(s * scale)) for s in preset["lr_steps"]
                                if 0 < int(round(s * scale)) < args.epochs})
    args.lr_steps = list(args.lr_steps)
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0:
        raise ValueError("--epochs, --batch-size and --lr must be positive")
    return args


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
def _build_data(args):
    if args.caltech_split:
        classes, train_samples, val_samples = caltech_split(args.data, args.caltech_split,
                                                            args.split_seed)
    else:
        if not os.path.isdir(args.data):
            raise FileNotFoundError(f"Data folder '{args.data}' does not exist")
        train_dir, val_dir = os.path.join(args.data, "train"), os.path.join(args.data, "val")
        if not os.path.isdir(train_dir):
            raise FileNotFoundError(f"Training folder '{train_dir}' does not exist (--data needs "
                                    f"train/ and val/ sub-folders, or pass --caltech-split)")
        classes, train_samples = scan_image_folder(train_dir)
        val_samples = scan_image_folder(val_dir, classes)[1] if os.path.isdir(val_dir) else []
        if not val_samples:
            logger.warning(f"No validation folder '{val_dir}': top-1 accuracy is not measured")
    train_set = ImageListDataset(train_samples,
                                 build_transforms(args.image_size, True, args.min_crop_scale))
    val_set = ImageListDataset(val_samples, build_transforms(args.image_size, False))
    return classes, train_set, val_set


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


def train(args) -> Dict:
    """Train a classifier as described by ``args`` (see :func:`build_arg_parser`); runs in every
    process of a ``launch()``-ed job. Rank 0 writes ``args.output`` after every epoch.

    Returns:
        dict with "losses" (this process's per-iteration training losses), "top1" (last
        validation top-1 in % or None), "epoch" (completed epochs), "output" (checkpoint path).
    """
    resolve_schedule(args)
    if os.path.exists(args.output) and not args.resume:
        raise FileExistsError(f"Checkpoint '{args.output}' already exists; pass --resume to "
                              f"continue it or choose another --output")
    world, rank = comm.get_world_size(), comm.get_rank()
    device_name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device_name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", comm.get_local_rank() if world > 1 else
                              torch.cuda.current_device())
    torch.manual_seed(args.seed + rank)
    random.seed(args.seed + rank)
    np.random.seed(args.seed + rank)

    classes, train_set, val_set = _build_data(args)
    per_process_batch = max(1, args.batch_size // world)
    if per_process_batch * world != args.batch_size:
        logger.warning(f"--batch-size {args.batch_size} is not divisible by {world} processes; "
                       f"using {per_process_batch} per process")
    if len(train_set) < per_process_batch * world:
        raise ValueError(f"{len(train_set)} training images are fewer than one batch "
                         f"({per_process_batch} x {world} processes)")
    sampler = DistributedSampler(train_set, world, rank, shuffle=True, seed=args.seed) \
        if world > 1 else None
    loader = DataLoader(train_set, batch_size=per_process_batch, shuffle=sampler is None,
                        sampler=sampler, num_workers=args.num_workers, drop_last=True,
                        pin_memory=device.type == "cuda",
                        persistent_workers=args.num_workers > 0)

    model = build_classifier(args.arch, args.width_mult, len(classes), args.opts).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, args.lr_steps, args.lr_gamma)
    start_epoch, top1 = 0, None
    if args.resume and os.path.exists(args.output):
        ckpt = torch.load(args.output, map_location="cpu")
        if ckpt.get("arch") != args.arch or ckpt.get("width_mult") != args.width_mult:
            raise ValueError(f"'{args.output}' holds {ckpt.get('arch')} "
                             f"{ckpt.get('width_mult')}x, not {args.arch} {args.width_mult}x")
        model.load_state_dict(ckpt["classifier"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, top1 = ckpt["epoch"], ckpt.get("top1")
        logger.info(f"Resumed from '{args.output}' after epoch {start_epoch}")
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    logger.info(f"{args.arch} {args.width_mult}x, {len(classes)} classes, {len(train_set)} "
                f"train / {len(val_set)} val images, schedule {args.schedule}: {args.epochs} "
                f"epochs, batch {args.batch_size}, lr {args.lr} x{args.lr_gamma} at "
                f"{args.lr_steps}, wd {args.weight_decay}, {world} process(es) on {device}")
    criterion = nn.CrossEntropyLoss()
    losses: List[float] = []
    for epoch in range(start_epoch, args.epochs):
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
            if args.log_period and it % args.log_period == 0:
                logger.info(f"epoch {epoch + 1}/{args.epochs} iter {it}/{len(loader)} "
                            f"loss {loss.item():.4f} lr {optimizer.param_groups[0]['lr']:.5g}")
        scheduler.step()
        top1 = evaluate(model, val_set, per_process_batch, args.num_workers, device)
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
                "arch": args.arch,
                "width_mult": args.width_mult,
                "mobilenet_opts": [str(o) for o in args.opts],
                "classes": list(classes),
                "epoch": epoch + 1,
                "top1": top1,
                "image_size": args.image_size,
                "input_format": INPUT_FORMAT,
                "pixel_mean": list(PIXEL_MEAN_BGR),
                "pixel_std": list(PIXEL_STD_BGR),
            }, args.output)
        comm.synchronize()
    return {"losses": losses, "top1": top1, "epoch": args.epochs, "output": args.output}


def main(argv=None) -> Dict:
    """Parse ``argv`` and run :func:`train` in this process (``--num-gpus`` is handled by the
    CLI's ``launch()``)."""
    return train(build_arg_parser().parse_args(argv))
