"""A classification set cut from generated shapes scenes, for pre-training a detector's trunk.

The Light Mask R-CNN paper starts both of its detectors (Mask R-CNN R50-C4 and Light Mask R-CNN)
from one ImageNet ResNet-50. Here the analogue is a classifier of the shapes objects:
:func:`build_shapes_crops` writes an ImageFolder tree (``train/`` and ``val/``, one folder per
class of :data:`CLASSES`: the four shapes plus ``background``) that tools/train_classifier.py
reads with ``--data``.

Choices:

* Scenes: :func:`light_rcnn.data.shapes.generate_shapes_dataset` under the split name
  ``"pretrain"`` with seed ``seed + PRETRAIN_SEED_OFFSET`` (1000), never the detection sets'
  seeds (``shapes_train`` uses ``seed``, ``shapes_val`` ``seed + 1``;
  :data:`light_rcnn.data.shapes_meta.DEFAULT_SPLITS`), so no scene of shapes_val (nor of
  shapes_train) is seen in pre-training; :func:`pretrain_scene_seed` refuses a seed that would
  coincide. The first ``train_scenes`` scenes give ``train/``, the next ``val_scenes`` ``val/``:
  no scene contributes to both.
* Objects: one crop per annotation, a square centred on its (visible) box with side
  ``max(w, h) * (1 + 2 * context)`` (``context`` 0.25: a quarter of the box on each side, so the
  outline and some background are in view), moved inside the image (never padded) and at most the
  image; resized to ``crop_size`` (64) px (area interpolation when shrinking, linear when
  enlarging). Other objects may show in the margin, as in a detector's ROIs.
* Background: ``background_per_scene`` squares per scene that intersect no object box at all
  (intersection 0, not IoU < t: a patch may hold a whole small object at a tiny IoU), with a side
  drawn log-uniformly from [:data:`MIN_BACKGROUND_SIDE` * size / 192, size / 2] and a uniform
  position; :data:`BACKGROUND_TRIES` draws, else the scene gives none.
* Files: PNG (lossless; the scenes are JPEG already), ``<class>/<scene>_<k>.png``; ``index.json``
  records per crop its scene, class, crop square and object box (scene pixel coordinates), and
  the scene set it came from.
* Cache: ``<root>/shapes_crops_<crop>px_seed<scene seed>_<size>px_n<train>+<val>_bg<b>_ctx<c>/``
  (root as for the shapes set: ``$LIGHT_RCNN_CACHE/datasets`` by default), written once with
  :func:`light_rcnn.data.shapes.build_directory_once` (atomic; ``DONE.json`` holds the
  parameters, the generator versions included, so a changed generator rebuilds it).

Command line: ``python -m light_rcnn.data.shapes_crops --root DIR --train-scenes 400
--val-scenes 100`` prints the folder to pass to ``tools/train_classifier.py --data``.
"""
import argparse
import json
import os

import cv2
import numpy as np

from .shapes_meta import CLASS_NAMES, DEFAULT_IMAGE_SIZE, DEFAULT_SEED, DEFAULT_SPLITS, resolve_cache_root

__all__ = [
    "BACKGROUND",
    "CLASSES",
    "PRETRAIN_SEED_OFFSET",
    "PRETRAIN_SPLIT",
    "build_shapes_crops",
    "crop_square",
    "pretrain_scene_seed",
]

# Bumped whenever the crops written from the same scenes change; part of DONE.json.
CROPS_VERSION = 1
# Class folder of the patches without objects.
BACKGROUND = "background"
# Class folders (ImageFolder sorts them: background, circle, square, star, triangle).
CLASSES = tuple(CLASS_NAMES) + (BACKGROUND,)
# Split name of the generated scenes the crops come from.
PRETRAIN_SPLIT = "pretrain"
# Scene seed = seed + this; shapes_train / shapes_val use seed + 0 / + 1 (DEFAULT_SPLITS).
PRETRAIN_SEED_OFFSET = 1000
# Smallest background patch side at the reference scene size 192 (the smallest objects' ~ 12-32).
MIN_BACKGROUND_SIDE = 16
# Random draws per wanted background patch before the scene gives up on it.
BACKGROUND_TRIES = 50
# Reference scene size of MIN_BACKGROUND_SIDE.
_REFERENCE_SIZE = 192


def pretrain_scene_seed(seed=DEFAULT_SEED):
    """The generator seed of the pre-training scenes for detection sets of seed ``seed``;
    ``ValueError`` if it were the seed of shapes_train or shapes_val."""
    scene_seed = int(seed) + PRETRAIN_SEED_OFFSET
    detection = {int(seed) + offset for _, _, _, offset in DEFAULT_SPLITS.values()}
    if scene_seed in detection:
        raise ValueError(f"Pre-training scene seed {scene_seed} is a detection set's seed")
    return scene_seed


def crop_square(box, context, image_size):
    """The integer square ``(x0, y0, x1, y1)`` (x1, y1 exclusive) around ``box`` (COCO
    ``[x, y, w, h]``) with side ``max(w, h) * (1 + 2 * context)``, at least 2 px, at most
    ``image_size``, moved to lie inside the ``image_size`` square."""
    x, y, w, h = (float(v) for v in box)
    side = int(round(max(w, h) * (1.0 + 2.0 * float(context))))
    side = min(max(side, 2), int(image_size))
    x0 = int(round(x + w / 2.0 - side / 2.0))
    y0 = int(round(y + h / 2.0 - side / 2.0))
    x0 = min(max(x0, 0), image_size - side)
    y0 = min(max(y0, 0), image_size - side)
    return x0, y0, x0 + side, y0 + side


def _intersects(square, box):
    """Whether the pixel square ``(x0, y0, x1, y1)`` and the COCO box ``[x, y, w, h]`` (continuous
    coordinates, pixel i spans [i, i + 1]) share any area."""
    x0, y0, x1, y1 = square
    bx, by, bw, bh = box
    return min(x1, bx + bw) > max(x0, bx) and min(y1, by + bh) > max(y0, by)


def _background_squares(boxes, image_size, count, rng):
    """Up to ``count`` squares intersecting none of ``boxes`` (see the module docstring)."""
    lo = max(2.0, MIN_BACKGROUND_SIDE * image_size / _REFERENCE_SIZE)
    hi = max(lo, image_size / 2.0)
    found = []
    for _ in range(int(count)):
        for _try in range(BACKGROUND_TRIES):
            side = int(round(np.exp(rng.uniform(np.log(lo), np.log(hi)))))
            x0 = int(rng.integers(0, image_size - side + 1))
            y0 = int(rng.integers(0, image_size - side + 1))
            square = (x0, y0, x0 + side, y0 + side)
            if not any(_intersects(square, b) for b in boxes):
                found.append(square)
                break
    return found


def _resize(patch, size):
    interpolation = cv2.INTER_AREA if patch.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(patch, (size, size), interpolation=interpolation)


def _write_crops(out_dir, json_file, image_root, first_scene, scenes, crop_size, context,
                 background_per_scene, seed, records):
    with open(json_file) as f:
        coco = json.load(f)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    by_image = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    images = sorted(coco["images"], key=lambda im: im["id"])[first_scene:first_scene + scenes]
    for c in CLASSES:
        os.makedirs(os.path.join(out_dir, c), exist_ok=True)
    for scene, info in zip(range(first_scene, first_scene + scenes), images):
        image = cv2.imread(os.path.join(image_root, info["file_name"]), cv2.IMREAD_COLOR)
        if image is None:
            raise OSError(f"Could not read scene '{os.path.join(image_root, info['file_name'])}'")
        size = int(info["width"])
        anns = by_image.get(info["id"], [])
        crops = [(names[a["category_id"]], crop_square(a["bbox"], context, size), a["bbox"])
                 for a in anns]
        rng = np.random.default_rng([int(seed), int(scene), 1])
        crops += [(BACKGROUND, sq, None)
                  for sq in _background_squares([a["bbox"] for a in anns], size,
                                                background_per_scene, rng)]
        for k, (name, (x0, y0, x1, y1), box) in enumerate(crops):
            rel = os.path.join(name, f"{scene:06d}_{k:02d}.png")
            if not cv2.imwrite(os.path.join(out_dir, rel), _resize(image[y0:y1, x0:x1], crop_size)):
                raise OSError(f"Could not write '{os.path.join(out_dir, rel)}'")
            records.append({"file": rel.replace(os.sep, "/"), "class": name, "scene": scene,
                            "scene_file": info["file_name"], "crop": [x0, y0, x1, y1],
                            "object_box": box})


def build_shapes_crops(root="", train_scenes=400, val_scenes=100, scene_size=DEFAULT_IMAGE_SIZE,
                       crop_size=64, seed=DEFAULT_SEED, context=0.25, background_per_scene=1):
    """Write (or re-use) the crops ImageFolder tree; see the module docstring.

    Args:
        root: cache root ("" = ``$LIGHT_RCNN_CACHE/datasets`` or ``~/.cache/light_rcnn/datasets``).
        train_scenes / val_scenes: scenes cropped into ``train/`` / ``val/`` (disjoint).
        scene_size: side of the generated scenes (the detection configs: 192).
        crop_size: side of the written crops in px.
        seed: seed of the detection sets these crops must stay apart from; the scenes use
            :func:`pretrain_scene_seed` ``(seed)``.
        context: margin on each side of an object box, as a fraction of its longer side.
        background_per_scene: background patches sought per scene.
    Returns:
        str: the folder holding ``train/``, ``val/``, ``index.json`` and ``DONE.json``.
    Raises:
        ValueError: bad sizes, or a class without any crop in ``train/`` or ``val/`` (use more
            scenes).
    """
    from .shapes import GENERATOR_VERSION, build_directory_once, generate_shapes_dataset

    if (int(train_scenes) < 1 or int(val_scenes) < 1 or int(crop_size) < 8 or float(context) < 0
            or int(background_per_scene) < 1):
        raise ValueError(f"Need train_scenes, val_scenes, background_per_scene >= 1, crop_size >= 8 "
                         f"and context >= 0; got {train_scenes}, {val_scenes}, "
                         f"{background_per_scene}, {crop_size}, {context}")
    scene_seed = pretrain_scene_seed(seed)
    num = int(train_scenes) + int(val_scenes)
    root = resolve_cache_root(root)
    json_file, image_root = generate_shapes_dataset(root, PRETRAIN_SPLIT, num, scene_size, scene_seed)
    params = {
        "crops_version": CROPS_VERSION, "generator_version": GENERATOR_VERSION,
        "scene_split": PRETRAIN_SPLIT, "scene_seed": scene_seed, "scene_size": int(scene_size),
        "train_scenes": int(train_scenes), "val_scenes": int(val_scenes),
        "crop_size": int(crop_size), "context": float(context),
        "background_per_scene": int(background_per_scene), "classes": list(CLASSES),
    }
    target = os.path.join(root, f"shapes_crops_{int(crop_size)}px_seed{scene_seed}_{int(scene_size)}px_"
                                f"n{int(train_scenes)}+{int(val_scenes)}_bg{int(background_per_scene)}_"
                                f"ctx{float(context):g}")

    def write(tmp):
        index = {"params": params, "scene_json": json_file, "train": [], "val": []}
        for split, first, count in (("train", 0, int(train_scenes)),
                                    ("val", int(train_scenes), int(val_scenes))):
            _write_crops(os.path.join(tmp, split), json_file, image_root, first, count,
                         int(crop_size), float(context), int(background_per_scene), scene_seed,
                         index[split])
            empty = [c for c in CLASSES if not any(r["class"] == c for r in index[split])]
            if empty:
                raise ValueError(f"{split}/ would hold no crop of {empty} from {count} scenes; "
                                 f"use more scenes")
        with open(os.path.join(tmp, "index.json"), "w") as f:
            json.dump(index, f)

    return build_directory_once(target, params, write)


def main(argv=None):
    p = argparse.ArgumentParser(
        description="Crop the objects (and background patches) of generated shapes scenes into an "
                    "ImageFolder tree for tools/train_classifier.py --data.")
    p.add_argument("--root", default="", help="cache root (default: $LIGHT_RCNN_CACHE/datasets)")
    p.add_argument("--train-scenes", type=int, default=400)
    p.add_argument("--val-scenes", type=int, default=100)
    p.add_argument("--scene-size", type=int, default=DEFAULT_IMAGE_SIZE)
    p.add_argument("--crop-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help=f"seed of the detection sets; the scenes use seed + {PRETRAIN_SEED_OFFSET}")
    p.add_argument("--context", type=float, default=0.25,
                   help="margin on each side of a box, as a fraction of its longer side")
    p.add_argument("--background-per-scene", type=int, default=1)
    args = p.parse_args(argv)
    try:
        folder = build_shapes_crops(args.root, args.train_scenes, args.val_scenes, args.scene_size,
                                    args.crop_size, args.seed, args.context, args.background_per_scene)
    except ValueError as e:
        p.error(str(e))
    counts = {split: {c: len(os.listdir(os.path.join(folder, split, c))) for c in CLASSES}
              for split in ("train", "val")}
    print(f"folder: {folder}")
    for split, per_class in counts.items():
        print(f"{split}: " + ", ".join(f"{c} {n}" for c, n in per_class.items()))
    return folder


if __name__ == "__main__":
    main()
