"""Data sets; importing this module registers ``shapes_train`` / ``shapes_val`` into detectron2's
catalogs (generated lazily on first ``DatasetCatalog.get``).

* :mod:`.dataset_checks` -- checked COCO-format loading (:func:`register_coco_instances_checked`,
  :class:`CheckedDatasetMapper`); the decisions for broken inputs are in its docstring.
* :mod:`.builtin` -- registration of the built-in sets and the data cache location.
* :mod:`.shapes` -- the synthetic shapes generator (``python -m light_rcnn.data.shapes``).
"""
from .builtin import (
    CLASS_NAMES as SHAPES_CLASS_NAMES,
    register_default_shapes_datasets,
    register_shapes_datasets,
    resolve_cache_root,
    shapes_split_paths,
)
from .dataset_checks import (
    CheckedDatasetMapper,
    load_coco_instances_checked,
    register_coco_instances_checked,
)

__all__ = [
    "SHAPES_CLASS_NAMES",
    "CheckedDatasetMapper",
    "generate_shapes_dataset",
    "load_coco_instances_checked",
    "register_coco_instances_checked",
    "register_shapes_datasets",
    "resolve_cache_root",
    "shapes_split_paths",
]


def generate_shapes_dataset(root, split, num_images, image_size=192, seed=0):
    """See :func:`light_rcnn.data.shapes.generate_shapes_dataset` (imported on first call)."""
    from .shapes import generate_shapes_dataset as _generate

    return _generate(root, split, num_images, image_size, seed)


register_default_shapes_datasets()
from . import kitti  # noqa: E402,F401  (registers kitti_train / kitti_val lazily)
