"""Images of a registered data set for the export-time check and int8 calibration (issue 12)."""
import numpy as np

__all__ = ["load_dataset_images"]


def load_dataset_images(cfg, dataset_name, num_images):
    """``num_images`` BGR uint8 (H, W, 3) images of the registered data set ``dataset_name``, evenly
    spaced in its order (light_rcnn's built-in sets, e.g. shapes, are registered from ``cfg`` first,
    so ``DATASETS.SHAPES.*`` apply)."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.detection_utils import read_image

    from ..data.builtin import register_builtin_datasets

    if int(num_images) < 1:
        raise ValueError(f"need at least one image of {dataset_name!r}, got {num_images}")
    register_builtin_datasets(cfg)
    if dataset_name not in DatasetCatalog.list():
        raise ValueError(f"data set {dataset_name!r} is not registered; register it or give images explicitly")
    dicts = DatasetCatalog.get(dataset_name)
    if not dicts:
        raise ValueError(f"data set {dataset_name!r} is empty")
    picks = np.unique(np.linspace(0, len(dicts) - 1, min(int(num_images), len(dicts))).round().astype(int))
    return [read_image(dicts[i]["file_name"], format="BGR") for i in picks]
