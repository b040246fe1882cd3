"""The deploy benchmark (tools/benchmark_deploy.py): every runtime exported from one checkpoint and measured on
the same images (latency, COCO AP through detectron2's COCOEvaluator, box differences to eager,
file sizes), targets judged, nothing overwritten, clear errors."""
import json
import math
import os

import pytest
import torch
from detectron2.data import DatasetCatalog, DatasetMapper, build_detection_test_loader
from detectron2.evaluation import COCOEvaluator

from light_rcnn import build_model, load_config
from light_rcnn.deploy import FP32_TOLERANCES
from light_rcnn.deploy.benchmark import (
    RUNTIMES,
    DeployBenchmarkSettings,
    check_runtimes,
    planned_files,
    run_deploy_benchmark,
)
from light_rcnn.deploy.benchmark_report import judge_targets, markdown_report
from light_rcnn.deploy.runtimes import StrictCheckpointer


def _split(opts):
    """(opts without MODEL.WEIGHTS, weights) of a trained_model fixture's opts, with every detection
    kept (score threshold 0) so that AP and box differences have detections to work on."""
    i = opts.index("MODEL.WEIGHTS")
    return opts[:i] + opts[i + 2:] + ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0], opts[i + 1]


def _independent_eager_ap(config, opts, weights, dataset, num_images):
    """COCO AP of the eager model on the data set's first images through detectron2's own test loader
    (DatasetMapper, model called directly), not through the benchmark's predictor."""
    cfg = load_config(config, opts + ["MODEL.WEIGHTS", weights])
    model = build_model(cfg).eval()
    StrictCheckpointer(model).load(weights)
    dicts = DatasetCatalog.get(dataset)[:num_images]
    evaluator = COCOEvaluator(dataset, tasks=("bbox", "segm"), distributed=False)
    evaluator.reset()
    loader = build_detection_test_loader(dataset=dicts, mapper=DatasetMapper(cfg, is_train=False), num_workers=0)
    with torch.no_grad():
        for batch in loader:
            evaluator.process(batch, model(batch))
    return evaluator.evaluate(img_ids=[d["image_id"] for d in dicts])


def test_all_runtimes_side_by_side(trained_model, load_tool, tmp_path):
    config, trained_opts = trained_model()
    opts, weights = _split(trained_opts)
    out = tmp_path / "bench"
    record = load_tool("benchmark_deploy").main([
        "--config-file", config, "--weights", weights, "--dataset", "shapes_val", "--runtimes", *RUNTIMES,
        "--threads", "1", "--calibration-images", "2", "--warmup", "1", "--max-images", "3", "--rounds", "2",
        "--output-dir", str(out), "--no-progress", *map(str, opts)])
    with open(out / "deploy_benchmark.json") as f:
        saved = json.load(f)
    assert saved["runtimes"].keys() == set(RUNTIMES) and saved["num_images"] == 3
    assert json.loads(json.dumps(record, default=str))["targets"] == saved["targets"]
    for name, e in saved["runtimes"].items():
        lat = e["latency_ms"]
        # 2 blocked rounds over 3 images, each round after its own warm-up image.
        assert lat["n"] == 6 and len(lat["per_image"]) == 6 and e["warmup_runs"] == 2, name
        assert all(math.isfinite(lat[k]) and lat[k] > 0 for k in ("p50", "p90", "mean")), name
        assert lat["p50"] <= lat["p90"] <= lat["max"] and lat["min"] <= lat["p50"]
        assert {"bbox", "segm"} <= e["ap"].keys() and all(e["ap"][t]["AP"] is not None for t in ("bbox", "segm"))
        assert e["file_mib"] > 0 and os.path.isfile(e["path"])
        assert e["detections"] > 0, name
        assert e["threads"]["torch"] == 1
    rt = saved["runtimes"]
    assert [rt[n]["format"] for n in ("eager", "torchscript", "onnx")] == ["eager", "torchscript", "onnx"]
    assert rt["onnx-int8"]["precision"] == "int8" and rt["onnx"]["precision"] == "fp32"
    assert rt["onnx"]["threads"]["onnxruntime_intra_op"] == 1 == rt["onnx-int8"]["threads"]["onnxruntime_intra_op"]
    assert rt["onnx-int8"]["file_mib"] < 0.5 * rt["onnx"]["file_mib"]
    # fp32 exports give eager's detections: every one matched, boxes within the export tolerance.
    for name in ("torchscript", "onnx"):
        p = rt[name]["parity_vs_eager"]
        assert p["detections_eager"] == rt["eager"]["detections"] == p["detections_artifact"]
        assert p["unmatched"] == 0 and p["box_px"] < FP32_TOLERANCES["box_px"] and p["within_export_tolerance"]
        assert all(abs(d) < 0.2 for d in rt[name]["ap_delta_vs_eager"].values())
    # int8 is compared with eager too (it deviates: random weights quantize coarsely).
    p8 = rt["onnx-int8"]["parity_vs_eager"]
    assert p8["detections_eager"] == rt["eager"]["detections"]
    assert p8["score"] > 1e-3 and not p8["within_export_tolerance"]
    # Ratios and differences are computed from the recorded figures.
    for name, e in rt.items():
        assert e["speedup_vs_eager"]["p50"] == pytest.approx(rt["eager"]["latency_ms"]["p50"] / e["latency_ms"]["p50"])
        assert e["ap_delta_vs_eager"]["segm"] == pytest.approx(e["ap"]["segm"]["AP"] - rt["eager"]["ap"]["segm"]["AP"])
    # The eager AP is COCO AP on exactly the 3 benchmarked images (checked through detectron2's own loader).
    want = _independent_eager_ap(config, opts, weights, "shapes_val", 3)
    for task in ("bbox", "segm"):
        assert rt["eager"]["ap"][task]["AP"] == pytest.approx(want[task]["AP"], abs=1e-6)
    assert [t["runtime"] for t in saved["targets"]][:3] == ["torchscript", "onnx", "onnx-int8"]
    assert all(t["met"] in (True, False) for t in saved["targets"])
    assert saved["environment"]["onnxruntime"] and saved["settings"]["order"] == "blocked"
    md = (out / "deploy_benchmark.md").read_text()
    assert all(f"| {name} (" in md for name in RUNTIMES) and "x vs eager" in md
    assert sorted(os.listdir(out)) == sorted(os.path.basename(p) for p in planned_files(str(out), RUNTIMES).values())

    # Nothing is overwritten: a second run into the same folder is refused before any work.
    before = (out / "model.onnx").read_bytes()
    with pytest.raises(FileExistsError, match=r"refusing to overwrite existing file\(s\): .*model\.ts, .*model\.onnx"):
        run_deploy_benchmark(config, weights, str(out), opts, DeployBenchmarkSettings(threads=1))
    assert (out / "model.onnx").read_bytes() == before
    # An exported file is not a checkpoint to export from.
    with pytest.raises(ValueError, match=r"model\.ts' is a torchscript file: the benchmark exports from an eager"):
        run_deploy_benchmark(config, rt["torchscript"]["path"], str(tmp_path / "other"), opts)


def test_interleaved_order_and_a_subset(trained_model, tmp_path):
    config, trained_opts = trained_model()
    opts, weights = _split(trained_opts)
    out = tmp_path / "interleaved"
    settings = DeployBenchmarkSettings(runtimes=["torchscript", "eager"], threads=1, warmup=0, max_images=2,
                                       order="interleaved", num_check_images=1)
    record = run_deploy_benchmark(config, weights, str(out), opts, settings, log=lambda line: None)
    assert list(record["runtimes"]) == ["eager", "torchscript"]
    assert all(e["warmup_runs"] == 0 and e["latency_ms"]["n"] == 2 for e in record["runtimes"].values())
    p = record["runtimes"]["torchscript"]["parity_vs_eager"]
    assert p["unmatched"] == 0 and p["detections_artifact"] > 0 and p["box_px"] < FP32_TOLERANCES["box_px"]
    assert sorted(os.listdir(out)) == ["config.yaml", "deploy_benchmark.json", "deploy_benchmark.md", "model.ts"]
    met = {t["runtime"]: t["met"] for t in record["targets"]}
    assert met["onnx"] is None and met["onnx-int8"] is None and met["torchscript"] in (True, False)


def test_existing_report_is_refused_before_any_work(trained_model, tmp_path):
    config, trained_opts = trained_model()
    opts, weights = _split(trained_opts)
    (tmp_path / "deploy_benchmark.md").write_text("keep\n")
    with pytest.raises(FileExistsError, match=r"existing file\(s\): .*deploy_benchmark\.md; nothing was written"):
        run_deploy_benchmark(config, weights, str(tmp_path), opts, DeployBenchmarkSettings(runtimes=["eager"]))
    assert os.listdir(tmp_path) == ["deploy_benchmark.md"]
    assert (tmp_path / "deploy_benchmark.md").read_text() == "keep\n"


def test_runtime_names_are_checked(load_tool, tmp_path):
    assert check_runtimes(["onnx", "eager"]) == ("eager", "onnx")
    with pytest.raises(ValueError, match=r"unknown runtime\(s\) 'tensorrt'; choose from eager, torchscript, onnx, "
                                         r"onnx-int8"):
        check_runtimes(["eager", "tensorrt"])
    with pytest.raises(ValueError, match=r"runtime\(s\) 'onnx' given more than once"):
        check_runtimes(["eager", "onnx", "onnx"])
    with pytest.raises(ValueError, match=r"must include 'eager'"):
        check_runtimes(["onnx"])
    with pytest.raises(SystemExit, match=r"--runtimes: unknown runtime\(s\) 'onnx_int8'"):
        load_tool("benchmark_deploy").main(["--config-file", "c.yaml", "--weights", "w.pth", "--runtimes", "eager",
                                            "onnx_int8", "--output-dir", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match=r"MODEL\.WEIGHTS in the KEY VALUE overrides"):
        run_deploy_benchmark("c.yaml", "w.pth", str(tmp_path / "y"), ["MODEL.WEIGHTS", "w.pth"])


def _entry(p50, bbox, segm):
    return {"latency_ms": {"p50": p50, "mean": p50}, "ap": {"bbox": {"AP": bbox}, "segm": {"AP": segm}}}


def test_targets_are_judged_at_their_thresholds():
    from light_rcnn.deploy.benchmark_report import _add_comparisons

    runtimes = {"eager": _entry(100.0, 50.0, 40.0), "torchscript": _entry(80.0, 50.1, 39.85),
                "onnx": _entry(70.0, 50.0, 40.25), "onnx-int8": _entry(62.0, 49.0, 38.4)}
    _add_comparisons(runtimes)
    got = {t["runtime"]: t for t in judge_targets(runtimes)[:3]}  # the AP targets (the 4th: speed)
    assert got["torchscript"]["met"] is True and got["torchscript"]["measured"] == pytest.approx(0.15)
    assert got["onnx"]["met"] is False and got["onnx"]["measured"] == pytest.approx(0.25)
    assert got["onnx-int8"]["met"] is False and got["onnx-int8"]["measured"] == pytest.approx(-1.6)
    # Best runtime by p50: int8 at 100 / 62 = 1.61x.
    speed = judge_targets(runtimes)[-1]
    assert speed["runtime"] == "onnx-int8" and speed["met"] is True and speed["measured"] == pytest.approx(100 / 62)

    runtimes = {"eager": _entry(100.0, 50.0, 40.0), "onnx": _entry(70.0, None, None),
                "onnx-int8": _entry(90.0, 49.0, 38.6)}
    _add_comparisons(runtimes)
    targets = judge_targets(runtimes)
    got = {t["runtime"]: t for t in targets[:3]}
    assert got["torchscript"]["met"] is None and got["torchscript"]["detail"] == "not measured"
    assert got["onnx"]["met"] is False and "AP not finite" in got["onnx"]["detail"]
    assert got["onnx-int8"]["met"] is True
    assert targets[-1]["runtime"] == "onnx" and targets[-1]["met"] is False  # 100 / 70 = 1.43x < 1.5x
    record = {"config_file": "c.yaml", "weights": "w.pth", "opts": [], "dataset": "shapes_val", "num_images": 2,
              "settings": {"threads": 2, "warmup": 1, "order": "interleaved", "calibration_images": 4},
              "runtimes": {n: dict(e, precision="fp32", file_mib=1.0, latency_ms=dict(e["latency_ms"], p90=1.0))
                           for n, e in runtimes.items()},
              "targets": targets,
              "environment": {"command_line": "x", "cpu_model": "cpu", "cpu_count": 2, "torch": "t", "detectron2": "d",
                              "onnxruntime": "o", "onnx": "n", "python": "p", "timestamp": "now",
                              "load_average_1_5_15": {"start": [1.0, 1.0, 1.0], "end": [2.0, 2.0, 2.0]}}}
    md = markdown_report(record)
    assert md.count("**MISSED**") == 2 and "not measured: TorchScript" in md and "| 1.43x |" in md
    assert "\nTargets (deploy benchmark defaults):\n" in md


def test_default_targets_are_named_and_recorded_under_their_json_keys():
    from light_rcnn.deploy.benchmark_report import DEFAULT_TARGETS, TARGETS

    assert (DEFAULT_TARGETS.max_fp32_ap_delta, DEFAULT_TARGETS.max_int8_ap_delta, DEFAULT_TARGETS.min_speedup) == (
        0.2, 1.5, 1.5)
    assert DEFAULT_TARGETS.thresholds() == TARGETS == {"fp32_ap_delta": 0.2, "int8_segm_ap_delta": 1.5, "speedup": 1.5}



def test_data_set_must_be_registered_with_coco_annotations(config_file, deploy_opts):
    from light_rcnn.deploy.benchmark import dataset_dicts

    cfg = load_config(config_file("shapes/light_mask_rcnn_framework1_shapes.yaml"), deploy_opts)
    assert [d["image_id"] for d in dataset_dicts(cfg, "shapes_val", max_images=2)] == [
        d["image_id"] for d in DatasetCatalog.get("shapes_val")[:2]]
    with pytest.raises(ValueError, match=r"data set 'shapes_vall' is not registered \(registered: .*shapes_val"):
        dataset_dicts(cfg, "shapes_vall")
    name = "deploy_benchmark_test_no_json"
    DatasetCatalog.register(name, lambda: [{"file_name": "x.png", "image_id": 0, "height": 8, "width": 8}])
    try:
        with pytest.raises(ValueError, match=rf"data set '{name}' has no COCO annotation file \(metadata json_file\)"):
            dataset_dicts(cfg, name)
    finally:
        DatasetCatalog.remove(name)
