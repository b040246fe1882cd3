"""The shapes scenes in Pascal VOC and KITTI layouts, so the papers' VOC and KITTI detectors run end
to end on generated data (FD-MobileNet paper Sec. 3.2, VOC 2007; dilated-MobileNetV2 paper
Sec. 3.4, KITTI cars).

Both layouts are written from the COCO-format shapes splits (:mod:`light_rcnn.data.shapes`) of
``cfg.DATASETS.SHAPES`` (same images, same seed, same sizes): the shapes train split becomes the
layout's training set, the shapes val split its test (VOC) or val (KITTI) set. Only the boxes
travel (both formats are box-only); a box is the visible object's tight box.

Pascal VOC 2007 (read by detectron2's own :func:`register_pascal_voc`, evaluated by its
``PascalVOCDetectionEvaluator`` with the VOC07 11-point AP)::

    <cache>/shapes_voc_<size>px_seed<seed>_n<train>-<val>/VOC2007/
        JPEGImages/000000.jpg ...     # the shapes JPEGs, byte for byte
        Annotations/000000.xml ...    # name (circle/triangle/square/star), pose Unspecified,
                                      # truncated (box touches the image border), difficult 0,
                                      # bndbox in VOC's 1-based inclusive pixel indices
        ImageSets/Main/train.txt, test.txt

registered as ``shapes_voc_train`` / ``shapes_voc_test`` (4 classes, year 2007).

KITTI (converted by :func:`light_rcnn.data.kitti_labels.main`, the code of
``datasets/prepare_kitti.py``, with its default class ``Car``)::

    <cache>/shapes_kitti_<size>px_seed<seed>_n<train>-<val>/
        training/image_2/000000.png ...   # the shapes images as PNG
        training/label_2/000000.txt ...   # 15 fields a line; 3D fields set to KITTI's "unknown"
        splits/train.txt, val.txt         # the image ids of each split
        annotations/kitti_train.json, kitti_val.json

registered as ``shapes_kitti_train`` / ``shapes_kitti_val``. KITTI's car detector sees one class:
squares are labelled ``Car`` and the other shapes get other KITTI types (:data:`KITTI_TYPES`),
which the converter leaves out as it leaves out pedestrians and cyclists on real KITTI: the
detector must find the squares among look-alike objects that are not annotated. ``truncated`` is
1.0 when the box touches the image border, else 0.0; ``occluded`` is 0 (the annotations describe
the visible part already). Choices of ours: the papers' data sets cannot be downloaded here.

Image ids are ``%06d`` over the training images, then the test / val images. The folders are built
once per parameter set (:func:`light_rcnn.data.shapes.build_directory_once`) and re-used.
"""
import json
import os
import shutil
import xml.etree.ElementTree as ET

import cv2

from .kitti_labels import main as convert_kitti_labels
from .shapes import build_directory_once, generate_shapes_dataset
from .shapes_meta import CLASS_NAMES, DEFAULT_SPLITS, KITTI_DATASETS, VOC_DATASETS

__all__ = [
    "KITTI_DATASETS",
    "KITTI_TYPES",
    "VOC_DATASETS",
    "write_kitti_layout",
    "write_voc_layout",
]

# Bumped whenever a written layout changes; part of each folder's DONE.json.
LAYOUT_VERSION = 1
# Shape class -> KITTI object type; the KITTI detector's one class is "Car".
KITTI_TYPES = {"circle": "Pedestrian", "triangle": "Cyclist", "square": "Car", "star": "Misc"}
KITTI_CLASSES = ("Car",)


def _scenes(root, image_size, seed, sizes):
    """``[(split_index, image_id, image_path, height, width, [(class_name, x, y, w, h)])]`` of the
    shapes train then val split (generated if needed)."""
    scenes = []
    for split_index, (name, (split, _key, _default, seed_offset)) in enumerate(DEFAULT_SPLITS.items()):
        json_file, image_root = generate_shapes_dataset(root, split, int(sizes[name]), image_size, seed + seed_offset)
        with open(json_file) as f:
            coco = json.load(f)
        boxes = {img["id"]: [] for img in coco["images"]}
        for ann in coco["annotations"]:
            boxes[ann["image_id"]].append((CLASS_NAMES[ann["category_id"] - 1], *ann["bbox"]))
        for img in coco["images"]:
            scenes.append((split_index, f"{len(scenes):06d}", os.path.join(image_root, img["file_name"]),
                           img["height"], img["width"], boxes[img["id"]]))
    return scenes


def _write_id_lists(folder, split_names, scenes):
    """``<folder>/<split>.txt`` for the i-th of ``split_names``: the ids of the scenes of shapes
    split i (train, then val), one a line."""
    for split_index, split in enumerate(split_names):
        with open(os.path.join(folder, f"{split}.txt"), "w") as f:
            f.write("".join(f"{scene[1]}\n" for scene in scenes if scene[0] == split_index))


def _layout_dir(root, kind, image_size, seed, sizes):
    counts = "-".join(str(int(sizes[name])) for name in DEFAULT_SPLITS)
    return os.path.join(root, f"shapes_{kind}_{int(image_size)}px_seed{int(seed)}_n{counts}")


def _params(kind, image_size, seed, sizes):
    return {"layout": kind, "layout_version": LAYOUT_VERSION, "image_size": int(image_size),
            "seed": int(seed), "sizes": {name: int(sizes[name]) for name in DEFAULT_SPLITS}}


def _touches_border(x, y, w, h, height, width):
    return x <= 0 or y <= 0 or x + w >= width or y + h >= height


def _voc_xml(image_id, height, width, boxes):
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = "VOC2007"
    ET.SubElement(ann, "filename").text = f"{image_id}.jpg"
    ET.SubElement(ET.SubElement(ann, "source"), "database").text = "light_rcnn shapes"
    size = ET.SubElement(ann, "size")
    for key, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, key).text = str(value)
    ET.SubElement(ann, "segmented").text = "0"
    for name, x, y, w, h in boxes:
        obj = ET.SubElement(ann, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = str(int(_touches_border(x, y, w, h, height, width)))
        ET.SubElement(obj, "difficult").text = "0"
        box = ET.SubElement(obj, "bndbox")
        # COCO's tight box [x, x + w) of pixel columns x .. x + w - 1 -> 1-based inclusive indices
        for key, value in (("xmin", x + 1), ("ymin", y + 1), ("xmax", x + w), ("ymax", y + h)):
            ET.SubElement(box, key).text = str(int(round(value)))
    return ET.ElementTree(ann)


def write_voc_layout(root, image_size, seed, sizes):
    """Write (once) the shapes splits in Pascal VOC 2007 layout; returns the ``VOC2007`` folder.

    Args:
        root (str): the data cache root (resolved, as for the shapes set).
        image_size, seed: the shapes generator's ``DATASETS.SHAPES.IMAGE_SIZE`` / ``SEED``.
        sizes (dict): images per shapes split, ``{"shapes_train": n, "shapes_val": m}``.
    """
    scenes = _scenes(root, image_size, seed, sizes)
    target = _layout_dir(root, "voc", image_size, seed, sizes)

    def write(tmp):
        voc = os.path.join(tmp, "VOC2007")
        for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
            os.makedirs(os.path.join(voc, sub))
        for _, image_id, path, height, width, boxes in scenes:
            shutil.copyfile(path, os.path.join(voc, "JPEGImages", f"{image_id}.jpg"))
            _voc_xml(image_id, height, width, boxes).write(os.path.join(voc, "Annotations", f"{image_id}.xml"))
        _write_id_lists(os.path.join(voc, "ImageSets", "Main"), VOC_DATASETS.values(), scenes)

    return os.path.join(build_directory_once(target, _params("voc", image_size, seed, sizes), write), "VOC2007")


def _kitti_line(name, x, y, w, h, height, width):
    truncated = float(_touches_border(x, y, w, h, height, width))
    # type truncated occluded alpha x1 y1 x2 y2 h w l x y z ry (3D unknown, as KITTI's DontCare)
    return (f"{KITTI_TYPES[name]} {truncated:.2f} 0 -10 {x:.2f} {y:.2f} {x + w:.2f} {y + h:.2f} "
            "-1 -1 -1 -1000 -1000 -1000 -10\n")


def write_kitti_layout(root, image_size, seed, sizes):
    """Write (once) the shapes splits in KITTI layout and convert their labels to COCO JSON with
    ``datasets/prepare_kitti.py``'s code; returns the KITTI root (arguments as
    :func:`write_voc_layout`)."""
    scenes = _scenes(root, image_size, seed, sizes)
    target = _layout_dir(root, "kitti", image_size, seed, sizes)

    def write(tmp):
        image_dir = os.path.join(tmp, "training", "image_2")
        label_dir = os.path.join(tmp, "training", "label_2")
        split_dir = os.path.join(tmp, "splits")
        for folder in (image_dir, label_dir, split_dir):
            os.makedirs(folder)
        for _, image_id, path, height, width, boxes in scenes:
            image = cv2.imread(path, cv2.IMREAD_COLOR)
            if image is None or not cv2.imwrite(os.path.join(image_dir, f"{image_id}.png"), image):
                raise OSError(f"could not convert {path} to {os.path.join(image_dir, image_id + '.png')}")
            with open(os.path.join(label_dir, f"{image_id}.txt"), "w") as f:
                f.writelines(_kitti_line(*box, height, width) for box in boxes)
        _write_id_lists(split_dir, KITTI_DATASETS.values(), scenes)
        convert_kitti_labels(["--root", tmp, "--split-dir", split_dir, "--classes", *KITTI_CLASSES])

    return build_directory_once(target, _params("kitti", image_size, seed, sizes), write)
