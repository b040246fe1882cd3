"""What the embedded "shapes" data set is: class names, default splits and the cache layout.

The spec only (like detectron2's ``builtin_meta.py``); :mod:`light_rcnn.data.shapes` generates the
files and :mod:`light_rcnn.data.builtin` registers them. Imports nothing from light_rcnn.
"""
import os

__all__ = [
    "CLASS_NAMES",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_SEED",
    "DEFAULT_SPLITS",
    "check_cache_root",
    "resolve_cache_root",
    "shapes_split_paths",
    "KITTI_DATASETS",
    "VOC_DATASETS",
]

# Class names of the shapes set; category id = index + 1.
CLASS_NAMES = ("circle", "triangle", "square", "star")

# name: (split, cfg.DATASETS.SHAPES key of its size, default size, seed offset)
DEFAULT_SPLITS = {
    "shapes_train": ("train", "NUM_TRAIN", 400, 0),
    "shapes_val": ("val", "NUM_VAL", 60, 1),
}
# The shapes splits in other layouts (light_rcnn.data.shapes_layouts), registered when a config
# names them. VOC data set name -> ImageSets/Main split (made of shapes_train, then shapes_val):
VOC_DATASETS = {"shapes_voc_train": "train", "shapes_voc_test": "test"}
# KITTI data set name -> split (annotations/kitti_<split>.json, splits/<split>.txt):
KITTI_DATASETS = {"shapes_kitti_train": "train", "shapes_kitti_val": "val"}
# Default image side (px) and generator seed (train uses it, val uses it + 1).
DEFAULT_IMAGE_SIZE = 192
DEFAULT_SEED = 0

# The installed ``light_rcnn`` package folder (not the repository: see check_cache_root).
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resolve_cache_root(root=""):
    """The data cache directory: ``root`` if given, else ``$LIGHT_RCNN_CACHE/datasets``, else
    ``~/.cache/light_rcnn/datasets`` (absolute, user expanded; not created)."""
    if not root:
        env = os.environ.get("LIGHT_RCNN_CACHE", "")
        base = env if env else os.path.join("~", ".cache", "light_rcnn")
        root = os.path.join(base, "datasets")
    return os.path.abspath(os.path.expanduser(root))


def _inside(path, folder):
    return os.path.commonpath([path, folder]) == folder


def check_cache_root(root):
    """Raise ``ValueError`` if ``root`` lies inside the installed ``light_rcnn`` package folder.

    The guard needs no repository root: the one folder generated data must never go into is the
    package itself (``os.path.dirname(light_rcnn.__file__)``; in an editable install that is the
    checkout's ``light_rcnn/``), where it would be picked up by packaging and lost on reinstall.
    Both the path as given (so ``light_rcnn/configs/...`` counts although ``configs`` is a
    symlink) and its resolved form are checked. Anywhere else, including elsewhere in a
    checkout, is the user's choice.
    """
    package = os.path.abspath(_PACKAGE_DIR)
    real_package = os.path.realpath(_PACKAGE_DIR)
    if _inside(os.path.abspath(root), package) or _inside(os.path.realpath(root), real_package):
        raise ValueError(
            f"Data cache root '{root}' is inside the installed light_rcnn package '{package}'; "
            "generated data must stay out of the package. Set DATASETS.SHAPES.ROOT or "
            "$LIGHT_RCNN_CACHE elsewhere."
        )


def shapes_split_paths(root, split, num_images, image_size, seed):
    """``(json_file, image_root)`` of one generated split:
    ``<root>/shapes_<size>px_seed<seed>_n<num>/<split>/{<split>.json, *.jpg}``."""
    set_dir = f"shapes_{int(image_size)}px_seed{int(seed)}_n{int(num_images)}"
    image_root = os.path.join(resolve_cache_root(root), set_dir, split)
    return os.path.join(image_root, f"{split}.json"), image_root
