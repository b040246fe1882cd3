"""light_rcnn.data.shapes_crops: the classification set cut from generated shapes scenes (never
from shapes_val), its background patches, its cache and its command line."""
import json
import os

import cv2
import numpy as np
import pytest

from light_rcnn.data import shapes_crops
from light_rcnn.data.image_folder import scan_image_folder
from light_rcnn.data.shapes import generate_shapes_dataset
from light_rcnn.data.shapes_crops import (
    BACKGROUND,
    CLASSES,
    PRETRAIN_SPLIT,
    build_shapes_crops,
    crop_square,
    main,
    pretrain_scene_seed,
)
from light_rcnn.data.shapes_meta import DEFAULT_SEED, DEFAULT_SPLITS

# 12 + 6 scenes of 64 px: every class occurs in both halves (checked by build_shapes_crops).
TINY = dict(train_scenes=12, val_scenes=6, scene_size=64, crop_size=32)


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("crops_cache"))
    folder = build_shapes_crops(root, **TINY)
    with open(os.path.join(folder, "index.json")) as f:
        index = json.load(f)
    return root, folder, index


def _overlap(square, box):
    x0, y0, x1, y1 = square
    bx, by, bw, bh = box
    return max(0.0, min(x1, bx + bw) - max(x0, bx)) * max(0.0, min(y1, by + bh) - max(y0, by))


def test_image_folder_layout(crops):
    _, folder, index = crops
    for split in ("train", "val"):
        classes, samples = scan_image_folder(os.path.join(folder, split))
        assert classes == sorted(CLASSES)
        assert len(samples) == len(index[split])
        assert {classes[label] for _, label in samples} == set(CLASSES)  # no empty class
        for path, _ in samples[:10]:
            assert cv2.imread(path).shape == (32, 32, 3)
        for r in index[split]:
            assert os.path.isfile(os.path.join(folder, split, r["file"]))
            assert r["file"].startswith(r["class"] + "/")
    # train and val come from different scenes
    assert {r["scene"] for r in index["train"]} <= set(range(12))
    assert {r["scene"] for r in index["val"]} <= set(range(12, 18))


def test_never_from_the_detection_sets(crops, tmp_path):
    root, folder, index = crops
    params = index["params"]
    detection_seeds = {DEFAULT_SEED + offset for _, _, _, offset in DEFAULT_SPLITS.values()}
    assert params["scene_seed"] == pretrain_scene_seed(DEFAULT_SEED) not in detection_seeds
    assert params["scene_split"] == PRETRAIN_SPLIT not in {s for s, _, _, _ in DEFAULT_SPLITS.values()}
    assert f"seed{params['scene_seed']}" in index["scene_json"]
    # no scene is a shapes_val (or shapes_train) image of the same size
    _, pre_root = generate_shapes_dataset(root, PRETRAIN_SPLIT, 18, 64, params["scene_seed"])
    for split, _, _, offset in DEFAULT_SPLITS.values():
        _, det_root = generate_shapes_dataset(str(tmp_path), split, 6, 64, DEFAULT_SEED + offset)
        det = [cv2.imread(os.path.join(det_root, f"{i:06d}.jpg")) for i in range(6)]
        for i in range(18):
            scene = cv2.imread(os.path.join(pre_root, f"{i:06d}.jpg"))
            assert not any(np.array_equal(scene, d) for d in det), (split, i)


def test_seed_offset_guard(monkeypatch):
    monkeypatch.setattr(shapes_crops, "PRETRAIN_SEED_OFFSET", 1)  # = shapes_val's offset
    with pytest.raises(ValueError, match="is a detection set's seed"):
        pretrain_scene_seed(0)


def test_background_patches_overlap_no_object(crops):
    _, _, index = crops
    with open(index["scene_json"]) as f:
        coco = json.load(f)
    boxes = {}
    for a in coco["annotations"]:
        boxes.setdefault(a["image_id"] - 1, []).append(a["bbox"])
    records = index["train"] + index["val"]
    background = [r for r in records if r["class"] == BACKGROUND]
    assert len(background) >= 6
    for r in background:
        assert all(_overlap(r["crop"], b) == 0 for b in boxes.get(r["scene"], [])), r
    for r in records:
        if r["class"] != BACKGROUND:  # an object crop is centred on (and holds) its box
            x0, y0, x1, y1 = r["crop"]
            bx, by, bw, bh = r["object_box"]
            assert r["object_box"] in boxes[r["scene"]]
            assert _overlap(r["crop"], r["object_box"]) == pytest.approx(bw * bh, abs=1.0)
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64 and x1 - x0 == y1 - y0


def test_crop_square():
    assert crop_square([10, 20, 8, 4], 0.25, 64) == (8, 16, 20, 28)  # side 8 * 1.5 = 12 at (14, 22)
    assert crop_square([0, 0, 10, 10], 0.5, 64) == (0, 0, 20, 20)  # moved inside
    assert crop_square([50, 58, 14, 6], 0.25, 64) == (43, 43, 64, 64)  # side 21, moved inside
    assert crop_square([0, 0, 60, 64], 0.25, 64) == (0, 0, 64, 64)  # at most the image


def test_cached_and_command_line(crops, capsys):
    root, folder, _ = crops
    done = os.path.join(folder, "DONE.json")
    mtime = os.stat(done).st_mtime_ns
    argv = ["--root", root, "--train-scenes", "12", "--val-scenes", "6", "--scene-size", "64",
            "--crop-size", "32"]
    assert main(argv) == folder
    assert os.stat(done).st_mtime_ns == mtime  # re-used, not rewritten
    out = capsys.readouterr().out
    assert f"folder: {folder}" in out and "train: circle" in out and "background" in out
    with pytest.raises(SystemExit):
        main(["--root", root, "--train-scenes", "0"])
    assert "train_scenes" in capsys.readouterr().err


def test_too_few_scenes_refused(tmp_path):
    with pytest.raises(ValueError, match="use more scenes"):
        build_shapes_crops(str(tmp_path), train_scenes=1, val_scenes=1, scene_size=64, crop_size=16)
    assert not [d for d in os.listdir(tmp_path) if d.startswith("shapes_crops")]  # nothing left
