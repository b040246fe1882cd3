"""The shapes generator: determinism, exact masks/boxes/areas, COCO loading, registration,
caching and the refusal to write inside the installed package."""
import json
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

import light_rcnn
from light_rcnn import get_light_rcnn_cfg
from light_rcnn.data import register_shapes_datasets
from light_rcnn.data.builtin import register_default_shapes_datasets
from light_rcnn.data.shapes import (
    MIN_VISIBLE_PIXELS,
    _generate_image,
    generate_shapes_dataset,
    main,
    mask_to_polygons,
)
from light_rcnn.data.shapes_meta import CLASS_NAMES

PACKAGE_DIR = os.path.dirname(light_rcnn.__file__)

TINY = dict(num_images=5, image_size=64)


def _files(image_root):
    return {f: open(os.path.join(image_root, f), "rb").read() for f in sorted(os.listdir(image_root))}


@pytest.fixture
def restore_registration():
    yield
    register_default_shapes_datasets()


def test_deterministic_for_a_seed(tmp_path):
    _, a = generate_shapes_dataset(str(tmp_path / "a"), "val", seed=3, **TINY)
    _, b = generate_shapes_dataset(str(tmp_path / "b"), "val", seed=3, **TINY)
    _, c = generate_shapes_dataset(str(tmp_path / "c"), "val", seed=4, **TINY)
    files_a, files_b, files_c = _files(a), _files(b), _files(c)
    assert len([f for f in files_a if f.endswith(".jpg")]) == 5
    assert files_a == files_b
    assert files_a["val.json"] != files_c["val.json"]
    assert files_a["000000.jpg"] != files_c["000000.jpg"]


def test_annotations_match_masks(tmp_path):
    json_file, image_root = generate_shapes_dataset(str(tmp_path), "train", num_images=8, image_size=96, seed=0)
    coco = json.load(open(json_file))
    assert [c["name"] for c in coco["categories"]] == list(CLASS_NAMES)
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3, 4]
    assert coco["annotations"], "no objects generated"
    for ann in coco["annotations"]:
        rle = mask_util.merge(mask_util.frPyObjects(ann["segmentation"], 96, 96))
        mask = mask_util.decode(rle)
        ys, xs = np.nonzero(mask)
        assert ann["area"] == mask.sum() >= MIN_VISIBLE_PIXELS
        x, y, w, h = ann["bbox"]
        assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        assert ann["iscrowd"] == 0 and 1 <= ann["category_id"] <= len(CLASS_NAMES)
    # pycocotools reads it, every image is on disk with the declared size
    api = COCO(json_file)
    assert len(api.getImgIds()) == 8 and len(api.getAnnIds()) == len(coco["annotations"])
    for img in coco["images"]:
        assert os.path.isfile(os.path.join(image_root, img["file_name"]))
        assert (img["height"], img["width"]) == (96, 96)


def test_polygons_rasterize_to_the_rendered_visible_masks():
    for index in range(6):
        _, objects = _generate_image(80, 11, index)
        covered = np.zeros((80, 80), bool)
        for _, visible in objects:
            polys = mask_to_polygons(visible)
            decoded = mask_util.decode(mask_util.merge(mask_util.frPyObjects(polys, 80, 80)))
            np.testing.assert_array_equal(decoded, visible)
            assert not (covered & visible.astype(bool)).any()  # visible masks never overlap
            covered |= visible.astype(bool)


def test_all_coco_size_ranges_occur_at_192px(tmp_path):
    json_file, _ = generate_shapes_dataset(str(tmp_path), "val", num_images=40, image_size=192, seed=1)
    areas = np.array([a["area"] for a in json.load(open(json_file))["annotations"]])
    small, large = (areas < 32**2).mean(), (areas >= 96**2).mean()
    assert 0 < small < 0.4 and 0 < large and small + large < 0.7
    assert np.sqrt(areas.min()) >= 7


def test_reuses_complete_output_and_replaces_incomplete(tmp_path):
    json_file, image_root = generate_shapes_dataset(str(tmp_path), "val", seed=0, **TINY)
    marker = os.path.join(image_root, "DONE.json")
    mtimes = {f: os.stat(os.path.join(image_root, f)).st_mtime_ns for f in os.listdir(image_root)}
    assert generate_shapes_dataset(str(tmp_path), "val", seed=0, **TINY) == (json_file, image_root)
    assert mtimes == {f: os.stat(os.path.join(image_root, f)).st_mtime_ns for f in os.listdir(image_root)}
    assert [p for p in os.listdir(os.path.dirname(image_root)) if ".tmp" in p] == []

    os.remove(marker)  # a set without its marker is incomplete: rebuilt
    os.remove(os.path.join(image_root, "000001.jpg"))
    generate_shapes_dataset(str(tmp_path), "val", seed=0, **TINY)
    assert os.path.isfile(marker) and os.path.isfile(os.path.join(image_root, "000001.jpg"))


@pytest.mark.parametrize("where", ["datasets_cache", os.path.join("configs", "cache")])
def test_refuses_a_root_inside_the_installed_package(where, tmp_path, monkeypatch, restore_registration):
    inside = os.path.join(PACKAGE_DIR, where)  # configs/ is a symlink out of the package
    message = "inside the installed light_rcnn package"
    with pytest.raises(ValueError, match=message):
        generate_shapes_dataset(inside, "val", **TINY)
    cfg = get_light_rcnn_cfg()
    cfg.DATASETS.SHAPES.ROOT = inside
    with pytest.raises(ValueError, match=message):
        register_shapes_datasets(cfg)
    monkeypatch.setenv("LIGHT_RCNN_CACHE", PACKAGE_DIR)
    with pytest.raises(ValueError, match=message):
        generate_shapes_dataset("", "val", **TINY)
    assert not os.path.exists(inside)
    assert not os.path.exists(os.path.join(PACKAGE_DIR, "datasets"))
    # anywhere outside the package is the user's choice
    monkeypatch.setenv("LIGHT_RCNN_CACHE", str(tmp_path))
    assert generate_shapes_dataset("", "val", **TINY)[0].startswith(str(tmp_path))


def test_cache_root_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHT_RCNN_CACHE", str(tmp_path))
    json_file, _ = generate_shapes_dataset("", "val", seed=0, **TINY)
    assert json_file.startswith(os.path.join(str(tmp_path), "datasets", "shapes_64px_seed0_n5"))


def test_registration_from_cfg(tmp_path, restore_registration):
    cfg = get_light_rcnn_cfg()
    cfg.DATASETS.SHAPES.ROOT = str(tmp_path)
    cfg.DATASETS.SHAPES.NUM_TRAIN, cfg.DATASETS.SHAPES.NUM_VAL = 4, 3
    cfg.DATASETS.SHAPES.IMAGE_SIZE = 64
    register_shapes_datasets(cfg)
    meta = MetadataCatalog.get("shapes_val")
    assert meta.evaluator_type == "coco" and meta.thing_classes == list(CLASS_NAMES)
    assert meta.json_file.endswith(os.path.join("shapes_64px_seed1_n3", "val", "val.json"))
    assert not os.path.exists(meta.json_file)  # lazy

    dicts = DatasetCatalog.get("shapes_val")
    assert os.path.isfile(meta.json_file) and meta.image_root == os.path.dirname(meta.json_file)
    assert len(dicts) == 3
    assert all(os.path.isfile(d["file_name"]) for d in dicts)
    anns = [a for d in dicts for a in d["annotations"]]
    assert anns and all(a["segmentation"] and 0 <= a["category_id"] < len(CLASS_NAMES) for a in anns)
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2, 4: 3}

    # re-registration with other sizes replaces both names; generate_now writes the files
    cfg.DATASETS.SHAPES.NUM_VAL = 2
    register_shapes_datasets(cfg, generate_now=True)
    meta = MetadataCatalog.get("shapes_val")
    assert "n2" in meta.json_file and os.path.isfile(meta.json_file)
    assert os.path.isfile(MetadataCatalog.get("shapes_train").json_file)
    assert len(DatasetCatalog.get("shapes_val")) == 2


def test_default_registration():
    assert "shapes_train" in DatasetCatalog.list() and "shapes_val" in DatasetCatalog.list()
    assert "shapes_192px_seed0_n400" in MetadataCatalog.get("shapes_train").json_file
    assert "shapes_192px_seed1_n60" in MetadataCatalog.get("shapes_val").json_file


def test_command_line(tmp_path, capsys):
    main(["--root", str(tmp_path), "--split", "val", "--num", "2", "--size", "64"])
    out = capsys.readouterr().out
    image_root = os.path.join(str(tmp_path), "shapes_64px_seed0_n2", "val")
    assert image_root in out and os.path.isfile(os.path.join(image_root, "val.json"))


def test_losing_a_race_to_another_writer_is_fine(tmp_path, monkeypatch):
    from light_rcnn.data import shapes

    write = shapes._write_split
    state = {"nested": False}

    def write_while_another_process_finishes(*args):
        write(*args)
        if not state["nested"]:  # the other process renames its copy into place first
            state["nested"] = True
            generate_shapes_dataset(str(tmp_path), "val", seed=0, **TINY)

    monkeypatch.setattr(shapes, "_write_split", write_while_another_process_finishes)
    json_file, image_root = generate_shapes_dataset(str(tmp_path), "val", seed=0, **TINY)
    assert state["nested"] and os.path.isfile(json_file)
    assert sorted(os.listdir(os.path.dirname(image_root))) == ["val"]  # no temporary left
