"""light_rcnn.demo (what `make demo` runs), at a tiny size: trains, evaluates, draws, summarizes;
seeded runs repeat; the multi-seed summary aggregates correctly."""
import json
import logging
import math
import os

import cv2
import pytest
import torch

from light_rcnn.demo import DEFAULT_DEMO_CONFIG, _run_log, format_summary, run_demo, run_demo_seeds, summarize_seeds


@pytest.fixture
def demo_opts(shapes_root, tiny_sizes, tiny_shapes_opts):
    # The demo model (FD-MobileNet) narrowed to a quarter of its width, thin map 16, subnet 8 -> 16.
    return tiny_sizes + tiny_shapes_opts(shapes_root) + [
        "MODEL.MOBILENET.WIDTH_MULT", 0.25, "MODEL.SLK.MID_CHANNELS", 16, "MODEL.SLK.OUT_CHANNELS", 16,
        "MODEL.LIGHT_HEAD.CONV_DIMS", [8, 16], "MODEL.ROI_MASK_HEAD.CONV_DIM", 8,
        "SOLVER.MAX_ITER", 6, "SOLVER.IMS_PER_BATCH", 2, "SOLVER.STEPS", (), "SOLVER.WARMUP_ITERS", 2,
        "SOLVER.CHECKPOINT_PERIOD", 100, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0,
    ]


def _weights(out):
    return torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=False)["model"]


def test_demo_trains_evaluates_draws_and_summarizes(demo_opts, tmp_path, capsys):
    out = str(tmp_path / "demo")
    results, timings, png = run_demo(DEFAULT_DEMO_CONFIG, out, demo_opts, num_images=3)
    # COCOEvaluator ran on shapes_val: both tasks with the size breakdown.
    for task in ("bbox", "segm"):
        assert {"AP", "AP50", "AP75", "APs", "APm", "APl"} <= set(results[task])
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    image = cv2.imread(png)
    assert image is not None and image.shape[1] > image.shape[0]  # three panels side by side
    assert timings["total"] >= timings["train+eval"] > 0
    printed = capsys.readouterr().out
    assert "light_rcnn demo summary" in printed and "segm  AP" in printed and png in printed


def test_same_seed_same_model_other_seed_other_model(demo_opts, tmp_path):
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        out = str(tmp_path / name)
        runs[name] = (run_demo(DEFAULT_DEMO_CONFIG, out, demo_opts + ["SEED", seed], num_images=1)[0], _weights(out))
    (res_a, w_a), (res_b, w_b), (_, w_c) = runs["a"], runs["b"], runs["c"]
    assert w_a.keys() == w_b.keys()
    for k in w_a:
        assert torch.equal(w_a[k], w_b[k]), f"{k} differs between two runs with SEED 3"
    for task in ("bbox", "segm"):
        for key, value in res_a[task].items():
            assert value == res_b[task][key] or (math.isnan(value) and math.isnan(res_b[task][key]))
    assert any(not torch.equal(w_a[k], w_c[k]) for k in w_a if w_a[k].is_floating_point())


def test_summarize_seeds_mean_std_min():
    per_seed = {
        0: {"bbox": {"AP": 30.0}, "segm": {"AP": 20.0, "AP50": float("nan")}},
        1: {"bbox": {"AP": 40.0}, "segm": {"AP": 26.0, "AP50": 50.0}},
        2: {"bbox": {"AP": 50.0}, "segm": {"AP": 23.0, "AP50": 54.0}},
    }
    s = summarize_seeds(per_seed)
    assert s["bbox"]["AP"]["mean"] == pytest.approx(40.0) and s["bbox"]["AP"]["std"] == pytest.approx(10.0)
    assert s["segm"]["AP"]["min"] == 20.0 and s["segm"]["AP"]["max"] == 26.0
    assert s["segm"]["AP"]["std"] == pytest.approx(3.0)
    assert s["segm"]["AP50"]["n"] == 2 and s["segm"]["AP50"]["mean"] == pytest.approx(52.0)  # NaN left out


def test_run_log_logs_every_run_into_its_folder_and_removes_its_handlers(tmp_path):
    logger = logging.getLogger("detectron2.test_demo")
    handlers = list(logging.getLogger("detectron2").handlers)
    for message in ("first run", "second run"):  # the same folder twice in one process
        with _run_log(str(tmp_path)):
            logger.info(message)
        assert logging.getLogger("detectron2").handlers == handlers
    logger.info("after both runs")
    logged = open(tmp_path / "log.txt").read()
    assert "first run" in logged and "second run" in logged and "after both runs" not in logged


def test_run_demo_seeds_writes_summary_and_refuses_rerun(demo_opts, tmp_path, capsys):
    out = str(tmp_path / "seeds")
    d2_handlers = list(logging.getLogger("detectron2").handlers)
    per_seed, summary = run_demo_seeds(DEFAULT_DEMO_CONFIG, out, [0, 1], demo_opts, num_images=1)
    assert set(per_seed) == {0, 1} and all(os.path.isfile(os.path.join(out, f"seed{s}", "model_final.pth")) for s in (0, 1))
    # Each seed logs into its own log.txt only (the draw step logs loading <seed dir>/model_final.pth),
    # and no handler is left behind to print every line twice in the next run.
    logs = {s: open(os.path.join(out, f"seed{s}", "log.txt")).read() for s in (0, 1)}
    assert os.path.join(out, "seed0", "model_final.pth") in logs[0]
    assert os.path.join(out, "seed1", "model_final.pth") in logs[1]
    assert os.path.join(out, "seed1") not in logs[0] and os.path.join(out, "seed0") not in logs[1]
    assert logging.getLogger("detectron2").handlers == d2_handlers
    with open(os.path.join(out, "seeds_summary.json")) as f:
        written = json.load(f)
    assert written["summary"]["segm"]["AP"]["n"] == summary["segm"]["AP"]["n"]
    assert "over 2 seeds" in capsys.readouterr().out
    with pytest.raises(FileExistsError, match="seeds_summary.json"):
        run_demo_seeds(DEFAULT_DEMO_CONFIG, out, [0, 1], demo_opts)
    with pytest.raises(ValueError, match="seeds must differ"):
        run_demo_seeds(DEFAULT_DEMO_CONFIG, str(tmp_path / "x"), [1, 1], demo_opts)


def test_demo_resumes_a_run_cut_off_after_a_checkpoint(demo_opts, tmp_path):
    opts = demo_opts + ["SOLVER.CHECKPOINT_PERIOD", 3]
    out = tmp_path / "cut"
    run_demo(DEFAULT_DEMO_CONFIG, str(out), opts, num_images=1)
    # A stop after iteration 3: the checkpoint of that iteration is the last one, nothing finished.
    (out / "model_final.pth").unlink()
    (out / "results.json").unlink()
    (out / "last_checkpoint").write_text("model_0000002.pth")
    with pytest.raises(FileExistsError, match="--resume"):
        run_demo(DEFAULT_DEMO_CONFIG, str(out), opts, num_images=1)
    with pytest.raises(ValueError, match="SOLVER.BASE_LR"):  # another config cannot continue this run
        run_demo(DEFAULT_DEMO_CONFIG, str(out), opts + ["SOLVER.BASE_LR", 0.5], num_images=1, resume=True)
    assert not (out / "model_final.pth").exists()  # refused before anything ran
    results, _, _ = run_demo(DEFAULT_DEMO_CONFIG, str(out), opts, num_images=1, resume=True)
    assert (out / "model_final.pth").is_file()
    log = (out / "log.txt").read_text()
    # continued from the checkpoint of iteration 3 (0-based 2), not from scratch
    assert str(out / "model_0000002.pth") in log and "Starting training from iteration 3" in log
    # the run's folder may move: OUTPUT_DIR is where it is now, not a config difference; resuming a
    # finished run evaluates its final model again, with the same results
    moved = tmp_path / "moved"
    out.rename(moved)
    run_demo(DEFAULT_DEMO_CONFIG, str(moved), opts, num_images=1, resume=True)
    with open(moved / "results.json") as f:
        assert json.load(f)["results"]["segm"]["AP"] == pytest.approx(results["segm"]["AP"], nan_ok=True)


def test_run_demo_seeds_resume_reads_finished_seeds_back(demo_opts, tmp_path, capsys):
    out = tmp_path / "study"
    first, _, _ = run_demo(DEFAULT_DEMO_CONFIG, str(out / "seed0"), demo_opts + ["SEED", 0], num_images=1)
    trained_at = os.path.getmtime(out / "seed0" / "model_final.pth")
    per_seed, summary = run_demo_seeds(DEFAULT_DEMO_CONFIG, str(out), [0, 1], demo_opts, num_images=1, resume=True)
    assert os.path.getmtime(out / "seed0" / "model_final.pth") == trained_at  # not trained again
    assert "seed 0: finished earlier" in capsys.readouterr().out
    assert (out / "seed1" / "model_final.pth").is_file() and summary["segm"]["AP"]["n"] == 2
    assert per_seed[0]["segm"]["AP"] == pytest.approx(first["segm"]["AP"], nan_ok=True)
    (out / "seeds_summary.json").unlink()
    with pytest.raises(ValueError, match="SOLVER.MAX_ITER"):  # a finished seed of another config is refused
        run_demo_seeds(DEFAULT_DEMO_CONFIG, str(out), [0], demo_opts + ["SOLVER.MAX_ITER", 7], resume=True)


def test_demo_refuses_an_earlier_runs_folder(demo_opts, tmp_path):
    out = tmp_path / "earlier"
    out.mkdir()
    (out / "model_final.pth").write_bytes(b"earlier run")
    with pytest.raises(Exception, match="model_final.pth|checkpoint"):
        run_demo(DEFAULT_DEMO_CONFIG, str(out), demo_opts)
    assert (out / "model_final.pth").read_bytes() == b"earlier run"


def test_summary_formats_missing_results_as_nan():
    text = format_summary({"bbox": {"AP": 12.345}}, {"total": 3.2}, "/tmp/x", "/tmp/x/p.png")
    assert "bbox  AP  12.3" in text and "segm  AP   nan" in text and "total 3 s" in text


def test_the_default_demo_is_fd_mobilenet_with_the_iou_mask_loss():
    from light_rcnn import load_config

    cfg = load_config(DEFAULT_DEMO_CONFIG)
    assert cfg.MODEL.SLK.BOTTOM_UP == "build_fd_mobilenet_backbone" and cfg.MODEL.MOBILENET.WIDTH_MULT == 1.0
    assert cfg.MODEL.ROI_MASK_HEAD.NAME == "IoUMaskRCNNConvUpsampleHead" and cfg.MODEL.MASK_LOSS.TYPE == "BCE+IOU"
    # the schedule and evaluation of every shapes model (the results tables compare them)
    assert (cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH, cfg.DATASETS.TEST) == (4200, 4, ("shapes_val",))
    assert cfg.MODEL.LIGHT_HEAD.SEPARABLE_ROI_ALIGN and cfg.MODEL.RPN.POST_NMS_TOPK_TEST == 100
