"""datasets/prepare_kitti.py on a small generated sample in KITTI label_2 format."""
import json
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog

# datasets/ is not a package: load the script the way `python datasets/prepare_kitti.py` runs it.


@pytest.fixture(scope="module")
def prepare_kitti(load_script):
    return load_script("datasets/prepare_kitti.py")



LABELS = {
    "000000": [
        "Car 0.00 0 -1.58 587.01 173.33 614.12 200.12 1.65 1.67 3.64 -0.65 1.71 46.70 -1.59",
        "Pedestrian 0.00 1 0.21 423.17 173.67 433.17 224.03 1.60 0.38 0.30 -5.87 1.63 23.11 -0.03",
        "DontCare -1 -1 -10 503.89 169.71 590.61 190.13 -1 -1 -1 -1000 -1000 -1000 -10",
        "Van 0.50 2 1.00 10.0 20.0 110.5 90.0 2.0 1.9 4.5 1.0 1.5 20.0 0.5",
    ],
    "000001": [
        "Car 0.88 3 -0.69 0.00 192.37 402.31 374.00 1.60 1.57 3.23 -2.70 1.74 3.68 -1.29",
        "",
    ],
    "000002": ["DontCare -1 -1 -10 1.0 2.0 30.0 40.0 -1 -1 -1 -1000 -1000 -1000 -10"],
}


def _write_sample(root, labels=LABELS, sizes=((60, 90), (50, 70), (40, 41))):
    image_dir = os.path.join(root, "training", "image_2")
    label_dir = os.path.join(root, "training", "label_2")
    os.makedirs(image_dir)
    os.makedirs(label_dir)
    for (image_id, lines), (h, w) in zip(labels.items(), sizes):
        cv2.imwrite(os.path.join(image_dir, image_id + ".png"), np.zeros((h, w, 3), np.uint8))
        with open(os.path.join(label_dir, image_id + ".txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return root


def test_convert_default_car(tmp_path, prepare_kitti):
    root = _write_sample(str(tmp_path / "kitti"))
    coco = prepare_kitti.convert(root, ["000000", "000001", "000002"], ["Car"])
    assert coco["categories"] == [{"id": 1, "name": "Car", "supercategory": "kitti"}]
    assert [(i["file_name"], i["height"], i["width"]) for i in coco["images"]] == [
        ("000000.png", 60, 90), ("000001.png", 50, 70), ("000002.png", 40, 41)]
    anns = coco["annotations"]
    assert len(anns) == 2  # DontCare, Pedestrian and Van left out
    assert anns[0]["bbox"] == pytest.approx([587.01, 173.33, 27.11, 26.79])
    assert anns[0]["area"] == pytest.approx(27.11 * 26.79)
    assert anns[1]["image_id"] == 2 and anns[1]["occluded"] == 3
    assert anns[1]["truncated"] == pytest.approx(0.88)
    assert all(a["category_id"] == 1 and a["iscrowd"] == 0 for a in anns)


def test_main_writes_splits_and_registration_reads_them(tmp_path, prepare_kitti):
    root = _write_sample(str(tmp_path / "kitti"))
    written = prepare_kitti.main(["--root", root, "--classes", "Car", "Van",
                                  "--val-fraction", "0.34", "--seed", "1"])
    train = json.load(open(written["train"]))
    val = json.load(open(written["val"]))
    assert len(train["images"]) == 2 and len(val["images"]) == 1
    ids = {i["kitti_id"] for i in train["images"]} | {i["kitti_id"] for i in val["images"]}
    assert ids == set(LABELS)
    assert [c["name"] for c in train["categories"]] == ["Car", "Van"]
    # same seed, same split
    again = prepare_kitti.split_ids(list(LABELS), 0.34, 1)
    assert again[1] == [i["kitti_id"] for i in val["images"]]

    from light_rcnn.data.kitti import register_kitti_datasets

    try:
        register_kitti_datasets(str(tmp_path))
        dicts = DatasetCatalog.get("kitti_train") + DatasetCatalog.get("kitti_val")
        assert len(dicts) == 3
        assert MetadataCatalog.get("kitti_train").thing_classes == ["Car", "Van"]
    finally:
        _forget_kitti()


def _forget_kitti():
    for name in ("kitti_train", "kitti_val"):
        if name in DatasetCatalog:
            DatasetCatalog.remove(name)
        if name in MetadataCatalog:
            MetadataCatalog.remove(name)


def test_import_does_not_register_kitti():
    code = ("import light_rcnn; from detectron2.data import DatasetCatalog; "
            "print(sorted(n for n in DatasetCatalog.list() if 'kitti' in n or 'shapes' in n))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['shapes_train', 'shapes_val']"


@pytest.mark.parametrize("datasets, registered", [
    (["DATASETS.TRAIN", ("kitti_train",), "DATASETS.TEST", ("kitti_val",)], True),
    (["DATASETS.TEST", ("kitti_val",)], True),
    ([], False),  # the shapes config names no KITTI set
])
def test_kitti_registered_when_a_config_names_it(datasets, registered, tmp_path, monkeypatch, config_file, prepare_kitti):
    from light_rcnn import load_config
    from light_rcnn.data import register_builtin_datasets, register_shapes_datasets

    root = _write_sample(str(tmp_path / "kitti"))
    prepare_kitti.main(["--root", root, "--val-fraction", "0.34", "--seed", "1"])
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    cfg = load_config(config_file("shapes/mask_rcnn_R_50_C4_shapes.yaml"), datasets)
    _forget_kitti()
    try:
        register_builtin_datasets(cfg)
        assert ("kitti_train" in DatasetCatalog and "kitti_val" in DatasetCatalog) == registered
        if registered:
            assert len(DatasetCatalog.get("kitti_train")) == 2
    finally:
        _forget_kitti()
        register_shapes_datasets()  # back to the default shapes registration


def test_explicit_split_dir(tmp_path, prepare_kitti):
    root = _write_sample(str(tmp_path / "kitti"))
    split_dir = tmp_path / "split"
    split_dir.mkdir()
    (split_dir / "train.txt").write_text("000000\n000002\n")
    (split_dir / "val.txt").write_text("000001\n")
    written = prepare_kitti.main(["--root", root, "--split-dir", str(split_dir),
                                  "--out-dir", str(tmp_path / "out")])
    assert [i["file_name"] for i in json.load(open(written["val"]))["images"]] == ["000001.png"]


@pytest.mark.parametrize("line,message", [
    ("Car 0.00 0 -1.58 587.01 173.33 614.12 200.12 1.65 1.67 3.64 -0.65 1.71 46.70",
     "expected 15 fields"),
    ("Car 0.00 0 -1.58 587.01 173.33 614.12 200.12 1.65 1.67 3.64 -0.65 1.71 46.70 -1.59 0.9",
     "expected 15 fields"),
    ("Car 0.00 0 -1.58 587.01 abc 614.12 200.12 1.65 1.67 3.64 -0.65 1.71 46.70 -1.59",
     "non-numeric value 'abc'"),
    ("Car 0.00 0 -1.58 587.01 173.33 500.00 200.12 1.65 1.67 3.64 -0.65 1.71 46.70 -1.59",
     "empty or invalid box"),
])
def test_malformed_line_names_file_and_line(tmp_path, line, message, prepare_kitti):
    labels = {"000000": [LABELS["000000"][0], line]}
    root = _write_sample(str(tmp_path / "kitti"), labels)
    path = os.path.join(root, "training", "label_2", "000000.txt")
    with pytest.raises(prepare_kitti.KittiLabelError, match=f"^{re.escape(path)}:2: .*{re.escape(message)}"):
        prepare_kitti.convert(root, ["000000"], ["Car"])


def test_missing_image_is_named(tmp_path, prepare_kitti):
    root = _write_sample(str(tmp_path / "kitti"))
    os.remove(os.path.join(root, "training", "image_2", "000001.png"))
    with pytest.raises(FileNotFoundError, match="000001"):
        prepare_kitti.convert(root, ["000001"], ["Car"])
