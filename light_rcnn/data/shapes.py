"""The embedded "shapes" instance-segmentation data set: the generator and its cache.

A seeded generator draws 1-4 filled shapes (:data:`CLASS_NAMES`: circle, triangle, square, star)
of random colour, size and rotation on a textured background (random base colour, low-frequency
noise, optional stripes and a linear gradient) and writes JPEG images (quality 95) plus one COCO
instances JSON per split. It gives a real but small task: objects overlap, all three COCO size
ranges occur, and a small Mask R-CNN learns it on a CPU in minutes.

Annotations:

* Later objects occlude earlier ones; every annotation describes the VISIBLE part. A placement is
  rejected (and re-drawn, up to :data:`PLACEMENT_TRIES` times, else the object is left out) if it
  would leave an earlier object with less than :data:`MIN_VISIBLE_FRACTION` of its full area or
  fewer than :data:`MIN_VISIBLE_PIXELS` pixels, cut off a fragment smaller than
  :data:`MIN_FRAGMENT_PIXELS`, or punch a hole into it. So every visible shape is annotated and
  every visible mask is a union of hole-free regions that COCO polygons represent exactly.
* ``segmentation`` is a list of polygons traced with ``cv2.findContours`` on the visible mask
  upsampled 2x (nearest), mapped back with ``(p + 0.5) / 2``: the polygons run 0.25 px inside the
  pixel boundary in COCO's continuous coordinates (pixel ``i`` spans ``[i, i + 1]``), and
  pycocotools rasterizes them to exactly the rendered mask. ``area`` is that mask's pixel count
  and ``bbox`` its tight box (``mask_util.area`` / ``toBbox`` of the decoded polygons).
  Polygons work with detectron2's default ``INPUT.MASK_FORMAT: polygon``.
* ``iscrowd`` is 0; category ids are 1..4 in :data:`CLASS_NAMES` order.

Sizes (at 192 px; scaled with ``image_size / 192``, never below :data:`MIN_OBJECT_SIDE` px):
``sqrt(area)`` of the full shape is drawn from [12, 32) with probability 0.15 (COCO "small"),
[32, 96) with 0.55 ("medium") and [96, 125) with 0.30 ("large"); shapes are clamped to fit
inside the image. Object colours differ from the background base colour by at least
:data:`MIN_BG_CONTRAST` (RGB distance) and from each other by at least :data:`MIN_OBJ_CONTRAST`.

Every image is drawn from its own ``numpy`` generator seeded with ``(seed, image_index)``, so the
first ``k`` images of a set do not depend on its size, and identical parameters give identical
bytes.

Cache: ``<root>/shapes_<size>px_seed<seed>_n<num>/<split>/`` holds the images, ``<split>.json``
and ``DONE.json`` (the parameters, written last). It is built in a temporary sibling directory and
renamed into place, so an interrupted run never leaves a set that looks complete; a complete set
with the same parameters is re-used without rewriting. ``root`` is ``cfg.DATASETS.SHAPES.ROOT``,
else ``$LIGHT_RCNN_CACHE/datasets``, else ``~/.cache/light_rcnn/datasets``; a root inside the
installed ``light_rcnn`` package is refused (:func:`light_rcnn.data.shapes_meta.check_cache_root`).

Class names, default splits and the cache layout are in :mod:`light_rcnn.data.shapes_meta`;
registration as ``shapes_train`` / ``shapes_val`` is in :mod:`light_rcnn.data.builtin`.

Command line: ``python -m light_rcnn.data.shapes --root DIR --split val --num 8 --size 192``.
"""
import argparse
import json
import logging
import os
import shutil
import tempfile

import cv2
import numpy as np
from pycocotools import mask as mask_util

from .shapes_meta import (
    CLASS_NAMES,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_SEED,
    DEFAULT_SPLITS,
    check_cache_root,
    resolve_cache_root,
    shapes_split_paths,
)

__all__ = ["build_directory_once", "generate_shapes_dataset", "mask_to_polygons"]

# Written last into a finished split directory; holds the generation parameters.
_MARKER = "DONE.json"

logger = logging.getLogger(__name__)

# Bumped whenever the generated data changes; part of DONE.json, so stale caches are rebuilt.
GENERATOR_VERSION = 1
# JPEG quality of the written images.
JPEG_QUALITY = 95
# Reference image size of the size distribution below.
REFERENCE_SIZE = 192
# (probability, low, high) of sqrt(full object area) in pixels at REFERENCE_SIZE.
SIZE_BINS = ((0.15, 12.0, 32.0), (0.55, 32.0, 96.0), (0.30, 96.0, 125.0))
# Smallest sqrt(area) of a drawn shape, in pixels, at any image size.
MIN_OBJECT_SIDE = 12.0
# Largest circumradius of a shape as a fraction of the image side.
MAX_RADIUS_FRACTION = 0.47
# Objects per image are drawn uniformly from this inclusive range.
OBJECTS_PER_IMAGE = (1, 4)
# An earlier object must keep at least this fraction of its full area visible...
MIN_VISIBLE_FRACTION = 0.3
# ... and at least this many visible pixels ...
MIN_VISIBLE_PIXELS = 60
# ... and no visible fragment smaller than this.
MIN_FRAGMENT_PIXELS = 20
# Placement attempts per object before it is left out.
PLACEMENT_TRIES = 20
# Minimum RGB distance of an object colour to the background base colour / to other objects.
MIN_BG_CONTRAST = 110.0
MIN_OBJ_CONTRAST = 70.0
# Inner/outer radius of the five-pointed star.
STAR_INNER_RATIO = 0.45


# ------------------------------------------------------------------------------------------
# Drawing
# ------------------------------------------------------------------------------------------
def _shape_vertices(class_name, side, angle, rng):
    """Vertices (N x 2, float, centred at 0) of a shape whose area is about ``side ** 2``."""
    if class_name == "circle":
        radius = side / np.sqrt(np.pi)
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        radii = np.full_like(t, radius)
    elif class_name == "square":
        radius = side / np.sqrt(2.0)
        t = angle + np.pi / 4 + np.arange(4) * np.pi / 2
        radii = np.full_like(t, radius)
    elif class_name == "triangle":
        radius = side / np.sqrt(3 * np.sqrt(3) / 4)
        t = angle + np.arange(3) * 2 * np.pi / 3 + rng.uniform(-0.15, 0.15, 3)
        radii = radius * rng.uniform(0.92, 1.08, 3)
    elif class_name == "star":
        radius = side / np.sqrt(5 * STAR_INNER_RATIO * np.sin(np.pi / 5))
        t = angle + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, radius, radius * STAR_INNER_RATIO)
    else:
        raise ValueError(f"Unknown shape class '{class_name}'")
    return np.stack([np.cos(t) * radii, np.sin(t) * radii], axis=1)


def _background(size, rng):
    """A textured background (H x W x 3 float) and its base colour."""
    base = rng.uniform(0, 255, 3)
    img = np.empty((size, size, 3), np.float64)
    img[:] = base
    # Low-frequency noise: a small random grid upsampled smoothly.
    grid = int(rng.integers(3, 8))
    noise = rng.normal(0.0, 1.0, (grid, grid, 3)).astype(np.float32)
    noise = cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC)
    img += noise * rng.uniform(8, 22)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    if rng.random() < 0.5:  # stripes
        theta = rng.uniform(0, np.pi)
        period = rng.uniform(6, 30) * size / REFERENCE_SIZE
        wave = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period)
        img += wave[..., None] * rng.uniform(-1, 1, 3) * rng.uniform(6, 18)
    if rng.random() < 0.5:  # linear gradient
        theta = rng.uniform(0, 2 * np.pi)
        ramp = (xx * np.cos(theta) + yy * np.sin(theta)) / size
        img += (ramp - ramp.mean())[..., None] * rng.uniform(-1, 1, 3) * rng.uniform(20, 50)
    return img, base


def _pick_colour(rng, bg_base, others):
    """A colour far enough from the background and the other objects (best of 50 draws)."""
    best, best_score = None, -np.inf
    for _ in range(50):
        c = rng.uniform(0, 255, 3)
        d_bg = np.linalg.norm(c - bg_base)
        d_obj = min((np.linalg.norm(c - o) for o in others), default=np.inf)
        if d_bg >= MIN_BG_CONTRAST and d_obj >= MIN_OBJ_CONTRAST:
            return c
        score = min(d_bg / MIN_BG_CONTRAST, d_obj / MIN_OBJ_CONTRAST)
        if score > best_score:
            best, best_score = c, score
    return best


def _draw_side(rng, image_size):
    probs = np.array([b[0] for b in SIZE_BINS])
    _, low, high = SIZE_BINS[int(rng.choice(len(SIZE_BINS), p=probs / probs.sum()))]
    scale = image_size / REFERENCE_SIZE
    return max(MIN_OBJECT_SIDE, rng.uniform(low, high) * scale)


def _rasterize(vertices, center, size):
    mask = np.zeros((size, size), np.uint8)
    pts = np.round((vertices + center) * 16).astype(np.int32)  # 4 fractional bits
    cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=4)
    return mask


def _visible_ok(visible, full_area):
    """Whether an occluded object's remaining visible mask is still a fair annotation."""
    area = int(visible.sum())
    if area < max(MIN_VISIBLE_PIXELS, MIN_VISIBLE_FRACTION * full_area):
        return False
    num, _, stats, _ = cv2.connectedComponentsWithStats(visible, connectivity=8)
    if num > 1 and stats[1:, cv2.CC_STAT_AREA].min() < MIN_FRAGMENT_PIXELS:
        return False
    _, hierarchy = cv2.findContours(visible, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    return hierarchy is None or bool((hierarchy[0][:, 3] == -1).all())  # no holes


def mask_to_polygons(mask):
    """COCO polygons (list of flat [x0, y0, x1, y1, ...]) that rasterize exactly to ``mask``
    (a hole-free binary H x W array); see the module docstring."""
    up = cv2.resize(mask.astype(np.uint8), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for c in contours:
        if len(c) >= 3:
            pts = (c.reshape(-1, 2).astype(np.float64) + 0.5) / 2.0
            polygons.append([round(float(v), 2) for v in pts.reshape(-1)])
    return polygons


def _generate_image(image_size, seed, index):
    """One image (H x W x 3 uint8, BGR) and its objects [(category_id, visible mask)]."""
    rng = np.random.default_rng([int(seed), int(index)])
    image, bg_base = _background(image_size, rng)
    objects = []  # dicts: class_id, full mask, full area, visible mask, colour
    for _ in range(int(rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1))):
        class_id = int(rng.integers(len(CLASS_NAMES)))
        side = _draw_side(rng, image_size)
        vertices = _shape_vertices(CLASS_NAMES[class_id], side, rng.uniform(0, 2 * np.pi), rng)
        radius = np.linalg.norm(vertices, axis=1).max()
        max_radius = MAX_RADIUS_FRACTION * image_size
        if radius > max_radius:
            vertices *= max_radius / radius
        colour = _pick_colour(rng, bg_base, [o["colour"] for o in objects])
        lo = -vertices.min(axis=0) + 1.0
        hi = image_size - 1.0 - vertices.max(axis=0)
        for _try in range(PLACEMENT_TRIES):
            center = rng.uniform(lo, np.maximum(lo, hi))
            mask = _rasterize(vertices, center, image_size)
            if mask.sum() < MIN_VISIBLE_PIXELS:
                continue
            new_visible = [o["visible"] & (1 - mask) for o in objects]
            if all(_visible_ok(v, o["area"]) for v, o in zip(new_visible, objects)):
                for v, o in zip(new_visible, objects):
                    o["visible"] = v
                objects.append(
                    {"class_id": class_id, "area": int(mask.sum()), "visible": mask,
                     "full": mask, "colour": colour}
                )
                break

    yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float64)
    for o in objects:  # paint in order: later objects cover earlier ones
        theta = rng.uniform(0, 2 * np.pi)
        shade = (xx * np.cos(theta) + yy * np.sin(theta)) / image_size
        layer = o["colour"] + (shade - shade.mean())[..., None] * rng.uniform(0, 30)
        sel = o["full"].astype(bool)
        image[sel] = layer[sel]
    image += rng.normal(0.0, 3.0, image.shape)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return image, [(o["class_id"] + 1, o["visible"]) for o in objects]


# ------------------------------------------------------------------------------------------
# Writing and caching
# ------------------------------------------------------------------------------------------
def _params(split, num_images, image_size, seed):
    return {
        "generator_version": GENERATOR_VERSION,
        "split": split,
        "num_images": int(num_images),
        "image_size": int(image_size),
        "seed": int(seed),
    }


def _is_complete(image_root, params):
    marker = os.path.join(image_root, _MARKER)
    try:
        with open(marker) as f:
            return json.load(f) == params
    except (OSError, ValueError):
        return False


def _write_split(out_dir, split, num_images, image_size, seed):
    images, annotations = [], []
    for index in range(num_images):
        image, objects = _generate_image(image_size, seed, index)
        file_name = f"{index:06d}.jpg"
        if not cv2.imwrite(
            os.path.join(out_dir, file_name), image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
        ):
            raise OSError(f"Could not write image '{os.path.join(out_dir, file_name)}'")
        image_id = index + 1
        images.append(
            {"id": image_id, "file_name": file_name, "height": image_size, "width": image_size}
        )
        for category_id, visible in objects:
            polygons = mask_to_polygons(visible)
            rle = mask_util.merge(mask_util.frPyObjects(polygons, image_size, image_size))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "segmentation": polygons,
                    "area": float(mask_util.area(rle)),
                    "bbox": [float(v) for v in mask_util.toBbox(rle)],
                    "iscrowd": 0,
                }
            )
    coco = {
        "info": {"description": "light_rcnn synthetic shapes", **_params(split, num_images, image_size, seed)},
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASS_NAMES)
        ],
    }
    with open(os.path.join(out_dir, f"{split}.json"), "w") as f:
        json.dump(coco, f)


def generate_shapes_dataset(root, split, num_images, image_size=DEFAULT_IMAGE_SIZE, seed=DEFAULT_SEED):
    """Generate one split of the shapes set (or re-use a complete cached copy).

    Args:
        root (str): cache root ("" = ``$LIGHT_RCNN_CACHE/datasets`` or ``~/.cache/...``).
        split (str): split name, e.g. ``"train"``; names the folder and the JSON.
        num_images (int): number of images.
        image_size (int): side of the square images in pixels.
        seed (int): generator seed.

    Returns:
        tuple[str, str]: ``(json_file, image_root)``.
    """
    if int(num_images) < 1 or int(image_size) < 32:
        raise ValueError(f"Need num_images >= 1 and image_size >= 32, got {num_images}, {image_size}")
    root = resolve_cache_root(root)
    check_cache_root(root)
    json_file, image_root = shapes_split_paths(root, split, num_images, image_size, seed)

    def write(tmp):
        logger.info(f"Generating {num_images} shapes images ({image_size} px, seed {seed}) in {image_root}")
        _write_split(tmp, split, int(num_images), int(image_size), int(seed))

    build_directory_once(image_root, _params(split, num_images, image_size, seed), write)
    return json_file, image_root


def build_directory_once(target, params, write):
    """Make the folder ``target`` with ``write(tmp_folder)`` unless it is complete already.

    Complete means: its ``DONE.json`` holds exactly ``params``. The folder is written in a
    temporary sibling, ``DONE.json`` last, and renamed into place, so an interrupted run never
    leaves a folder that looks complete, and concurrent writers (e.g. data-loader processes) end
    with one complete copy. An incomplete folder, or one with other ``params`` (e.g. an older
    generator version), is replaced.
    """
    if _is_complete(target, params):
        return target
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.tmp-", dir=parent)
    try:
        write(tmp)
        with open(os.path.join(tmp, _MARKER), "w") as f:
            json.dump(params, f)
        os.chmod(tmp, 0o755)
        if os.path.exists(target):
            if _is_complete(target, params):  # another process finished first
                return target
            shutil.rmtree(target)  # incomplete or from another generator version
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_complete(target, params):  # lost a race to a finished writer: fine
                raise
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def main(argv=None):
    parser = argparse.ArgumentParser(description="Generate one split of the shapes data set.")
    parser.add_argument("--root", default="", help="cache root (default: $LIGHT_RCNN_CACHE/datasets)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--num", type=int, default=DEFAULT_SPLITS["shapes_val"][2])
    parser.add_argument("--size", type=int, default=DEFAULT_IMAGE_SIZE)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    json_file, image_root = generate_shapes_dataset(args.root, args.split, args.num, args.size, args.seed)
    print(f"image_root: {image_root}")
    print(f"json_file:  {json_file}")


if __name__ == "__main__":
    main()
