"""ImageFolder-style classification data for the backbone pre-training (tools/train_classifier.py).

Pixel convention (the one of every mobile detection config in ``configs/``): images are read as
**BGR, 0-255** (``cv2.imread``; PIL only as a fallback, flipped to BGR), and normalized exactly as
detectron2's ``GeneralizedRCNN.preprocess_image`` does with those configs' values::

    x = (bgr_0_255 - PIXEL_MEAN) / PIXEL_STD
    PIXEL_MEAN = [103.530, 116.280, 123.675]   # ImageNet mean, B, G, R, 0-255 scale
    PIXEL_STD  = [57.375, 57.120, 58.395]      # ImageNet std,  B, G, R, 0-255 scale

(torchvision's RGB mean/std ``[0.485, 0.456, 0.406]`` / ``[0.229, 0.224, 0.225]`` reversed to BGR
and multiplied by 255), so a backbone sees the same numbers in classification and in detection.

Augmentation: ``RandomResizedCrop(image_size, scale=(min_crop_scale, 1))`` + horizontal flip for
training; shorter side resized to ``image_size * 256 / 224`` + centre crop for validation (the
FD-MobileNet paper's 256 / 224 evaluation protocol). :func:`caltech_split` is the
dilated-MobileNetV2 paper's protocol (Sec. 3.1: 2,000 random test images).
"""
import logging
import os
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.datasets.folder import IMG_EXTENSIONS

__all__ = [
    "INPUT_FORMAT",
    "PIXEL_MEAN_BGR",
    "PIXEL_STD_BGR",
    "ImageListDataset",
    "build_image_folder_datasets",
    "build_transforms",
    "caltech_split",
    "read_bgr",
    "scan_image_folder",
]

logger = logging.getLogger(__name__)

# detectron2 convention of the mobile detection configs: BGR, 0-255, minus mean, divided by std.
PIXEL_MEAN_BGR = (103.530, 116.280, 123.675)
PIXEL_STD_BGR = (57.375, 57.120, 58.395)
INPUT_FORMAT = "BGR"


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


def build_image_folder_datasets(data: str, image_size: int, min_crop_scale: float,
                                caltech_split_size: Optional[int] = None, split_seed: int = 0):
    """Classes and the training / validation :class:`ImageListDataset` of ``data``.

    Args:
        data: a folder with ``train/`` and (optionally) ``val/`` ImageFolder trees; or, with
            ``caltech_split_size``, a single folder of class sub-folders split by
            :func:`caltech_split`.
        image_size: side of the square crops.
        min_crop_scale: lower area bound of the training ``RandomResizedCrop``.
    Returns:
        (classes, train_set, val_set); ``val_set`` is empty without a ``val/`` folder.
    """
    if caltech_split_size:
        classes, train_samples, val_samples = caltech_split(data, caltech_split_size, split_seed)
    else:
        if not os.path.isdir(data):
            raise FileNotFoundError(f"Data folder '{data}' does not exist")
        train_dir, val_dir = os.path.join(data, "train"), os.path.join(data, "val")
        if not os.path.isdir(train_dir):
            raise FileNotFoundError(f"Training folder '{train_dir}' does not exist (--data needs "
                                    f"train/ and val/ sub-folders, or pass --caltech-split)")
        classes, train_samples = scan_image_folder(train_dir)
        val_samples = scan_image_folder(val_dir, classes)[1] if os.path.isdir(val_dir) else []
        if not val_samples:
            logger.warning(f"No validation folder '{val_dir}': top-1 accuracy is not measured")
    train_set = ImageListDataset(train_samples, build_transforms(image_size, True, min_crop_scale))
    val_set = ImageListDataset(val_samples, build_transforms(image_size, False))
    return classes, train_set, val_set
