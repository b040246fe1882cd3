"""Registration of light_rcnn's built-in data sets (``shapes_train``, ``shapes_val``).

Kept apart from the generator (:mod:`light_rcnn.data.shapes`, imported only when a split is first
loaded) so that ``python -m light_rcnn.data.shapes`` runs the generator's command line cleanly
and ``import light_rcnn`` stays cheap. See :mod:`light_rcnn.data.shapes` for the data itself and
the cache layout.
"""
import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from .dataset_checks import register_coco_instances_checked

__all__ = [
    "CLASS_NAMES",
    "register_shapes_datasets",
    "resolve_cache_root",
    "shapes_split_paths",
    "check_root_outside_repo",
]

# Class names of the shapes set; category id = index + 1.
CLASS_NAMES = ("circle", "triangle", "square", "star")

# name: (split, cfg.DATASETS.SHAPES key of its size, default size, seed offset)
DEFAULT_SPLITS = {
    "shapes_train": ("train", "NUM_TRAIN", 400, 0),
    "shapes_val": ("val", "NUM_VAL", 60, 1),
}
# Default image side (px) and generator seed (train uses it, val uses it + 1).
DEFAULT_IMAGE_SIZE = 192
DEFAULT_SEED = 0

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resolve_cache_root(root=""):
    """The data cache directory: ``root`` if given, else ``$LIGHT_RCNN_CACHE/datasets``, else
    ``~/.cache/light_rcnn/datasets`` (absolute, user expanded; not created)."""
    if not root:
        env = os.environ.get("LIGHT_RCNN_CACHE", "")
        base = env if env else os.path.join("~", ".cache", "light_rcnn")
        root = os.path.join(base, "datasets")
    return os.path.abspath(os.path.expanduser(root))


def _repo_root():
    """The git checkout that contains the ``light_rcnn`` package (else the package's parent)."""
    d = _PACKAGE_DIR
    while True:
        if os.path.exists(os.path.join(d, ".git")):
            return d
        parent = os.path.dirname(d)
        if parent == d:
            return os.path.dirname(_PACKAGE_DIR)
        d = parent


def check_root_outside_repo(root):
    """Raise ``ValueError`` if ``root`` lies inside the repository of the package."""
    repo = os.path.realpath(_repo_root())
    real = os.path.realpath(root)
    if os.path.commonpath([real, repo]) == repo:
        raise ValueError(
            f"Data cache root '{root}' is inside the repository '{repo}'; generated data must "
            "stay out of the git tree. Set DATASETS.SHAPES.ROOT or $LIGHT_RCNN_CACHE elsewhere."
        )


def shapes_split_paths(root, split, num_images, image_size, seed):
    """``(json_file, image_root)`` of one generated split:
    ``<root>/shapes_<size>px_seed<seed>_n<num>/<split>/{<split>.json, *.jpg}``."""
    set_dir = f"shapes_{int(image_size)}px_seed{int(seed)}_n{int(num_images)}"
    image_root = os.path.join(resolve_cache_root(root), set_dir, split)
    return os.path.join(image_root, f"{split}.json"), image_root


class _Generate:
    """Picklable "generate this split if needed" callable (data-loader workers may pickle it)."""

    def __init__(self, root, split, num_images, image_size, seed):
        self.args = (root, split, num_images, image_size, seed)

    def __call__(self):
        from .shapes import generate_shapes_dataset

        return generate_shapes_dataset(*self.args)


def _register(root, image_size, seed, sizes, generate_now=False):
    for name, (split, _key, _default, seed_offset) in DEFAULT_SPLITS.items():
        num = int(sizes[name])
        split_seed = seed + seed_offset
        json_file, image_root = shapes_split_paths(root, split, num, image_size, split_seed)
        if name in DatasetCatalog:
            DatasetCatalog.remove(name)
        if name in MetadataCatalog:
            MetadataCatalog.remove(name)
        generate = _Generate(root, split, num, image_size, split_seed)
        register_coco_instances_checked(
            name, {"thing_classes": list(CLASS_NAMES)}, json_file, image_root, before_load=generate
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
        ValueError: the cache root lies inside the repository.
    """
    if cfg is not None:
        s = cfg.DATASETS.SHAPES
        root, image_size, seed = s.ROOT, s.IMAGE_SIZE, s.SEED
        sizes = {name: s.get(key) for name, (_, key, _, _) in DEFAULT_SPLITS.items()}
    else:
        root, image_size, seed = "", DEFAULT_IMAGE_SIZE, DEFAULT_SEED
        sizes = {name: default for name, (_, _, default, _) in DEFAULT_SPLITS.items()}
    root = resolve_cache_root(root)
    check_root_outside_repo(root)
    _register(root, int(image_size), int(seed), sizes, generate_now=generate_now)


def register_default_shapes_datasets():
    """Import-time registration with the defaults; a cache root inside the repository is
    reported when a split is first loaded, not at import."""
    sizes = {name: default for name, (_, _, default, _) in DEFAULT_SPLITS.items()}
    _register(resolve_cache_root(""), DEFAULT_IMAGE_SIZE, DEFAULT_SEED, sizes)
