"""Loading COCO-format instance data sets with checks for broken inputs.

detectron2's :func:`~detectron2.data.datasets.load_coco_json` trusts its input: a missing
annotation file surfaces as a bare ``FileNotFoundError`` from deep inside pycocotools, a truncated
JSON as a ``JSONDecodeError`` without the file's name, a box of zero width trains as a NaN loss
and an undecodable JPEG kills a data-loader worker hours into training. The functions here wrap it
(library use, nothing copied) and decide every case once:

==============================================  ============================================================
Input                                           What happens
==============================================  ============================================================
annotation file missing                         ``FileNotFoundError`` naming the file (at load time).
annotation file not valid JSON / not COCO       ``ValueError`` naming the file and the parser's message.
data set directory / ``image_root`` missing     ``FileNotFoundError`` naming the directory.
image listed in the JSON but missing on disk    ``FileNotFoundError`` at load time naming the missing files
                                                (first five and the count): a set with missing files is
                                                broken, and skipping would silently change what is
                                                trained and evaluated.
image file present but not decodable            Training: skipped with a logged warning naming the file
                                                (:class:`CheckedDatasetMapper` returns ``None``;
                                                detectron2's ``MapDataset`` then draws another index).
                                                Evaluation: ``RuntimeError`` naming the file, because
                                                ``MapDataset`` would substitute a different image and
                                                silently corrupt the metrics.
grayscale (or palette / RGBA) image             Used: detectron2's ``read_image`` converts it to
                                                ``cfg.INPUT.FORMAT`` (H x W x 3 for BGR/RGB).
image without annotations                       Kept by the loader (it counts for evaluation); training
                                                drops it when ``DATALOADER.FILTER_EMPTY_ANNOTATIONS`` is
                                                True (detectron2's default).
annotation with a degenerate box                Box missing, not 4 numbers, NaN/inf, width <= 0 or
                                                height <= 0: that annotation is dropped with a warning
                                                naming the image file and the annotation id (the first
                                                20 one by one, then a count); an image left without
                                                annotations is then treated as above.
==============================================  ============================================================

Use :func:`register_coco_instances_checked` in place of detectron2's
``register_coco_instances`` and :class:`CheckedDatasetMapper` in place of ``DatasetMapper``
(light_rcnn's ``Trainer`` does the latter for training).
"""
import json
import logging
import math
import os

from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.data.datasets import load_coco_json

__all__ = [
    "load_coco_instances_checked",
    "register_coco_instances_checked",
    "register_coco_sets",
    "unregister_dataset",
    "CheckedDatasetMapper",
    "is_degenerate_bbox",
]

logger = logging.getLogger(__name__)

# Individual warnings about degenerate boxes per file; the rest are only counted.
_MAX_BOX_WARNINGS = 20


def is_degenerate_bbox(bbox):
    """True if ``bbox`` is not a usable XYWH box: not 4 finite numbers, or width/height <= 0."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return True
    try:
        values = [float(v) for v in bbox]
    except (TypeError, ValueError):
        return True
    if not all(math.isfinite(v) for v in values):
        return True
    return values[2] <= 0 or values[3] <= 0


def _check_paths(json_file, image_root, name):
    if not os.path.isdir(image_root):
        raise FileNotFoundError(
            f"Data set '{name}': image directory '{image_root}' does not exist (image_root)."
        )
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"Data set '{name}': annotation file '{json_file}' does not exist.")


def load_coco_instances_checked(json_file, image_root, name=None):
    """Load a COCO instances JSON with detectron2's ``load_coco_json`` after checking it.

    Args:
        json_file (str): COCO instances annotation file.
        image_root (str): directory that the JSON's ``file_name`` entries are relative to.
        name (str or None): data set name; when given, ``load_coco_json`` fills its metadata
            (``thing_classes``, ``thing_dataset_id_to_contiguous_id``).

    Returns:
        list[dict]: detectron2 standard dataset dicts; annotations with degenerate boxes removed.

    Raises:
        FileNotFoundError: ``json_file``, ``image_root`` or a listed image is missing.
        ValueError: ``json_file`` is not valid JSON or not a COCO instances file.
    """
    json_file = os.fspath(json_file)
    image_root = os.fspath(image_root)
    label = name or json_file
    _check_paths(json_file, image_root, label)
    try:
        dicts = load_coco_json(json_file, image_root, name, extra_annotation_keys=["id"])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"Data set '{label}': annotation file '{json_file}' is not valid JSON: {e}") from e
    except (KeyError, TypeError, ValueError, AssertionError, IndexError) as e:
        raise ValueError(
            f"Data set '{label}': annotation file '{json_file}' is not a COCO instances file "
            f"({type(e).__name__}: {e})"
        ) from e

    missing = sorted({d["file_name"] for d in dicts if not os.path.isfile(d["file_name"])})
    if missing:
        shown = ", ".join(f"'{m}'" for m in missing[:5])
        raise FileNotFoundError(
            f"Data set '{label}': {len(missing)} image(s) listed in '{json_file}' are missing "
            f"on disk: {shown}{' ...' if len(missing) > 5 else ''}"
        )

    num_dropped = 0
    for d in dicts:
        kept = []
        for ann in d["annotations"]:
            ann_id = ann.pop("id", None)
            if is_degenerate_bbox(ann.get("bbox")):
                num_dropped += 1
                if num_dropped <= _MAX_BOX_WARNINGS:
                    logger.warning(
                        f"Data set '{label}': dropping annotation id {ann_id} of image "
                        f"'{d['file_name']}': degenerate bbox {ann.get('bbox')!r}"
                    )
                continue
            kept.append(ann)
        d["annotations"] = kept
    if num_dropped:
        logger.warning(
            f"Data set '{label}': dropped {num_dropped} annotation(s) with degenerate boxes "
            f"from '{json_file}'."
        )
    return dicts


def unregister_dataset(name):
    """Remove ``name`` from detectron2's DatasetCatalog and MetadataCatalog (if there), so it can
    be registered again with other files."""
    if name in DatasetCatalog:
        DatasetCatalog.remove(name)
    if name in MetadataCatalog:
        MetadataCatalog.remove(name)


def register_coco_instances_checked(name, metadata, json_file, image_root, before_load=None):
    """Register a COCO-format instance data set that loads through
    :func:`load_coco_instances_checked` (same arguments as detectron2's
    ``register_coco_instances``).

    Args:
        name (str): data set name, e.g. ``"my_set_train"``.
        metadata (dict): extra metadata (e.g. ``thing_classes``); may be empty.
        json_file (str): COCO instances annotation file.
        image_root (str): directory with the images.
        before_load (callable or None): called (without arguments) before every load, e.g. to
            generate the files on first use.
    """
    json_file = os.fspath(json_file)
    image_root = os.fspath(image_root)

    def _load():
        if before_load is not None:
            before_load()
        return load_coco_instances_checked(json_file, image_root, name)

    DatasetCatalog.register(name, _load)
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="coco", **metadata
    )


def register_coco_sets(specs):
    """Register ``(name, json_file, image_root)`` COCO-format sets with
    :func:`register_coco_instances_checked` (``tools/train_net.py --register-coco``).

    Registering a name again with the same files is a no-op (every launched process and every
    in-process run registers its sets); a name already registered otherwise (a detectron2 or
    light_rcnn built-in, or other files) raises ``ValueError`` naming it.

    The annotation file and the image directory must exist when registering (not only when the
    set is loaded, which a run that never uses the set would not do): a missing one raises
    ``FileNotFoundError`` naming the set and the path. Every spec is checked before any is
    registered, so a bad one leaves the catalog as it was.
    """
    specs = [(name, os.fspath(json_file), os.fspath(image_root)) for name, json_file, image_root in specs]
    todo = {}  # name -> (json_file, image_root) to register, once every spec is checked
    for name, json_file, image_root in specs:
        if name in todo or name in DatasetCatalog:
            if name in todo:
                registered = todo[name]
            else:
                meta = MetadataCatalog.get(name)
                registered = (meta.get("json_file"), meta.get("image_root"))
            if registered == (json_file, image_root):
                continue
            raise ValueError(
                f"Data set name '{name}' is already registered (json_file "
                f"{registered[0]!r}, image_root {registered[1]!r}); "
                f"choose another name for the set in '{json_file}'."
            )
        _check_paths(json_file, image_root, name)
        todo[name] = (json_file, image_root)
    for name, (json_file, image_root) in todo.items():
        register_coco_instances_checked(name, {}, json_file, image_root)


class CheckedDatasetMapper(DatasetMapper):
    """detectron2's :class:`DatasetMapper` that handles images which cannot be decoded.

    In training it logs a warning naming the file and returns ``None``; detectron2's
    ``MapDataset`` (``detectron2/data/common.py``) then retries with another random index. In
    evaluation it raises ``RuntimeError`` naming the file: a substituted image would be scored
    under the wrong ``image_id``.
    """

    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except (OSError, SyntaxError) as e:  # PIL: UnidentifiedImageError, truncated file, ...
            file_name = dataset_dict.get("file_name", "<unknown>")
            if not self.is_train:
                raise RuntimeError(f"Cannot decode image '{file_name}': {e}") from e
            logger.warning(f"Skipping image '{file_name}' that cannot be decoded: {e}")
            return None
