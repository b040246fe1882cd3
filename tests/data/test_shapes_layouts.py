"""The shapes scenes in Pascal VOC and KITTI layouts (light_rcnn.data.shapes_layouts), registered
through detectron2's register_pascal_voc and datasets/prepare_kitti.py's converter."""
import json
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import PascalVOCDetectionEvaluator
from detectron2.structures import Boxes, BoxMode, Instances

from light_rcnn import load_config
from light_rcnn.data import generate_shapes_dataset
from light_rcnn.data.builtin import register_builtin_datasets, register_shapes_kitti_datasets, register_shapes_voc_datasets
from light_rcnn.data.shapes_layouts import KITTI_TYPES
from light_rcnn.data.shapes_meta import CLASS_NAMES

from ..conftest import tiny_shapes_opts

NUM_TRAIN, NUM_VAL, SIZE = 5, 4, 64


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("layouts"))
    return load_config("light_rcnn://shapes/faster_rcnn_fd_mobilenet_voc_shapes.yaml",
                       tiny_shapes_opts(root, NUM_TRAIN, NUM_VAL, SIZE))


def _shapes_boxes(cfg):
    """[(class name, x0, y0, x1, y1)] per image of the shapes train then val split."""
    s = cfg.DATASETS.SHAPES
    out = []
    for split, num, seed in (("train", NUM_TRAIN, s.SEED), ("val", NUM_VAL, s.SEED + 1)):
        json_file, _ = generate_shapes_dataset(s.ROOT, split, num, SIZE, seed)
        with open(json_file) as f:
            coco = json.load(f)
        for img in coco["images"]:
            out.append(sorted((CLASS_NAMES[a["category_id"] - 1], a["bbox"][0], a["bbox"][1],
                               a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3])
                              for a in coco["annotations"] if a["image_id"] == img["id"]))
    return out


def test_voc_layout_loads_the_shapes_boxes(cfg):
    dirname = register_shapes_voc_datasets(cfg)
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        assert os.path.isdir(os.path.join(dirname, sub)), sub
    train, test = DatasetCatalog.get("shapes_voc_train"), DatasetCatalog.get("shapes_voc_test")
    assert [d["image_id"] for d in train + test] == [f"{i:06d}" for i in range(NUM_TRAIN + NUM_VAL)]
    loaded = [sorted((CLASS_NAMES[a["category_id"]], *a["bbox"]) for a in d["annotations"]) for d in train + test]
    assert loaded == _shapes_boxes(cfg)  # VOC's 1-based inclusive indices read back exactly
    assert all(a["bbox_mode"] == BoxMode.XYXY_ABS for d in train for a in d["annotations"])
    meta = MetadataCatalog.get("shapes_voc_test")
    assert (meta.evaluator_type, meta.year, meta.split, meta.thing_classes) == ("pascal_voc", 2007, "test",
                                                                                list(CLASS_NAMES))


def _voc_ap50(dataset, shift):
    evaluator = PascalVOCDetectionEvaluator("shapes_voc_test")
    evaluator.reset()
    for d in dataset:
        boxes = torch.tensor([a["bbox"] for a in d["annotations"]], dtype=torch.float32) + shift
        inst = Instances((d["height"], d["width"]), pred_boxes=Boxes(boxes),
                         scores=torch.ones(len(boxes)),
                         pred_classes=torch.tensor([a["category_id"] for a in d["annotations"]]))
        evaluator.process([{"image_id": d["image_id"]}], [{"instances": inst}])
    return evaluator.evaluate()["bbox"]["AP50"]


def test_voc_evaluator_scores_the_ground_truth_perfectly(cfg):
    register_shapes_voc_datasets(cfg)
    test = DatasetCatalog.get("shapes_voc_test")
    assert _voc_ap50(test, 0.0) == pytest.approx(100.0)
    assert _voc_ap50(test, 40.0) < 50.0  # boxes 40 px off at 64 px: mostly misses


def test_kitti_layout_through_the_converter(cfg, load_script, tmp_path):
    kitti = register_shapes_kitti_datasets(cfg)
    labels = sorted(os.listdir(os.path.join(kitti, "training", "label_2")))
    assert labels == [f"{i:06d}.txt" for i in range(NUM_TRAIN + NUM_VAL)]
    assert sorted(os.listdir(os.path.join(kitti, "training", "image_2")))[0] == "000000.png"
    with open(os.path.join(kitti, "training", "label_2", labels[0])) as f:
        lines = f.read().splitlines()
    assert all(len(line.split()) == 15 and line.split()[0] in KITTI_TYPES.values() for line in lines)

    # only squares are cars; their boxes are the shapes boxes
    expected = [sorted(b[1:] for b in boxes if b[0] == "square") for boxes in _shapes_boxes(cfg)]
    got = []
    for name in ("shapes_kitti_train", "shapes_kitti_val"):
        for d in DatasetCatalog.get(name):
            assert all(a["category_id"] == 0 for a in d["annotations"])
            got.append(sorted(tuple(BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS))
                              for a in d["annotations"]))
    assert len(got) == NUM_TRAIN + NUM_VAL
    assert [[tuple(np.round(b, 2)) for b in g] for g in got] == [[tuple(b) for b in e] for e in expected]
    assert any(expected), "no square in the tiny set: the check above would be empty"
    assert MetadataCatalog.get("shapes_kitti_val").thing_classes == ["Car"]

    # datasets/prepare_kitti.py on the layout writes the same JSON
    out = str(tmp_path / "annotations")
    written = load_script("datasets/prepare_kitti.py").main(
        ["--root", kitti, "--split-dir", os.path.join(kitti, "splits"), "--out-dir", out])
    for split in ("train", "val"):
        with open(written[split]) as a, open(os.path.join(kitti, "annotations", f"kitti_{split}.json")) as b:
            assert json.load(a) == json.load(b)


def test_layouts_are_written_once_and_registered_when_named(cfg):
    dirname = register_shapes_voc_datasets(cfg)
    marker = os.path.join(os.path.dirname(dirname), "DONE.json")
    before = os.stat(marker).st_mtime_ns
    for name in ("shapes_voc_train", "shapes_kitti_val"):
        DatasetCatalog.remove(name)
    register_builtin_datasets(cfg)  # names shapes_voc_*: registered again, not rewritten
    assert "shapes_voc_train" in DatasetCatalog and "shapes_kitti_val" not in DatasetCatalog
    assert os.stat(marker).st_mtime_ns == before
    kitti_cfg = cfg.clone()
    kitti_cfg.DATASETS.TRAIN, kitti_cfg.DATASETS.TEST = ("shapes_kitti_train",), ("shapes_kitti_val",)
    register_builtin_datasets(kitti_cfg)
    assert "shapes_kitti_val" in DatasetCatalog
