"""light_rcnn.demo (what `make demo` runs), at a tiny size: trains, evaluates, draws, summarizes."""
import os

import cv2
import pytest
import torch

from light_rcnn.demo import DEFAULT_DEMO_CONFIG, format_summary, run_demo
from tests.conftest import TINY_RESNET, TINY_SIZES, tiny_shapes_opts


def _opts(shapes_root):
    return TINY_RESNET + TINY_SIZES + tiny_shapes_opts(shapes_root) + [
        "SOLVER.MAX_ITER", 6, "SOLVER.IMS_PER_BATCH", 2, "SOLVER.STEPS", (), "SOLVER.WARMUP_ITERS", 2,
        "SOLVER.CHECKPOINT_PERIOD", 100, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0,
    ]


def test_demo_trains_evaluates_draws_and_summarizes(shapes_root, tmp_path, capsys):
    out = str(tmp_path / "demo")
    results, timings, png = run_demo(DEFAULT_DEMO_CONFIG, out, _opts(shapes_root), num_images=3)
    # COCOEvaluator ran on shapes_val: both tasks with the size breakdown.
    for task in ("bbox", "segm"):
        assert {"AP", "AP50", "AP75", "APs", "APm", "APl"} <= set(results[task])
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    image = cv2.imread(png)
    assert image is not None and image.shape[1] > image.shape[0]  # three panels side by side
    assert set(timings) == {"data", "train+eval", "draw", "total"}
    printed = capsys.readouterr().out
    assert "light_rcnn demo summary" in printed and "segm  AP" in printed and png in printed


def test_demo_refuses_an_earlier_runs_folder(shapes_root, tmp_path):
    out = tmp_path / "earlier"
    out.mkdir()
    (out / "model_final.pth").write_bytes(b"earlier run")
    with pytest.raises(Exception, match="model_final.pth|checkpoint"):
        run_demo(DEFAULT_DEMO_CONFIG, str(out), _opts(shapes_root))
    assert (out / "model_final.pth").read_bytes() == b"earlier run"


def test_summary_formats_missing_results_as_nan():
    text = format_summary({"bbox": {"AP": 12.345}}, {"total": 3.2}, "/tmp/x", "/tmp/x/p.png")
    assert "bbox  AP  12.3" in text and "segm  AP   nan" in text and "total 3 s" in text
