"""Registration of light_rcnn's built-in data sets (``shapes_train`` / ``shapes_val``, KITTI).

Registration only, like detectron2's ``builtin.py``: the shapes set's spec is in
:mod:`light_rcnn.data.shapes_meta` and its generator in :mod:`light_rcnn.data.shapes` (imported
only when a split is first loaded, so ``python -m light_rcnn.data.shapes`` runs cleanly and
``import light_rcnn`` stays cheap). ``import light_rcnn`` registers the shapes splits with their
defaults; KITTI and the shapes set's VOC / KITTI layouts (:mod:`light_rcnn.data.shapes_layouts`)
are registered only on request (:func:`register_builtin_datasets`).
"""
from detectron2.data import MetadataCatalog
from detectron2.data.datasets import register_pascal_voc

from .dataset_checks import register_coco_instances_checked, unregister_dataset
from .kitti import KITTI_SPLITS, register_kitti_datasets, register_kitti_folder
from .shapes_meta import (
    CLASS_NAMES,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_SEED,
    DEFAULT_SPLITS,
    KITTI_DATASETS,
    VOC_DATASETS,
    check_cache_root,
    resolve_cache_root,
    shapes_split_paths,
)

__all__ = [
    "register_builtin_datasets",
    "register_default_shapes_datasets",
    "register_shapes_datasets",
    "register_shapes_kitti_datasets",
    "register_shapes_voc_datasets",
]


class _Generate:
    """Picklable "generate this split if needed" callable (data-loader workers may pickle it)."""

    def __init__(self, root, split, num_images, image_size, seed):
        self.args = (root, split, num_images, image_size, seed)

    def __call__(self):
        # Imported here, not at the top: light_rcnn.data must not import the module that
        # ``python -m light_rcnn.data.shapes`` runs (runpy warns), and import stays cheap.
        from .shapes import generate_shapes_dataset

        return generate_shapes_dataset(*self.args)


def _register(root, image_size, seed, sizes, generate_now=False):
    for name, (split, _key, _default, seed_offset) in DEFAULT_SPLITS.items():
        num = int(sizes[name])
        split_seed = seed + seed_offset
        json_file, image_root = shapes_split_paths(root, split, num, image_size, split_seed)
        unregister_dataset(name)
        generate = _Generate(root, split, num, image_size, split_seed)
        register_coco_instances_checked(
            name,
            # Category id = index + 1 (shapes_meta): the mapping is known before the JSON is read, so
            # predictions can be written with the data set's ids without generating the data first.
            {"thing_classes": list(CLASS_NAMES),
             "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(CLASS_NAMES))}},
            json_file, image_root, before_load=generate
        )
        if generate_now:
            generate()


def register_shapes_datasets(cfg=None, generate_now=False):
    """(Re-)register ``shapes_train`` and ``shapes_val`` from ``cfg.DATASETS.SHAPES``.

    Removes any earlier registration of the two names (data and metadata) first. The files are
    generated on the first ``DatasetCatalog.get`` of each name, or now with ``generate_now``;
    the metadata's ``json_file`` / ``image_root`` point where generation writes.

    Args:
        cfg (CfgNode or None): a config with light_rcnn's keys; None = the defaults
            (400 / 60 images, 192 px, seed 0, default cache root).
        generate_now (bool): generate both splits now (e.g. before an evaluator reads
            ``json_file`` without loading the data set first).

    Raises:
        ValueError: the cache root lies inside the installed ``light_rcnn`` package
            (:func:`light_rcnn.data.shapes_meta.check_cache_root`).
    """
    root, image_size, seed, sizes = _shapes_params(cfg)
    _register(root, image_size, seed, sizes, generate_now=generate_now)


def _shapes_params(cfg):
    """``(root, image_size, seed, sizes)`` of ``cfg.DATASETS.SHAPES`` (None: the defaults), the
    cache root resolved and checked."""
    if cfg is not None:
        s = cfg.DATASETS.SHAPES
        root, image_size, seed = s.ROOT, s.IMAGE_SIZE, s.SEED
        sizes = {name: s.get(key) for name, (_, key, _, _) in DEFAULT_SPLITS.items()}
    else:
        root, image_size, seed = "", DEFAULT_IMAGE_SIZE, DEFAULT_SEED
        sizes = {name: default for name, (_, _, default, _) in DEFAULT_SPLITS.items()}
    root = resolve_cache_root(root)
    check_cache_root(root)
    return root, int(image_size), int(seed), sizes


def register_shapes_voc_datasets(cfg=None):
    """Write (once) the shapes splits of ``cfg.DATASETS.SHAPES`` in Pascal VOC 2007 layout and
    register ``shapes_voc_train`` / ``shapes_voc_test`` with detectron2's ``register_pascal_voc``
    (evaluated by ``PascalVOCDetectionEvaluator``). See :mod:`light_rcnn.data.shapes_layouts`.
    Returns the ``VOC2007`` folder."""
    from .shapes_layouts import write_voc_layout

    dirname = write_voc_layout(*_shapes_params(cfg))
    for name, split in VOC_DATASETS.items():
        unregister_dataset(name)
        register_pascal_voc(name, dirname, split, 2007, CLASS_NAMES)
        MetadataCatalog.get(name).evaluator_type = "pascal_voc"
    return dirname


def register_shapes_kitti_datasets(cfg=None):
    """Write (once) the shapes splits of ``cfg.DATASETS.SHAPES`` in KITTI layout, convert them with
    ``datasets/prepare_kitti.py``'s code and register ``shapes_kitti_train`` / ``shapes_kitti_val``
    (COCO box AP). See :mod:`light_rcnn.data.shapes_layouts`. Returns the KITTI root."""
    from .shapes_layouts import write_kitti_layout

    kitti = write_kitti_layout(*_shapes_params(cfg))
    register_kitti_folder(kitti, KITTI_DATASETS)
    return kitti


def register_default_shapes_datasets():
    """Import-time registration with the defaults; a refused cache root is reported when a
    split is first loaded, not at import."""
    sizes = {name: default for name, (_, _, default, _) in DEFAULT_SPLITS.items()}
    _register(resolve_cache_root(""), DEFAULT_IMAGE_SIZE, DEFAULT_SEED, sizes)


def register_builtin_datasets(cfg):
    """Register the built-in sets a config uses: always ``shapes_train`` / ``shapes_val`` from
    ``cfg.DATASETS.SHAPES`` (:func:`register_shapes_datasets`), and ``kitti_train`` /
    ``kitti_val`` (:func:`light_rcnn.data.kitti.register_kitti_datasets`, from
    ``$DETECTRON2_DATASETS``) when ``cfg.DATASETS.TRAIN`` or ``TEST`` names one of them, and the
    generated VOC / KITTI layouts of the shapes set (``shapes_voc_*``, ``shapes_kitti_*``, written
    now if needed) when named.
    ``tools/train_net.py`` calls this in every process."""
    register_shapes_datasets(cfg)
    named = set(cfg.DATASETS.TRAIN) | set(cfg.DATASETS.TEST)
    if named & set(KITTI_SPLITS):
        register_kitti_datasets()
    if named & set(VOC_DATASETS):
        register_shapes_voc_datasets(cfg)
    if named & set(KITTI_DATASETS):
        register_shapes_kitti_datasets(cfg)
