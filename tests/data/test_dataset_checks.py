"""Every bad-input case of light_rcnn.data.dataset_checks behaves as its docstring says."""
import json
import os

import cv2
import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.build import get_detection_dataset_dicts
from detectron2.data.common import MapDataset
from detectron2.data.detection_utils import read_image

from light_rcnn.data.dataset_checks import (
    CheckedDatasetMapper,
    load_coco_instances_checked,
    register_coco_instances_checked,
    register_coco_sets,
)

H, W = 40, 56  # odd, non-square


def _ann(ann_id, image_id, bbox):
    x, y, w, h = [float(v) if v == v else 10.0 for v in bbox]  # polygon from a sane box
    return {
        "id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0, "bbox": bbox,
        "area": 100.0, "segmentation": [[x, y, x + 10, y, x + 10, y + 10, x, y + 10]],
    }


@pytest.fixture
def coco_set(tmp_path):
    """Four images: a.jpg (2 boxes), gray.jpg (grayscale, 1 box), empty.jpg (no annotations),
    bad.jpg (1 degenerate box only)."""
    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "empty.jpg", "bad.jpg"):
        cv2.imwrite(str(root / name), rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    cv2.imwrite(str(root / "gray.jpg"), rng.integers(0, 255, (H, W), dtype=np.uint8))
    coco = {
        "images": [
            {"id": i + 1, "file_name": n, "height": H, "width": W}
            for i, n in enumerate(["a.jpg", "gray.jpg", "empty.jpg", "bad.jpg"])
        ],
        "annotations": [
            _ann(1, 1, [2, 3, 10, 10]),
            _ann(2, 1, [20, 5, 0, 10]),  # zero width -> dropped, a.jpg keeps id 1
            _ann(3, 2, [5, 5, 12, 14]),
            _ann(4, 4, [5, 5, 10, -3]),  # negative height
            _ann(5, 4, [float("nan"), 5, 10, 10]),  # NaN
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    json_file = tmp_path / "ann.json"
    json_file.write_text(json.dumps(coco))
    return str(json_file), str(root), coco


@pytest.fixture
def warnings_log(logger_warnings):
    """The module's warnings (caplog)."""
    return logger_warnings("light_rcnn.data.dataset_checks")


@pytest.fixture
def registered(coco_set):
    names = []

    def register(name):
        json_file, root, _ = coco_set
        register_coco_instances_checked(name, {}, json_file, root)
        names.append(name)
        return name

    yield register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _mapper_cfg():
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN = (32,)
    cfg.INPUT.MAX_SIZE_TRAIN = 64
    cfg.INPUT.MIN_SIZE_TEST = 32
    cfg.INPUT.MAX_SIZE_TEST = 64
    return cfg


def test_missing_annotation_file(coco_set):
    _, root, _ = coco_set
    missing = os.path.join(os.path.dirname(root), "nope.json")
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_coco_instances_checked(missing, root, "x")


def test_invalid_json(coco_set, tmp_path):
    _, root, _ = coco_set
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(ValueError, match="broken.json.*not valid JSON"):
        load_coco_instances_checked(str(broken), root, "x")
    not_coco = tmp_path / "list.json"
    not_coco.write_text("[1, 2]")
    with pytest.raises(ValueError, match="list.json.*not a COCO instances file"):
        load_coco_instances_checked(str(not_coco), root, "x")


def test_missing_image_directory(coco_set, tmp_path):
    json_file, _, _ = coco_set
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        load_coco_instances_checked(json_file, str(tmp_path / "no_such_dir"), "x")


def test_missing_image_file(coco_set):
    json_file, root, _ = coco_set
    os.remove(os.path.join(root, "gray.jpg"))
    with pytest.raises(FileNotFoundError, match="1 image.*gray.jpg"):
        load_coco_instances_checked(json_file, root, "x")


def test_degenerate_boxes_dropped_with_warning(coco_set, warnings_log):
    json_file, root, _ = coco_set
    dicts = {os.path.basename(d["file_name"]): d for d in load_coco_instances_checked(json_file, root)}
    assert [a["bbox"] for a in dicts["a.jpg"]["annotations"]] == [[2, 3, 10, 10]]
    assert dicts["bad.jpg"]["annotations"] == []  # now an image without annotations
    assert all("id" not in a for d in dicts.values() for a in d["annotations"])
    text = warnings_log.text
    for ann_id, name in ((2, "a.jpg"), (4, "bad.jpg"), (5, "bad.jpg")):
        assert f"annotation id {ann_id} of image '{os.path.join(root, name)}'" in text
    assert "dropped 3 annotation(s)" in text


def test_images_without_annotations_kept_for_eval_filtered_for_training(registered):
    name = registered("checks_empty")
    assert len(DatasetCatalog.get(name)) == 4
    names_eval = [os.path.basename(d["file_name"]) for d in get_detection_dataset_dicts(name, filter_empty=False)]
    names_train = [os.path.basename(d["file_name"]) for d in get_detection_dataset_dicts(name, filter_empty=True)]
    assert sorted(names_eval) == ["a.jpg", "bad.jpg", "empty.jpg", "gray.jpg"]
    assert sorted(names_train) == ["a.jpg", "gray.jpg"]
    meta = MetadataCatalog.get(name)
    assert meta.evaluator_type == "coco" and meta.thing_classes == ["thing"]


def test_grayscale_image_becomes_three_channels(coco_set):
    json_file, root, _ = coco_set
    gray = os.path.join(root, "gray.jpg")
    assert read_image(gray, format="BGR").shape == (H, W, 3)
    d = next(d for d in load_coco_instances_checked(json_file, root) if d["file_name"] == gray)
    out = CheckedDatasetMapper(_mapper_cfg(), is_train=True)(d)
    assert out["image"].shape[0] == 3 and len(out["instances"]) == 1


def test_corrupt_image_skipped_in_training_error_in_eval(coco_set, warnings_log):
    json_file, root, _ = coco_set
    dicts = load_coco_instances_checked(json_file, root)
    corrupt = os.path.join(root, "a.jpg")
    with open(corrupt, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 this is not a jpeg")
    d = next(d for d in dicts if d["file_name"] == corrupt)
    cfg = _mapper_cfg()

    assert CheckedDatasetMapper(cfg, is_train=True)(d) is None
    assert f"Skipping image '{corrupt}'" in warnings_log.text
    with pytest.raises(RuntimeError, match="a.jpg"):
        CheckedDatasetMapper(cfg, is_train=False)(d)

    truncated = os.path.join(root, "empty.jpg")  # a real JPEG cut in half
    data = open(truncated, "rb").read()
    with open(truncated, "wb") as f:
        f.write(data[: len(data) // 2])
    t = next(d for d in dicts if d["file_name"] == truncated)
    assert CheckedDatasetMapper(cfg, is_train=True)(t) is None
    assert f"Skipping image '{truncated}'" in warnings_log.text

    # detectron2's MapDataset draws another image when the mapper returns None
    good = next(d for d in dicts if d["file_name"].endswith("gray.jpg"))
    out = MapDataset([d, good], CheckedDatasetMapper(cfg, is_train=True))[0]
    assert out["file_name"] == good["file_name"]


def test_register_coco_sets_same_files_again_is_a_no_op(coco_set, tmp_path):
    json_file, root, _ = coco_set
    try:
        register_coco_sets([("checks_cli", json_file, root)])
        register_coco_sets([("checks_cli", json_file, root)])  # e.g. a second launched process
        assert len(DatasetCatalog.get("checks_cli")) == 4
        assert MetadataCatalog.get("checks_cli").evaluator_type == "coco"
        other = str(tmp_path / "other.json")
        with pytest.raises(ValueError, match=r"'checks_cli' is already registered .*other.json"):
            register_coco_sets([("checks_cli", other, root)])
    finally:
        DatasetCatalog.remove("checks_cli")
        MetadataCatalog.remove("checks_cli")


def test_register_coco_sets_checks_the_files_exist_when_registering(coco_set, tmp_path):
    json_file, root, _ = coco_set
    missing_json = str(tmp_path / "missing.json")
    missing_root = str(tmp_path / "no_images")
    # Every spec is checked first: the good one before the bad one is not registered either.
    with pytest.raises(FileNotFoundError, match=r"'checks_files_b'.*annotation file '.*missing\.json'"):
        register_coco_sets([("checks_files_a", json_file, root), ("checks_files_b", missing_json, root)])
    with pytest.raises(FileNotFoundError, match=r"'checks_files_c'.*image directory '.*no_images'"):
        register_coco_sets([("checks_files_c", json_file, missing_root)])
    # One name given twice with other files in one call is refused the same way as across calls.
    with pytest.raises(ValueError, match=r"'checks_files_d' is already registered .*missing\.json"):
        register_coco_sets([("checks_files_d", json_file, root), ("checks_files_d", missing_json, root)])
    assert not {"checks_files_a", "checks_files_b", "checks_files_c", "checks_files_d"} & set(DatasetCatalog.list())
