"""Data sets; importing this package registers ``shapes_train`` / ``shapes_val`` into detectron2's
catalogs (generated lazily on first ``DatasetCatalog.get``), and nothing else.

* :mod:`.dataset_checks` -- checked COCO-format loading (:func:`register_coco_instances_checked`,
  :class:`CheckedDatasetMapper`); the decisions for broken inputs are in its docstring.
* :mod:`.shapes_meta` -- what the shapes set is (class names, default splits, cache layout).
* :mod:`.shapes` -- the shapes generator (``python -m light_rcnn.data.shapes``).
* :mod:`.kitti` -- KITTI's ``kitti_train`` / ``kitti_val`` (registered only on request);
  :mod:`.kitti_labels` -- KITTI label_2 -> COCO JSON (``datasets/prepare_kitti.py``).
* :mod:`.shapes_layouts` -- the shapes scenes in Pascal VOC and KITTI layouts
  (``shapes_voc_*``, ``shapes_kitti_*``, registered when a config names them).
* :mod:`.shapes_crops` -- a classification set of shape crops and background patches
  (``python -m light_rcnn.data.shapes_crops``).
* :mod:`.builtin` -- registration of the built-in sets.
* :mod:`.image_folder` -- ImageFolder-style classification data (``tools/train_classifier.py``).
"""
from .builtin import register_builtin_datasets, register_default_shapes_datasets, register_shapes_datasets
from .dataset_checks import (
    CheckedDatasetMapper,
    load_coco_instances_checked,
    register_coco_instances_checked,
)
from .kitti import register_kitti_datasets
from .shapes_meta import CLASS_NAMES as SHAPES_CLASS_NAMES
from .shapes_meta import DEFAULT_IMAGE_SIZE, DEFAULT_SEED, resolve_cache_root, shapes_split_paths

__all__ = [
    "SHAPES_CLASS_NAMES",
    "CheckedDatasetMapper",
    "generate_shapes_dataset",
    "load_coco_instances_checked",
    "register_builtin_datasets",
    "register_coco_instances_checked",
    "register_kitti_datasets",
    "register_shapes_datasets",
    "resolve_cache_root",
    "shapes_split_paths",
]


def generate_shapes_dataset(root, split, num_images, image_size=DEFAULT_IMAGE_SIZE, seed=DEFAULT_SEED):
    """See :func:`light_rcnn.data.shapes.generate_shapes_dataset` (imported on first call, so that
    ``python -m light_rcnn.data.shapes`` does not find its module already imported)."""
    from .shapes import generate_shapes_dataset as _generate

    return _generate(root, split, num_images, image_size, seed)


register_default_shapes_datasets()
