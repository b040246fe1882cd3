"""tools/benchmark.py and light_rcnn.analysis.benchmark on tiny CPU models (in-process)."""
import importlib.util
import json
import os

import numpy as np
import pytest
import torch

import light_rcnn  # noqa: F401
from light_rcnn.analysis.benchmark import (
    BenchmarkSettings,
    FixedWorkError,
    make_specs,
    run_benchmark,
)
from light_rcnn.analysis.stage_timer import STAGES

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = """
MODEL:
  DEVICE: cpu
  RESNETS: {WIDTH_PER_GROUP: 4, RES2_OUT_CHANNELS: 16, STEM_OUT_CHANNELS: 8}
  ROI_HEADS: {NUM_CLASSES: 5}
"""
N_PROPOSALS, N_MASKS = 60, 20
H, W = 112, 144  # odd, non-square


def write_configs(folder):
    """Two tiny configs of different structure: the C4 baseline (shared res5) and FPN (a neck)."""
    c4 = os.path.join(folder, "tiny_c4.yaml")
    fpn = os.path.join(folder, "tiny_fpn.yaml")
    with open(c4, "w") as f:
        f.write('_BASE_: "detectron2://COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml"\n' + TINY)
    with open(fpn, "w") as f:
        f.write('_BASE_: "detectron2://COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"\n' + TINY
                + "  FPN: {OUT_CHANNELS: 16}\n  ROI_BOX_HEAD: {FC_DIM: 32}\n  ROI_MASK_HEAD: {CONV_DIM: 8}\n")
    return c4, fpn


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    return write_configs(str(tmp_path_factory.mktemp("cfg")))


@pytest.fixture(scope="module")
def fixed_run(configs, tmp_path_factory):
    """One fixed-work benchmark: two tiny configs and one that cannot build."""
    c4, fpn = configs
    out = str(tmp_path_factory.mktemp("bench"))
    specs = make_specs([[c4], [fpn], [c4, "MODEL.BACKBONE.NAME", "NoSuchBackbone"]])
    settings = BenchmarkSettings(
        models=specs, image_size=(H, W), warmup=2, iters=12, threads=1, output_dir=out,
        num_proposals=N_PROPOSALS, num_detections=N_MASKS, memory="subprocess", command_line="pytest",
    )
    return run_benchmark(settings), out


def test_json_has_every_field(fixed_run):
    results, out = fixed_run
    with open(os.path.join(out, "benchmark.json")) as f:
        on_disk = json.load(f)
    assert on_disk["schema_version"] == 1 and on_disk["mode"] == "fixed_work"
    env = on_disk["environment"]
    for key in ("torch", "torchvision", "detectron2", "python", "device_name", "cpu_model", "torch_num_threads",
                "cudnn_benchmark", "tf32_matmul", "tf32_cudnn", "timestamp", "command_line"):
        assert key in env, key
    assert env["torch_num_threads"] == 1 and env["command_line"] == "pytest"
    assert "multiply-add" in on_disk["flops_unit"]
    assert on_disk["baseline"] == "tiny_c4"
    ok = [m for m in on_disk["models"] if m["status"] == "ok"]
    assert [m["name"] for m in ok] == ["tiny_c4", "tiny_fpn"]
    for m in ok:
        lat = m["latency_ms"]
        assert set(lat) >= {"mean", "median", "p90"} and lat["n"] == 12 and lat["mean"] > 0
        assert m["images_per_s"] == pytest.approx(1000 / lat["mean"])
        assert set(m["stages_ms"]) == set(STAGES)
        assert m["params"] > 0 and m["weights_mib"] > 0
        assert m["flops"]["total"] > 0 and "backbone" in m["flops"]["by_module"]
        assert m["memory"]["peak_rss_mib"] > m["memory"]["model_peak_mib"] > 0
        assert set(m["ratio_to_baseline"]) >= {"latency", "flops", "params"}
        assert m["weights"] is None and "random init" in m["weights_note"]
    base = ok[0]["ratio_to_baseline"]
    assert base["latency"] == base["flops"] == base["params"] == 1.0
    # The neck stage is zero without bottom_up (C4) and positive with FPN.
    assert ok[0]["stages_ms"]["neck"] == 0.0 and ok[1]["stages_ms"]["neck"] > 0
    with open(os.path.join(out, "benchmark.md")) as f:
        md = f.read()
    assert "| tiny_c4 |" in md and "| tiny_fpn |" in md and "pytest" in md
    assert os.path.getsize(os.path.join(out, "benchmark_stages.png")) > 1000


def test_stages_add_up_to_end_to_end(fixed_run):
    for m in fixed_run[0]["models"]:
        if m["status"] != "ok":
            continue
        # exact partition of the staged forward
        assert sum(m["stages_ms"].values()) == pytest.approx(m["stage_sum_ms"])
        assert m["stage_sum_ms"] == pytest.approx(m["staged_latency_ms"]["mean"], rel=1e-6)
        assert all(v >= 0 for v in m["stages_ms"].values()), m["stages_ms"]
        # and the staged passes match the clean end-to-end passes within 10%
        assert abs(m["stage_sum_vs_end_to_end"] - 1) <= 0.10, m["stage_sum_vs_end_to_end"]
        assert m["stages_consistent"]


def test_fixed_work_is_equal_and_verified(fixed_run):
    results = fixed_run[0]
    assert results["fixed_work"]["verified"] is True
    ok = [m for m in results["models"] if m["status"] == "ok"]
    for m in ok:
        c = m["counts"]
        assert c["proposals_per_image"] == N_PROPOSALS and c["box_rois"] == N_PROPOSALS
        assert c["mask_rois"] == N_MASKS and c["detections_per_image"] == N_MASKS
        assert c["identical_every_pass"]
        assert m["fixed_work_overrides"]["MODEL.RPN.NMS_THRESH"] == 1.0


def test_failed_config_is_reported_and_others_run(fixed_run):
    results = fixed_run[0]
    bad = [m for m in results["models"] if m["status"] != "ok"]
    assert len(bad) == 1
    assert bad[0]["name"] == "tiny_c4[NAME=NoSuchBackbone]" and bad[0]["error_stage"] == "build"
    assert "NoSuchBackbone" in bad[0]["error"]
    with open(os.path.join(fixed_run[1], "benchmark.md")) as f:
        assert "NoSuchBackbone" in f.read()


def test_unmet_fixed_work_raises(configs):
    # 10 proposals x 5 classes = 50 candidate detections < 60 requested: the count check must fire.
    specs = make_specs([[configs[0]]])
    settings = BenchmarkSettings(models=specs, image_size=(H, W), warmup=0, iters=1, memory="off", flops=False,
                                 num_proposals=10, num_detections=60)
    with pytest.raises(FixedWorkError, match="fixed work not met"):
        run_benchmark(settings)


def test_torchvision_model_at_same_work(configs):
    specs = make_specs([[configs[1]]], ["fasterrcnn_mobilenet_v3_large_320_fpn"])
    results = run_benchmark(BenchmarkSettings(models=specs, image_size=(H, W), warmup=0, iters=1, memory="off",
                                              num_proposals=N_PROPOSALS, num_detections=N_MASKS))
    tv = results["models"][1]
    assert tv["status"] == "ok", tv.get("error")
    assert tv["counts"]["proposals_per_image"] == N_PROPOSALS and tv["counts"]["detections_per_image"] == N_MASKS
    assert tv["mask_on"] is False and tv["stages_ms"]["mask_head"] == 0.0 and tv["stages_ms"]["neck"] > 0
    assert tv["flops"]["total"] > 0 and tv["ratio_to_baseline"]["params"] > 1


def test_remote_weights_fail_clearly(configs):
    specs = make_specs([[configs[0], "MODEL.WEIGHTS", "detectron2://ImageNetPretrained/MSRA/R-50.pkl"]])
    with pytest.raises(FileNotFoundError, match="R-50.pkl") as e:
        run_benchmark(BenchmarkSettings(models=specs, image_size=(H, W), iters=1, memory="off"))
    assert "MODEL.WEIGHTS" in str(e.value)


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", os.path.join(REPO_ROOT, "tools", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cli_remote_weights_exit_code(configs, tmp_path, capsys):
    tool = _load_tool("benchmark")
    rc = tool.main(["--config-file", configs[0], "--output-dir", str(tmp_path), "--",
                    "MODEL.WEIGHTS", "https://example.com/model_final.pth"])
    assert rc == 2 and "model_final.pth" in capsys.readouterr().err


def test_train_task(configs):
    specs = make_specs([[configs[0]], [configs[0], "INPUT.MASK_FORMAT", "bitmask"]])
    results = run_benchmark(BenchmarkSettings(models=specs, task="train", image_size=(H, W), warmup=1, iters=1,
                                              batch_size=2, memory="off", flops=False, threads=1))
    for m in results["models"]:
        assert m["status"] == "ok", m.get("error")
        assert m["iters_per_s"] > 0 and m["images_per_s"] == pytest.approx(2 * m["iters_per_s"])
        assert m["stage_sum_ms"] == pytest.approx(m["iter_ms"]["mean"], rel=1e-6)
        assert m["counts"]["box_rois"] > 0


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


def test_data_task(configs, tiny_dataset):
    specs = make_specs([[configs[0], "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2"]])
    results = run_benchmark(BenchmarkSettings(models=specs, task="data", dataset=tiny_dataset, warmup=1, iters=2))
    m = results["models"][0]
    assert m["status"] == "ok", m.get("error")
    assert m["images"] == 4 and m["images_per_s"] > 0 and m["batch_size"] == 2


def test_dataset_inference(configs, tiny_dataset):
    opts = ["INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128"]
    specs = make_specs([[configs[0]], [configs[1]]])
    results = run_benchmark(BenchmarkSettings(models=specs, global_opts=opts, dataset=tiny_dataset, warmup=1,
                                              iters=2, memory="off", flops_images=2))
    assert results["mode"] == "dataset" and "fixed_work" not in results
    for m in results["models"]:
        assert m["status"] == "ok", m.get("error")
        assert m["flops"]["num_inputs"] == 2 and m["flops"]["total"] > 0
        assert m["latency_ms"]["n"] == 2 and m["counts"]["proposals_per_image"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
def test_cuda_fixed_work(configs, tmp_path):
    specs = make_specs([[configs[0]], [configs[1]]])
    results = run_benchmark(BenchmarkSettings(models=specs, device="cuda", image_size=(H, W), warmup=1, iters=3,
                                              num_proposals=N_PROPOSALS, num_detections=N_MASKS,
                                              output_dir=str(tmp_path), cudnn_benchmark=False))
    env = results["environment"]
    assert env["device_capability"] and env["cudnn_benchmark"] is False and env["cuda_version"]
    for m in results["models"]:
        assert m["status"] == "ok", m.get("error")
        assert m["memory"]["peak_allocated_mib"] > 0
        assert m["counts"]["mask_rois"] == N_MASKS


def test_cuda_request_without_cuda_is_refused(configs):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        run_benchmark(BenchmarkSettings(models=make_specs([[configs[0]]]), device="cuda"))


def test_zero_box_regression_keeps_random_full_depth_model_at_fixed_work():
    """Full-width R50-C4 with random weights predicts huge box deltas (no normalization before
    weights are loaded); zeroing the regression layers keeps every proposal on the image."""
    from detectron2.modeling import build_model

    from light_rcnn.analysis.benchmark import fixed_work_opts, zero_box_regression
    from light_rcnn.config import load_config

    cfg = load_config(f"{REPO_ROOT}/configs/COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml",
                      ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    cfg.merge_from_list(fixed_work_opts(cfg, 40, 10))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert zero_box_regression(model) == 2  # RPN anchor_deltas + box predictor bbox_pred
    assert float(model.proposal_generator.rpn_head.anchor_deltas.weight.abs().sum()) == 0.0
    image = torch.from_numpy(np.random.RandomState(0).randint(0, 256, (3, 160, 224)).astype(np.float32))
    with torch.no_grad():
        images = model.preprocess_image([{"image": image}])
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features)
        out = model([{"image": image}])[0]["instances"]
    assert len(proposals[0]) == 40
    assert len(out) == 10 and out.has("pred_masks")
