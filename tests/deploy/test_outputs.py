"""light_rcnn.deploy.outputs: PNG / MP4 overlays, a COCO results JSON whose RLE masks decode to the
predicted masks, category ids mapped to the data set's, and no existing file overwritten."""
import json
import os

import cv2
import numpy as np
import pytest
import torch
from detectron2.data.catalog import Metadata
from detectron2.structures import Boxes, Instances
from pycocotools import mask as mask_util

from light_rcnn.deploy.inputs import ImageSource, open_input
from light_rcnn.deploy.outputs import PredictionOutputs, output_files, predict_to_folder

CLASSES = ["circle", "triangle", "square", "star"]


def _instances(h, w, seed, n=3):
    """``n`` predictions on an ``h x w`` image: random blob masks, their boxes, scores 0.9, 0.6, 0.3..."""
    rng = np.random.RandomState(seed)
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    boxes = []
    for i in range(n):
        y0, x0 = rng.randint(0, h // 2), rng.randint(0, w // 2)
        y1, x1 = y0 + rng.randint(4, h // 2), x0 + rng.randint(4, w // 2)
        blob = torch.from_numpy(rng.rand(y1 - y0, x1 - x0) > 0.3)
        masks[i, y0:y1, x0:x1] = blob
        boxes.append([x0, y0, x1, y1])
    inst = Instances((h, w))
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    inst.scores = torch.tensor([0.9 - 0.3 * i for i in range(n)])
    inst.pred_classes = torch.tensor([i % len(CLASSES) for i in range(n)])
    inst.pred_masks = masks
    return inst


@pytest.fixture
def images(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for i in range(2):
        assert cv2.imwrite(str(d / f"img{i}.png"), np.random.RandomState(i).randint(0, 255, (40, 56, 3), np.uint8))
    return open_input(str(d))


def _run(source, out, metadata, threshold, seeds=(0, 1)):
    preds = {}
    with PredictionOutputs(source, str(out), metadata, threshold) as outputs:
        for frame in source:
            h, w = frame.image.shape[:2]
            preds[frame.index] = _instances(h, w, seeds[frame.index % len(seeds)])
            outputs.write(frame, preds[frame.index])
    return outputs, preds


def test_rle_round_trip_decodes_to_the_predicted_masks(images, tmp_path):
    out = tmp_path / "out"
    outputs, preds = _run(images, out, Metadata(thing_classes=CLASSES), threshold=0.0)
    with open(out / "results.json") as f:
        results = json.load(f)
    assert len(results) == 6 and {r["image_id"] for r in results} == {0, 1}
    for image_id, inst in preds.items():
        mine = [r for r in results if r["image_id"] == image_id]
        assert [r["category_id"] for r in mine] == inst.pred_classes.tolist()  # no mapping: contiguous
        for r, mask, box, score in zip(mine, inst.pred_masks, inst.pred_boxes.tensor, inst.scores):
            decoded = mask_util.decode(r["segmentation"])
            assert decoded.shape == (40, 56) and np.array_equal(decoded.astype(bool), mask.numpy())
            x0, y0, x1, y1 = box.tolist()
            assert r["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0])
            assert r["score"] == pytest.approx(float(score))
    with open(out / "images.json") as f:
        meta = json.load(f)
    assert [(im["id"], os.path.basename(im["file_name"]), im["height"], im["width"]) for im in meta["images"]] == [
        (0, "img0.png", 40, 56), (1, "img1.png", 40, 56)]
    assert meta["category_ids"] == "contiguous" and meta["categories"][3] == {"id": 3, "name": "star"}
    # One PNG overlay per image, named after it, at the image's size, with the masks drawn on it.
    for i in range(2):
        overlay = cv2.imread(str(out / f"img{i}.png"))
        assert overlay.shape == (40, 56, 3)
        assert not np.array_equal(overlay, cv2.imread(images.paths[i]))


def test_threshold_and_dataset_category_ids(images, tmp_path):
    out = tmp_path / "out"
    meta = Metadata(thing_classes=CLASSES, thing_dataset_id_to_contiguous_id={1: 0, 2: 1, 3: 2, 7: 3})
    _run(images, out, meta, threshold=0.5)
    with open(out / "results.json") as f:
        results = json.load(f)
    # Scores 0.9, 0.6, 0.3 per image: the 0.3 ones are dropped; classes 0, 1 -> dataset ids 1, 2.
    assert sorted(r["score"] for r in results) == pytest.approx([0.6, 0.6, 0.9, 0.9])
    assert sorted(r["category_id"] for r in results) == [1, 1, 2, 2]
    with open(out / "images.json") as f:
        written = json.load(f)
    assert written["category_ids"] == "dataset" and written["categories"][-1] == {"id": 7, "name": "star"}
    assert written["confidence_threshold"] == 0.5


def test_refuses_to_overwrite_and_leaves_existing_file_untouched(images, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("precious")
    with pytest.raises(FileExistsError, match=r"refusing to overwrite existing output file\(s\): .*results\.json"):
        PredictionOutputs(images, str(out), Metadata(), 0.5)
    assert (out / "results.json").read_text() == "precious"
    assert sorted(os.listdir(out)) == ["results.json"]  # no overlay written before the refusal
    # An existing overlay is refused the same way, before any prediction runs.
    out2 = tmp_path / "out2"
    out2.mkdir()
    (out2 / "img1.png").write_bytes(b"old")
    calls = []
    with pytest.raises(FileExistsError, match=r"img1\.png"):
        predict_to_folder(lambda imgs: calls.append(imgs), images, str(out2), Metadata(), progress=False)
    assert calls == [] and (out2 / "img1.png").read_bytes() == b"old" and os.listdir(out2) == ["img1.png"]


def test_failed_run_writes_no_json(images, tmp_path):
    out = tmp_path / "out"

    def broken(imgs):
        raise RuntimeError("model exploded")

    with pytest.raises(RuntimeError, match="model exploded"):
        predict_to_folder(broken, images, str(out), Metadata(), progress=False)
    assert not (out / "results.json").exists() and not (out / "images.json").exists()


def test_video_overlay_is_an_mp4_at_the_input_fps(tmp_path):
    path = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (64, 48))
    for i in range(4):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    source = open_input(path)
    out = tmp_path / "out"
    paths = predict_to_folder(lambda imgs: [_instances(48, 64, 0) for _ in imgs], source, str(out),
                              Metadata(thing_classes=CLASSES), batch_size=3, confidence_threshold=0.0,
                              progress=False)
    assert paths["frames"] == 4 and paths["overlays"] == [str(out / "clip.mp4")]
    cap = cv2.VideoCapture(str(out / "clip.mp4"))
    assert cap.isOpened() and cap.get(cv2.CAP_PROP_FPS) == pytest.approx(5.0)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    assert len(frames) == 4 and frames[0].shape == (48, 64, 3)
    with open(out / "images.json") as f:
        images = json.load(f)["images"]
    assert [im["frame_index"] for im in images] == [0, 1, 2, 3] and images[0]["file_name"] == path
    with open(out / "results.json") as f:
        assert sorted({r["image_id"] for r in json.load(f)}) == [0, 1, 2, 3]


def test_predictor_returning_the_wrong_number_of_results(images, tmp_path):
    with pytest.raises(RuntimeError, match="predictor returned 1 results for 2 images"):
        predict_to_folder(lambda imgs: [_instances(40, 56, 0)], images, str(tmp_path / "o"), Metadata(),
                          batch_size=2, progress=False)


def test_image_source_names_follow_the_folder_layout():
    src = ImageSource(["/data/a/x.png", "/data/b/x.png"], "/data")
    assert src.names == [os.path.join("a", "x"), os.path.join("b", "x")]
    assert output_files(src, "/out")["overlays"] == [os.path.join("/out", "a", "x.png"), os.path.join("/out", "b", "x.png")]


def test_overlay_draws_the_mask(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    image = np.full((60, 80, 3), 128, np.uint8)
    assert cv2.imwrite(str(d / "grey.png"), image)
    inst = Instances((60, 80))
    inst.pred_boxes = Boxes(torch.tensor([[40.0, 30.0, 70.0, 55.0]]))
    inst.scores = torch.tensor([0.9])
    inst.pred_classes = torch.tensor([0])
    inst.pred_masks = torch.zeros(1, 60, 80, dtype=torch.bool)
    inst.pred_masks[0, 35:50, 45:65] = True
    predict_to_folder(lambda imgs: [inst], open_input(str(d)), str(tmp_path / "out"), Metadata(), progress=False)
    diff = np.abs(cv2.imread(str(tmp_path / "out" / "grey.png")).astype(int) - image).sum(axis=2)
    assert diff[38:47, 48:62].min() > 20  # inside the mask: coloured
    assert diff[:25, :35].max() < 10  # far from the detection: the image


@pytest.fixture
def warnings_log(logger_warnings):
    """The module's warnings (caplog)."""
    return logger_warnings("light_rcnn.deploy.outputs")


def test_unreadable_inputs_are_skipped_and_listed_with_everything_else_written(images, tmp_path, warnings_log):
    d = os.path.dirname(images.paths[0])
    with open(os.path.join(d, "img0b.png"), "w") as f:  # sorts between img0 and img1
        f.write("not a png")
    source = open_input(d)
    out = tmp_path / "out"
    calls = []

    def predictor(imgs):
        calls.append(len(imgs))
        return [_instances(40, 56, 0) for _ in imgs]

    written = predict_to_folder(predictor, source, str(out), Metadata(thing_classes=CLASSES), batch_size=2,
                                confidence_threshold=0.0, progress=False, skip_unreadable=True)
    assert calls == [2]  # the two readable images in one batch
    bad = os.path.join(d, "img0b.png")
    assert written["frames"] == 2 and [(s["id"], s["file"]) for s in written["skipped"]] == [(1, bad)]
    assert "cannot identify image file" in written["skipped"][0]["reason"]
    assert f"skipping unreadable input {bad}: cannot identify image file" in warnings_log.text
    assert sorted(os.listdir(out)) == ["images.json", "img0.png", "img1.png", "results.json"]
    with open(out / "images.json") as f:
        meta = json.load(f)
    assert [im["id"] for im in meta["images"]] == [0, 2]  # ids = index in input order, a gap for the skipped
    assert meta["skipped"] == written["skipped"] and set(meta["skipped"][0]) == {"id", "file", "reason"}
    with open(out / "results.json") as f:
        assert {r["image_id"] for r in json.load(f)} == {0, 2}

    # Not skipping: the error names the file; the overlay written before it stays, no JSON.
    out2 = tmp_path / "out2"
    with pytest.raises(ValueError, match=r"cannot read image .*img0b\.png"):
        predict_to_folder(predictor, source, str(out2), Metadata(), progress=False)
    assert sorted(os.listdir(out2)) == ["img0.png"]


def test_nothing_skipped_gives_an_empty_skipped_list(images, tmp_path):
    written = predict_to_folder(lambda imgs: [_instances(40, 56, 0) for _ in imgs], images, str(tmp_path / "o"),
                                Metadata(), progress=False, skip_unreadable=True)
    assert written["skipped"] == [] and written["frames"] == 2
    with open(tmp_path / "o" / "images.json") as f:
        assert json.load(f)["skipped"] == []
