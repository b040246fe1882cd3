"""light_rcnn.analysis.benchmark on tiny CPU models (in-process), checked against independent
measurements: a wall clock around the run, models built and analyzed separately, the configured
sampling of the ROI heads."""
import json
import os
import time

import numpy as np
import pytest
import torch

import light_rcnn  # noqa: F401
from light_rcnn.analysis.benchmark import BenchmarkSettings, FixedWorkError, make_specs, run_benchmark
from light_rcnn.analysis.stage_timer import STAGES

N_PROPOSALS, N_MASKS = 60, 20
H, W = 112, 144  # odd, non-square
ITERS = 12


@pytest.fixture(scope="module")
def fixed_run(tiny_d2_configs, tmp_path_factory):
    """One fixed-work benchmark of two tiny configs and one that cannot build, timed from outside.

    It runs from a folder outside the repository and without PYTHONPATH, so the memory child has
    to find the installed package by itself. C4 and FPN rank different numbers of anchors before
    their RPN NMS (one level against five), so the run records that unequal work instead of
    stopping (``strict_work=False``)."""
    c4, fpn = tiny_d2_configs
    out = str(tmp_path_factory.mktemp("bench"))
    specs = make_specs([[c4], [fpn], [c4, "MODEL.BACKBONE.NAME", "NoSuchBackbone"]])
    settings = BenchmarkSettings(
        models=specs, image_size=(H, W), warmup=2, iters=ITERS, threads=1, output_dir=out,
        num_proposals=N_PROPOSALS, num_detections=N_MASKS, memory="subprocess", command_line="pytest",
        strict_work=False,
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(str(tmp_path_factory.mktemp("elsewhere")))
        mp.delenv("PYTHONPATH", raising=False)
        t0 = time.perf_counter()
        results = run_benchmark(settings)
        elapsed = time.perf_counter() - t0
    return results, out, elapsed


def _ok(results):
    return [m for m in results["models"] if m["status"] == "ok"]


def test_json_and_reports_on_disk(fixed_run):
    results, out, _ = fixed_run
    with open(os.path.join(out, "benchmark.json")) as f:
        on_disk = json.load(f)
    returned = {k: v for k, v in results.items() if k != "files"}
    assert on_disk == json.loads(json.dumps(returned, default=str))
    assert on_disk["schema_version"] == 1 and on_disk["mode"] == "fixed_work"
    env = on_disk["environment"]
    for key in ("torch", "torchvision", "detectron2", "python", "device_name", "cpu_model", "torch_num_threads",
                "cudnn_benchmark", "tf32_matmul", "tf32_cudnn", "timestamp", "command_line", "light_rcnn_git"):
        assert key in env, key
    assert env["torch_num_threads"] == 1 and env["command_line"] == "pytest"
    assert "multiply-add" in on_disk["flops_unit"]
    assert on_disk["baseline"] == "tiny_c4"
    assert [m["name"] for m in _ok(on_disk)] == ["tiny_c4", "tiny_fpn"]
    for m in _ok(on_disk):
        assert m["latency_ms"]["n"] == ITERS and m["staged_latency_ms"]["n"] == ITERS
        assert m["weights"] is None and "random init" in m["weights_note"]
        assert m["zeroed_box_regression_layers"] == 2  # RPN anchor_deltas + bbox_pred
    with open(os.path.join(out, "benchmark.md")) as f:
        md = f.read()
    assert "| tiny_c4 |" in md and "| tiny_fpn |" in md and "`pytest`" in md
    with open(os.path.join(out, "benchmark_stages.png"), "rb") as f:
        png = f.read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_timed_passes_fit_in_the_wall_clock(fixed_run):
    """Every timed pass (clean and staged) ran inside the run: their sum cannot exceed the wall
    time measured around ``run_benchmark`` (a unit or bookkeeping error would)."""
    results, _, elapsed = fixed_run
    timed_s = sum(m["latency_ms"]["mean"] * m["latency_ms"]["n"] + m["staged_latency_ms"]["mean"] * ITERS
                  for m in _ok(results)) / 1000.0
    assert 0 < timed_s < elapsed
    for m in _ok(results):
        lat = m["latency_ms"]
        assert 0 < lat["min"] <= lat["median"] <= lat["max"] < elapsed * 1000


def test_ratios_match_independent_measurements(fixed_run, tiny_d2_configs):
    """Parameters of separately built models and FLOPs of ``analyze_configs`` at the same fixed
    work give the benchmark's figures and ratios."""
    from detectron2.modeling import build_model

    from light_rcnn.analysis.model_stats import analyze_configs
    from light_rcnn.config import load_config

    base, fpn = _ok(fixed_run[0])
    params = [sum(p.numel() for p in build_model(load_config(c, ["MODEL.WEIGHTS", ""])).parameters())
              for c in tiny_d2_configs]
    assert [base["params"], fpn["params"]] == params
    assert fpn["ratio_to_baseline"]["params"] == pytest.approx(params[1] / params[0])
    flops = [r["flops"]["total"] for r in analyze_configs(list(tiny_d2_configs), tasks=("flop",), image_size=(H, W),
                                                          fixed_work=(N_PROPOSALS, N_MASKS))]
    assert [base["flops"]["total"], fpn["flops"]["total"]] == pytest.approx(flops, rel=1e-9)
    assert fpn["ratio_to_baseline"]["flops"] == pytest.approx(flops[1] / flops[0])
    assert fpn["ratio_to_baseline"]["latency"] == pytest.approx(fpn["latency_ms"]["mean"] / base["latency_ms"]["mean"])


def test_every_stage_is_measured(fixed_run):
    c4, fpn = _ok(fixed_run[0])
    for m in (c4, fpn):
        assert set(m["stages_ms"]) == set(STAGES)
        for s in ("backbone", "rpn", "box_head", "mask_head", "postprocess"):
            assert m["stages_ms"][s] > 0, (m["name"], s)
        # the staged passes match the clean end-to-end passes within 10%
        assert abs(m["stage_sum_vs_end_to_end"] - 1) <= 0.10, m["stage_sum_vs_end_to_end"]
    # The neck stage is zero without bottom_up (C4) and positive with FPN.
    assert c4["stages_ms"]["neck"] == 0.0 and fpn["stages_ms"]["neck"] > 0


def test_fixed_work_is_met_and_unequal_nms_work_reported(fixed_run):
    """Both models process the prescribed proposals and mask boxes; their final NMS receives the
    same boxes (60 ROIs x 5 classes), but FPN's RPN NMS receives more than C4's 7 x 9 x 15 anchors:
    the run is not verified and says so for FPN only."""
    results = fixed_run[0]
    c4, fpn = _ok(results)
    for m in (c4, fpn):
        c = m["counts"]
        assert c["proposals_per_image"] == N_PROPOSALS and c["box_rois"] == N_PROPOSALS
        assert c["mask_rois"] == N_MASKS and c["detections_per_image"] == N_MASKS
        assert c["identical_every_pass"]
        assert m["fixed_work_overrides"]["MODEL.RPN.NMS_THRESH"] == 1.0
        assert m["fixed_work_overrides"]["MODEL.RPN.PRE_NMS_TOPK_TEST"] == 6000
    assert c4["nms_inputs"] == [7 * 9 * 15, N_PROPOSALS * 5] and c4["work_verified"] is True
    assert fpn["nms_inputs"][0] > c4["nms_inputs"][0] and fpn["nms_inputs"][1] == N_PROPOSALS * 5
    assert fpn["unequal_work"] == {"reference": "tiny_c4", "differences": {
        "nms_inputs": {"model": fpn["nms_inputs"], "reference": c4["nms_inputs"]}}}
    assert fpn["work_verified"] is False and results["fixed_work"]["verified"] is False
    with open(os.path.join(fixed_run[1], "benchmark.md")) as f:
        assert f"| {fpn['nms_inputs'][0]}/{N_PROPOSALS * 5} (unequal) |" in f.read()


def test_memory_measured_in_a_fresh_process(fixed_run):
    for m in _ok(fixed_run[0]):
        mem = m["memory"]
        assert mem["method"] == "fresh python process" and mem["input"] == f"{H}x{W} synthetic"
        assert mem["peak_rss_mib"] > mem["model_peak_mib"] > 0


def test_failed_config_is_reported_and_others_run(fixed_run):
    results = fixed_run[0]
    bad = [m for m in results["models"] if m["status"] != "ok"]
    assert len(bad) == 1
    assert bad[0]["name"] == "tiny_c4[NAME=NoSuchBackbone]" and bad[0]["error_stage"] == "build"
    assert "NoSuchBackbone" in bad[0]["error"]
    with open(os.path.join(fixed_run[1], "benchmark.md")) as f:
        assert "NoSuchBackbone" in f.read()


def test_unmet_fixed_work_raises(tiny_d2_configs):
    # 10 proposals x 5 classes = 50 candidate detections < 60 requested: the count check must fire.
    specs = make_specs([[tiny_d2_configs[0]]])
    settings = BenchmarkSettings(models=specs, image_size=(H, W), warmup=0, iters=1, memory="off", flops=False,
                                 num_proposals=10, num_detections=60)
    with pytest.raises(FixedWorkError, match="fixed work not met"):
        run_benchmark(settings)


def test_torchvision_model_at_same_work(tiny_d2_configs):
    """A torchvision detector keeps the same proposals and detections; its RPN (other levels and
    anchors) feeds its NMS other boxes: refused, then recorded with ``strict_work=False``."""
    specs = make_specs([[tiny_d2_configs[1]]], ["fasterrcnn_mobilenet_v3_large_320_fpn"])
    kw = dict(models=specs, image_size=(H, W), warmup=0, iters=1, memory="off", num_proposals=N_PROPOSALS,
              num_detections=N_MASKS)
    with pytest.raises(FixedWorkError, match=r"tv:fasterrcnn_mobilenet_v3_large_320_fpn: nms_inputs \["):
        run_benchmark(BenchmarkSettings(**kw))
    results = run_benchmark(BenchmarkSettings(strict_work=False, **kw))
    tv = results["models"][1]
    assert tv["status"] == "ok", tv.get("error")
    assert tv["counts"]["proposals_per_image"] == N_PROPOSALS and tv["counts"]["detections_per_image"] == N_MASKS
    # 60 ROIs x 12 of its 90 foreground classes enter its final NMS; its RPN NMS another number
    assert tv["nms_inputs"][1] == N_PROPOSALS * 12 and list(tv["unequal_work"]["differences"]) == ["nms_inputs"]
    assert tv["mask_on"] is False and tv["stages_ms"]["mask_head"] == 0.0 and tv["stages_ms"]["neck"] > 0
    assert tv["flops"]["total"] > 0 and tv["ratio_to_baseline"]["params"] > 1


def test_remote_weights_fail_clearly(tiny_d2_configs):
    specs = make_specs([[tiny_d2_configs[0], "MODEL.WEIGHTS", "detectron2://ImageNetPretrained/MSRA/R-50.pkl"]])
    with pytest.raises(FileNotFoundError, match="MODEL.WEIGHTS is 'detectron2://.*R-50.pkl'"):
        run_benchmark(BenchmarkSettings(models=specs, image_size=(H, W), iters=1, memory="off"))


def test_train_task(tiny_d2_configs, tiny_sizes):
    """Training iterations sample exactly ROI_HEADS.BATCH_SIZE_PER_IMAGE ROIs per image, of which
    POSITIVE_FRACTION reach the mask head (the ground-truth boxes are always foreground)."""
    c4 = tiny_d2_configs[0]
    specs = make_specs([[c4], [c4, "INPUT.MASK_FORMAT", "bitmask"]])
    settings = BenchmarkSettings(models=specs, global_opts=tiny_sizes, task="train", image_size=(H, W), warmup=1,
                                 iters=2, batch_size=2, num_gt=4, memory="off", flops=False, threads=1)
    t0 = time.perf_counter()
    results = run_benchmark(settings)
    elapsed = time.perf_counter() - t0
    rois = tiny_sizes[tiny_sizes.index("MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE") + 1]
    for m in results["models"]:
        assert m["status"] == "ok", m.get("error")
        assert m["iter_ms"]["n"] == 2 and all(m["stages_ms"][k] > 0 for k in ("forward", "backward", "optimizer"))
        assert m["counts"]["box_rois"] == 2 * rois and m["counts"]["mask_rois"] == 2 * rois * 0.25
    assert sum(m["iter_ms"]["mean"] * 2 for m in results["models"]) / 1000.0 < elapsed


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """A registered data set of three tiny images with one box each."""
    from PIL import Image

    from detectron2.data import DatasetCatalog, MetadataCatalog

    folder = tmp_path_factory.mktemp("images")
    name = "bench_test_tiny_images"
    files = []
    for i in range(3):
        path = str(folder / f"{i}.png")
        Image.fromarray(np.full((H, W, 3), 40 * i, np.uint8)).save(path)
        files.append(path)

    def dicts():
        return [{"file_name": f, "image_id": i, "height": H, "width": W, "annotations": [
            {"bbox": [10, 10, 50, 40], "bbox_mode": 0, "category_id": 0,
             "segmentation": [[10, 10, 50, 10, 50, 40, 10, 40]], "iscrowd": 0}]} for i, f in enumerate(files)]

    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    DatasetCatalog.register(name, dicts)
    MetadataCatalog.get(name).thing_classes = ["box"]
    return name


def test_data_task(tiny_d2_configs, tiny_dataset):
    specs = make_specs([[tiny_d2_configs[0], "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2"]])
    results = run_benchmark(BenchmarkSettings(models=specs, task="data", dataset=tiny_dataset, warmup=1, iters=2))
    m = results["models"][0]
    assert m["status"] == "ok", m.get("error")
    assert m["images"] == 4 and m["images_per_s"] > 0 and m["batch_size"] == 2


def test_dataset_inference(tiny_d2_configs, tiny_dataset):
    opts = ["INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128"]
    specs = make_specs([[tiny_d2_configs[0]], [tiny_d2_configs[1]]])
    results = run_benchmark(BenchmarkSettings(models=specs, global_opts=opts, dataset=tiny_dataset, warmup=1,
                                              iters=2, memory="off", flops_images=2))
    assert results["mode"] == "dataset" and "fixed_work" not in results
    for m in results["models"]:
        assert m["status"] == "ok", m.get("error")
        assert m["flops"]["num_inputs"] == 2 and m["flops"]["total"] > 0
        assert m["latency_ms"]["n"] == 2 and m["counts"]["proposals_per_image"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
def test_cuda_fixed_work(tiny_d2_configs, tmp_path):
    specs = make_specs([[tiny_d2_configs[0]], [tiny_d2_configs[1]]])
    results = run_benchmark(BenchmarkSettings(models=specs, device="cuda", image_size=(H, W), warmup=1, iters=3,
                                              num_proposals=N_PROPOSALS, num_detections=N_MASKS,
                                              output_dir=str(tmp_path), cudnn_benchmark=False))
    env = results["environment"]
    assert env["device_capability"] and env["cudnn_benchmark"] is False and env["cuda_version"]
    for m in results["models"]:
        assert m["status"] == "ok", m.get("error")
        assert m["memory"]["peak_allocated_mib"] > 0
        assert m["counts"]["mask_rois"] == N_MASKS


def test_cuda_request_without_cuda_is_refused(tiny_d2_configs):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        run_benchmark(BenchmarkSettings(models=make_specs([[tiny_d2_configs[0]]]), device="cuda"))


def test_zero_box_regression_keeps_random_full_depth_model_at_fixed_work(config_file):
    """Full-width R50-C4 with random weights predicts huge box deltas (no normalization before
    weights are loaded); zeroing the regression layers keeps every proposal on the image."""
    from light_rcnn.analysis.build import build_detector, measurement_config

    mc = measurement_config(config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml"),
                            fixed_work=(40, 10))
    torch.manual_seed(0)
    model, zeroed = build_detector(mc.cfg, zero_regression=True)
    model.eval()
    assert zeroed == 2  # RPN anchor_deltas + box predictor bbox_pred
    assert float(model.proposal_generator.rpn_head.anchor_deltas.weight.abs().sum()) == 0.0
    image = torch.from_numpy(np.random.RandomState(0).randint(0, 256, (3, 160, 224)).astype(np.float32))
    with torch.no_grad():
        images = model.preprocess_image([{"image": image}])
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features)
        out = model([{"image": image}])[0]["instances"]
    assert len(proposals[0]) == 40
    assert len(out) == 10 and out.has("pred_masks")
