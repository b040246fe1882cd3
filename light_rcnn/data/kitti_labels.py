"""KITTI object-detection labels (``training/label_2/*.txt``) to COCO JSON (boxes only): the
converter behind ``datasets/prepare_kitti.py`` (its command line is :func:`main`), in the package
so that the generated KITTI-layout shapes set (:mod:`light_rcnn.data.shapes_layouts`) goes
through the same code as real KITTI.

    python datasets/prepare_kitti.py --root datasets/kitti [--classes Car Van] [--val-fraction 0.5]
    python datasets/prepare_kitti.py --root datasets/kitti --split-dir splits/  # train.txt, val.txt

Input layout (the official "left color images" and "training labels" archives)::

    <root>/training/image_2/000000.png ...
    <root>/training/label_2/000000.txt ...

Writes ``<out-dir>/kitti_train.json`` and ``<out-dir>/kitti_val.json`` (``<out-dir>`` defaults to
``<root>/annotations``), whose ``file_name`` is relative to ``<root>/training/image_2``: exactly
what ``light_rcnn.data.kitti`` registers as ``kitti_train`` / ``kitti_val``.

Each label line has 15 space-separated fields: ``type truncated occluded alpha x1 y1 x2 y2 h w l x
y z ry`` (KITTI devkit readme). Objects whose type is in ``--classes`` (default ``Car``) become
annotations (category ids 1..K in the given order, bbox ``[x1, y1, x2 - x1, y2 - y1]`` in pixels,
``area`` = box area, ``iscrowd`` 0, plus ``truncated`` / ``occluded`` kept for difficulty
filtering); ``DontCare`` regions and other types are left out. Image sizes are read from the
images with OpenCV. A line with a wrong number of fields, a non-numeric value or an empty box
raises :class:`KittiLabelError` naming the file and the line number; a label file without its
image raises ``FileNotFoundError`` naming the image.

The train/val split is either given (``--split-dir`` with ``train.txt`` and ``val.txt``, one image
id per line, as the common 3DOP/MV3D split) or drawn: the sorted ids are shuffled with ``--seed``
and the first ``--val-fraction`` go to val.
"""
import argparse
import json
import os
import random
from typing import Dict, List, Sequence, Tuple

__all__ = ["KittiLabelError", "parse_label_file", "convert", "split_ids", "main"]

NUM_FIELDS = 15
IGNORED_TYPE = "DontCare"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


class KittiLabelError(ValueError):
    """A malformed line in a KITTI label file (the message names the file and the line)."""


def parse_label_file(path: str, classes: Sequence[str]) -> List[Dict]:
    """Objects of ``classes`` in one label file.

    Returns:
        list[dict]: ``{"type", "truncated", "occluded", "bbox_xyxy"}`` per kept object.
    Raises:
        KittiLabelError: ``"<path>:<line>: <what is wrong>"``.
    """
    objects = []
    with open(path, "r") as f:
        for lineno, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue  # blank lines (e.g. a trailing newline) carry nothing
            where = f"{path}:{lineno}"
            if len(fields) != NUM_FIELDS:
                raise KittiLabelError(
                    f"{where}: expected {NUM_FIELDS} fields (type truncated occluded alpha x1 y1 "
                    f"x2 y2 h w l x y z ry), got {len(fields)}: {line.strip()!r}"
                )
            obj_type = fields[0]
            try:
                values = [float(v) for v in fields[1:]]
            except ValueError:
                bad = next(v for v in fields[1:] if not _is_float(v))
                raise KittiLabelError(f"{where}: non-numeric value {bad!r} in {line.strip()!r}")
            if obj_type == IGNORED_TYPE or obj_type not in classes:
                continue
            truncated, occluded = values[0], values[1]
            x1, y1, x2, y2 = values[3:7]
            if not all(map(_finite, (x1, y1, x2, y2))) or x2 <= x1 or y2 <= y1:
                raise KittiLabelError(
                    f"{where}: empty or invalid box x1={x1} y1={y1} x2={x2} y2={y2}"
                )
            if not float(occluded).is_integer():
                raise KittiLabelError(f"{where}: occluded must be an integer 0-3, got {occluded}")
            objects.append({
                "type": obj_type,
                "truncated": truncated,
                "occluded": int(occluded),
                "bbox_xyxy": (x1, y1, x2, y2),
            })
    return objects


def _is_float(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def _finite(v: float) -> bool:
    return v == v and abs(v) != float("inf")


def _find_image(image_dir: str, image_id: str) -> str:
    for ext in IMAGE_EXTENSIONS:
        name = image_id + ext
        if os.path.isfile(os.path.join(image_dir, name)):
            return name
    raise FileNotFoundError(
        f"no image for label {image_id!r}: none of "
        f"{[os.path.join(image_dir, image_id + e) for e in IMAGE_EXTENSIONS]} exists"
    )


def _image_size(path: str) -> Tuple[int, int]:
    import cv2

    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"cannot decode image {path}")
    return int(image.shape[0]), int(image.shape[1])


def convert(root: str, image_ids: Sequence[str], classes: Sequence[str]) -> Dict:
    """COCO instances dict for ``image_ids`` of ``<root>/training``."""
    label_dir = os.path.join(root, "training", "label_2")
    image_dir = os.path.join(root, "training", "image_2")
    categories = [{"id": i + 1, "name": c, "supercategory": "kitti"} for i, c in enumerate(classes)]
    cat_ids = {c["name"]: c["id"] for c in categories}
    images, annotations = [], []
    for image_index, image_id in enumerate(image_ids, start=1):
        objects = parse_label_file(os.path.join(label_dir, image_id + ".txt"), classes)
        file_name = _find_image(image_dir, image_id)
        height, width = _image_size(os.path.join(image_dir, file_name))
        images.append({"id": image_index, "file_name": file_name, "height": height,
                       "width": width, "kitti_id": image_id})
        for obj in objects:
            x1, y1, x2, y2 = obj["bbox_xyxy"]
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_index,
                "category_id": cat_ids[obj["type"]],
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1),
                "iscrowd": 0,
                "truncated": obj["truncated"],
                "occluded": obj["occluded"],
            })
    return {
        "info": {"description": f"KITTI object detection, classes {list(classes)}"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def split_ids(ids: Sequence[str], val_fraction: float, seed: int) -> Tuple[List[str], List[str]]:
    """Deterministic random split of the sorted ``ids``: (train ids, val ids), both sorted."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    ids = sorted(ids)
    shuffled = list(ids)
    random.Random(seed).shuffle(shuffled)
    num_val = int(round(len(ids) * val_fraction))
    val = set(shuffled[:num_val])
    return [i for i in ids if i not in val], [i for i in ids if i in val]


def _read_id_list(path: str) -> List[str]:
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def main(argv=None) -> Dict[str, str]:
    parser = argparse.ArgumentParser(description="KITTI label_2 -> COCO JSON (boxes only)")
    parser.add_argument("--root", default=os.path.join("datasets", "kitti"),
                        help="KITTI root holding training/image_2 and training/label_2")
    parser.add_argument("--classes", nargs="+", default=["Car"],
                        help="KITTI types to keep, in category-id order (default: Car)")
    parser.add_argument("--split-dir", default="",
                        help="folder with train.txt and val.txt (image ids); else a random split")
    parser.add_argument("--val-fraction", type=float, default=0.5,
                        help="share of images in val for the random split (default 0.5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random split")
    parser.add_argument("--out-dir", default="", help="default: <root>/annotations")
    args = parser.parse_args(argv)

    if IGNORED_TYPE in args.classes:
        parser.error(f"{IGNORED_TYPE} regions cannot be a class")
    label_dir = os.path.join(args.root, "training", "label_2")
    if not os.path.isdir(label_dir):
        raise FileNotFoundError(f"KITTI label folder not found: {label_dir}")
    if args.split_dir:
        train_ids = _read_id_list(os.path.join(args.split_dir, "train.txt"))
        val_ids = _read_id_list(os.path.join(args.split_dir, "val.txt"))
    else:
        ids = [n[: -len(".txt")] for n in os.listdir(label_dir) if n.endswith(".txt")]
        train_ids, val_ids = split_ids(ids, args.val_fraction, args.seed)

    out_dir = args.out_dir or os.path.join(args.root, "annotations")
    os.makedirs(out_dir, exist_ok=True)
    written = {}
    for split, ids in (("train", train_ids), ("val", val_ids)):
        coco = convert(args.root, ids, args.classes)
        path = os.path.join(out_dir, f"kitti_{split}.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(coco, f)
        os.replace(tmp, path)
        written[split] = path
        print(f"{path}: {len(coco['images'])} images, {len(coco['annotations'])} objects")
    return written

