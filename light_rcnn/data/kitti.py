"""KITTI vehicle detection as ``kitti_train`` / ``kitti_val`` (dilated-MobileNetV2 paper, Sec. 3.4).

The COCO JSON files are made by ``datasets/prepare_kitti.py`` from KITTI's ``training/label_2``::

    $DETECTRON2_DATASETS/kitti/training/image_2/000000.png ...
    $DETECTRON2_DATASETS/kitti/annotations/kitti_train.json, kitti_val.json

(``$DETECTRON2_DATASETS`` defaults to ``./datasets``, as in detectron2.) Importing this module
registers nothing: call :func:`register_kitti_datasets` (``tools/train_net.py`` does, through
:func:`light_rcnn.data.builtin.register_builtin_datasets`, when a config names ``kitti_train`` or
``kitti_val``). Registration is lazy: nothing is read until ``DatasetCatalog.get`` is called. Loading goes through :func:`light_rcnn.data.dataset_checks.register_coco_instances_checked`
(a missing file is reported by name); class names come from the JSON (default: ``Car``), and
evaluation is COCO-style box AP.
"""
import os

from .dataset_checks import register_coco_instances_checked, unregister_dataset

__all__ = ["KITTI_SPLITS", "register_kitti_datasets", "register_kitti_folder"]

# data set name -> split (annotations/kitti_<split>.json written by datasets/prepare_kitti.py)
KITTI_SPLITS = {"kitti_train": "train", "kitti_val": "val"}


def register_kitti_datasets(root=None):
    """Register ``kitti_train`` and ``kitti_val`` from ``<root>/kitti`` (default
    ``$DETECTRON2_DATASETS``, else ``datasets``). Re-registering replaces the earlier entries."""
    if root is None:
        root = os.getenv("DETECTRON2_DATASETS", "datasets")
    register_kitti_folder(os.path.join(os.path.expanduser(root), "kitti"), KITTI_SPLITS)


def register_kitti_folder(kitti_root, names):
    """Register each ``{data set name: split}`` of ``names`` from a KITTI folder converted by
    ``datasets/prepare_kitti.py``: ``<kitti_root>/annotations/kitti_<split>.json`` with images in
    ``<kitti_root>/training/image_2``. Re-registering replaces the earlier entries."""
    for name, split in names.items():
        unregister_dataset(name)
        register_coco_instances_checked(
            name, {}, os.path.join(kitti_root, "annotations", f"kitti_{split}.json"),
            os.path.join(kitti_root, "training", "image_2"),
        )
