"""Images and dicts of a registered data set for the export-time check, int8 calibration and the
deploy benchmark."""
import numpy as np

__all__ = ["load_dataset_images", "registered_dataset_dicts"]


def registered_dataset_dicts(cfg, dataset_name):
    """The dicts of the registered data set ``dataset_name`` (light_rcnn's built-in sets, e.g.
    shapes, are registered from ``cfg`` first, so ``DATASETS.SHAPES.*`` apply); ``ValueError``
    naming it when it is not registered or empty."""
    from detectron2.data import DatasetCatalog

    from ..data.builtin import register_builtin_datasets

    register_builtin_datasets(cfg)
    if dataset_name not in DatasetCatalog.list():
        known = ", ".join(sorted(DatasetCatalog.list()))
        raise ValueError(f"data set {dataset_name!r} is not registered (registered: {known}); register it or "
                         "give images explicitly")
    dicts = DatasetCatalog.get(dataset_name)
    if not dicts:
        raise ValueError(f"data set {dataset_name!r} is empty")
    return dicts


def load_dataset_images(cfg, dataset_name, num_images):
    """``num_images`` BGR uint8 (H, W, 3) images of the registered data set ``dataset_name``, evenly
    spaced in its order (see :func:`registered_dataset_dicts`)."""
    from detectron2.data.detection_utils import read_image

    if int(num_images) < 1:
        raise ValueError(f"need at least one image of {dataset_name!r}, got {num_images}")
    dicts = registered_dataset_dicts(cfg, dataset_name)
    picks = np.unique(np.linspace(0, len(dicts) - 1, min(int(num_images), len(dicts))).round().astype(int))
    return [read_image(dicts[i]["file_name"], format="BGR") for i in picks]
