"""tools/predict.py end to end with a tiny random-weight eager shapes model: an image folder gives a
PNG per image and a COCO results JSON with RLE masks; a short generated video gives an MP4 with
every frame; nothing existing is overwritten; bad inputs fail before the model loads."""
import json
import os

import cv2
import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from pycocotools import mask as mask_util

from light_rcnn import build_model, load_config
from light_rcnn.data import generate_shapes_dataset
from light_rcnn.deploy import load_predictor

RESULT_KEYS = {"image_id", "category_id", "bbox", "score", "segmentation"}


@pytest.fixture
def tiny_model(tmp_path, config_file, shapes_root, tiny_shapes_opts, tiny_resnet, tiny_sizes):
    """``(checkpoint, config yaml)`` of a random-weight framework-1 shapes model that keeps every
    detection (SCORE_THRESH_TEST 0), at most 8 per image (drawing is the slow part)."""
    opts = tiny_resnet + tiny_sizes + tiny_shapes_opts(shapes_root) + [
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0, "TEST.DETECTIONS_PER_IMAGE", 8]
    cfg = load_config(config_file("shapes/light_mask_rcnn_framework1_shapes.yaml"), opts)
    torch.manual_seed(0)
    model = build_model(cfg)
    d = tmp_path / "model"
    d.mkdir()
    DetectionCheckpointer(model, save_dir=str(d)).save("model")
    with open(d / "config.yaml", "w") as f:
        f.write(cfg.dump())
    return str(d / "model.pth"), str(d / "config.yaml")


@pytest.fixture
def shapes_images(shapes_root):
    """Three generated 64-px shapes images (BGR) and their files."""
    _, image_root = generate_shapes_dataset(shapes_root, "val", 3, 64, 1)
    files = sorted(os.path.join(image_root, f) for f in os.listdir(image_root) if f.endswith(".jpg"))
    assert len(files) == 3
    return files


def _args(model, cfg, inp, out, *extra):
    return ["--model", model, "--config-file", cfg, "--input", inp, "--output", out, "--no-progress", *extra]


def test_image_folder_overlays_and_coco_json(load_tool, tiny_model, shapes_images, tmp_path, capsys):
    model, cfg = tiny_model
    inp = tmp_path / "in"
    inp.mkdir()
    for i, f in enumerate(shapes_images):
        os.symlink(f, inp / f"shape_{i}.jpg")
    out = tmp_path / "out"
    load_tool("predict").main(_args(model, cfg, str(inp), str(out), "--batch-size", "2",
                                    "--confidence-threshold", "0"))
    printed = capsys.readouterr().out
    assert "3 frame(s) predicted" in printed and str(out / "results.json") in printed

    assert sorted(os.listdir(out)) == ["images.json", "results.json", "shape_0.png", "shape_1.png", "shape_2.png"]
    for i in range(3):
        assert cv2.imread(str(out / f"shape_{i}.png")).shape == (64, 64, 3)
    with open(out / "results.json") as f:
        results = json.load(f)
    with open(out / "images.json") as f:
        images = json.load(f)
    assert [(im["id"], im["file_name"]) for im in images["images"]] == [
        (i, str(inp / f"shape_{i}.jpg")) for i in range(3)]
    assert [c["name"] for c in images["categories"]] == ["circle", "triangle", "square", "star"]
    # The shapes metadata maps its COCO category ids (1..4) before any data is loaded: results.json
    # carries the data set's ids, evaluable against shapes_val's JSON as is.
    assert images["category_ids"] == "dataset"
    assert results and all(set(r) == RESULT_KEYS for r in results)
    # Same detections as the predictor gives directly, with masks that decode at the image size.
    predictor = load_predictor(model, config_file=cfg)
    expected = predictor([cv2.imread(f) for f in shapes_images])
    for i, inst in enumerate(expected):
        mine = [r for r in results if r["image_id"] == i]
        assert len(mine) == len(inst) > 0
        assert [r["category_id"] for r in mine] == [c + 1 for c in inst.pred_classes.tolist()]
        decoded = np.stack([mask_util.decode(r["segmentation"]) for r in mine]).astype(bool)
        assert decoded.shape == (len(inst), 64, 64) and decoded.any()
        assert np.array_equal(decoded, inst.pred_masks.numpy())

    # A second run into the same folder is refused and leaves every file as it was.
    before = {f: (out / f).read_bytes() for f in os.listdir(out)}
    with pytest.raises(FileExistsError, match=r"refusing to overwrite .*shape_0\.png"):
        load_tool("predict").main(_args(model, cfg, str(inp), str(out)))
    assert {f: (out / f).read_bytes() for f in os.listdir(out)} == before


def _write_video(path, images, num_frames):
    """A 64x64 MP4 at 6 fps cycling through ``images``; returns ``path``."""
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 6.0, (64, 64))
    for i in range(num_frames):
        writer.write(cv2.imread(images[i % len(images)]))
    writer.release()
    return path


def test_short_video_gives_an_mp4_with_every_frame(load_tool, tiny_model, shapes_images, tmp_path, capsys):
    model, cfg = tiny_model
    video = _write_video(str(tmp_path / "clip.mp4"), shapes_images, 5)
    out = tmp_path / "out"
    load_tool("predict").main(_args(model, cfg, video, str(out), "--batch-size", "2", "--threads",
                                    str(torch.get_num_threads()), "--confidence-threshold", "0"))
    assert str(out / "clip.mp4") in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["clip.mp4", "images.json", "results.json"]
    cap = cv2.VideoCapture(str(out / "clip.mp4"))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(6.0)
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    assert n == 5
    with open(out / "images.json") as f:
        assert [im["frame_index"] for im in json.load(f)["images"]] == [0, 1, 2, 3, 4]
    with open(out / "results.json") as f:
        results = json.load(f)
    assert {r["image_id"] for r in results} == {0, 1, 2, 3, 4}
    assert all(set(r) == RESULT_KEYS and mask_util.area(r["segmentation"]) >= 0 for r in results)
    assert any(mask_util.area(r["segmentation"]) > 0 for r in results)


def test_bad_input_fails_before_the_model_is_read(load_tool, tmp_path):
    not_a_model = str(tmp_path / "missing.pth")  # never opened: the input is checked first
    with pytest.raises(FileNotFoundError, match=r"input not found: .*nope\.jpg"):
        load_tool("predict").main(["--model", not_a_model, "--input", str(tmp_path / "nope.jpg"),
                                   "--output", str(tmp_path / "o")])
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\0" * 100)
    with pytest.raises(ValueError, match=r"cannot open video .*broken\.mp4"):
        load_tool("predict").main(["--model", not_a_model, "--input", str(broken), "--output", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_cli_rejects_a_zero_batch_size(load_tool, capsys):
    with pytest.raises(SystemExit):
        load_tool("predict").get_parser().parse_args(["--model", "m", "--input", "i", "--output", "o",
                                                      "--batch-size", "0"])
    assert "--batch-size: '0': expected a positive integer" in capsys.readouterr().err


@pytest.fixture
def mixed_folder(tmp_path, shapes_images):
    """Two good JPEGs (ids 0 and 3), a truncated JPEG (its first 200 bytes, id 1), a text file
    named .jpg (id 2) and a .txt file (not an input)."""
    d = tmp_path / "mixed"
    d.mkdir()
    os.symlink(shapes_images[0], d / "a_good.jpg")
    with open(shapes_images[1], "rb") as f:
        (d / "b_truncated.jpg").write_bytes(f.read()[:200])
    (d / "c_text.jpg").write_text("this is a text file\n")
    os.symlink(shapes_images[2], d / "d_good.jpg")
    (d / "notes.txt").write_text("ignored")
    return d


@pytest.mark.parametrize("as_glob", [False, True], ids=["folder", "glob"])
def test_unreadable_images_are_skipped_reported_and_exit_3(load_tool, tiny_model, mixed_folder, tmp_path, capsys,
                                                           as_glob):
    model, cfg = tiny_model
    inp = str(mixed_folder / "*.jpg") if as_glob else str(mixed_folder)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        load_tool("predict").main(_args(model, cfg, inp, str(out), "--batch-size", "2", "--confidence-threshold", "0"))
    assert e.value.code == 3
    printed = capsys.readouterr()
    assert "2 frame(s) predicted, 2 skipped" in printed.out
    truncated, text = str(mixed_folder / "b_truncated.jpg"), str(mixed_folder / "c_text.jpg")
    assert f"skipped {truncated}: " in printed.err and f"skipped {text}: cannot identify image file" in printed.err
    # Everything of the good images is written: overlays, results.json, images.json.
    assert sorted(os.listdir(out)) == ["a_good.png", "d_good.png", "images.json", "results.json"]
    assert cv2.imread(str(out / "d_good.png")).shape == (64, 64, 3)
    with open(out / "images.json") as f:
        images = json.load(f)
    assert [(im["id"], im["file_name"]) for im in images["images"]] == [
        (0, str(mixed_folder / "a_good.jpg")), (3, str(mixed_folder / "d_good.jpg"))]
    assert [(s["id"], s["file"]) for s in images["skipped"]] == [(1, truncated), (2, text)]
    assert all(s["reason"] for s in images["skipped"])
    with open(out / "results.json") as f:
        results = json.load(f)
    assert results and {r["image_id"] for r in results} == {0, 3}


def test_strict_stops_at_the_first_unreadable_image(load_tool, tiny_model, mixed_folder, tmp_path):
    model, cfg = tiny_model
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"cannot read image .*b_truncated\.jpg"):
        load_tool("predict").main(_args(model, cfg, str(mixed_folder), str(out), "--strict"))
    assert os.listdir(out) == ["a_good.png"]  # written before it; no JSON of a stopped run


def test_unreadable_video_frame_is_skipped_with_its_number(load_tool, tiny_model, shapes_images, tmp_path, capsys,
                                                           monkeypatch):
    """A frame whose read fails while frames follow (simulated: OpenCV's FFmpeg backend conceals
    decoding errors, so a real damaged file does not fail reliably) is skipped and reported."""
    from light_rcnn.deploy.inputs import VideoSource

    model, cfg = tiny_model
    video = _write_video(str(tmp_path / "clip.mp4"), shapes_images, 4)

    class FailSecondRead:
        def __init__(self, cap):
            self.cap, self.reads = cap, 0

        def read(self):
            self.reads += 1
            if self.reads == 2:
                self.cap.grab()
                return False, None
            return self.cap.read()

        def __getattr__(self, name):  # get, release, ...
            return getattr(self.cap, name)

    real_open = VideoSource._open
    monkeypatch.setattr(VideoSource, "_open", lambda self: FailSecondRead(real_open(self)))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        load_tool("predict").main(_args(model, cfg, video, str(out), "--confidence-threshold", "0"))
    assert e.value.code == 3
    printed = capsys.readouterr()
    assert "3 frame(s) predicted, 1 skipped" in printed.out and f"skipped {video} frame 1: " in printed.err
    with open(out / "images.json") as f:
        images = json.load(f)
    assert [im["frame_index"] for im in images["images"]] == [0, 2, 3]
    assert [(s["frame_index"], s["file"]) for s in images["skipped"]] == [(1, video)]
    cap = cv2.VideoCapture(str(out / "clip.mp4"))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    assert n == 3


@pytest.mark.parametrize("value", ["2", "-0.1", "nan", "inf", "high"])
def test_cli_refuses_a_confidence_threshold_outside_0_1(load_tool, capsys, value):
    with pytest.raises(SystemExit) as e:
        load_tool("predict").get_parser().parse_args(["--model", "m", "--input", "i", "--output", "o",
                                                      "--confidence-threshold", value])
    assert e.value.code == 2
    assert f"--confidence-threshold: '{value}': expected a number in [0, 1]" in capsys.readouterr().err


def test_cli_accepts_confidence_thresholds_0_and_1(load_tool):
    parser = load_tool("predict").get_parser()
    base = ["--model", "m", "--input", "i", "--output", "o"]
    assert parser.parse_args(base).confidence_threshold == 0.5 and not parser.parse_args(base).strict
    for value in (0.0, 1.0):
        assert parser.parse_args(base + ["--confidence-threshold", str(value)]).confidence_threshold == value
    assert parser.parse_args(base + ["--strict"]).strict
