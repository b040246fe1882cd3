"""The speed-accuracy frontier (tools/plot_frontier.py): inputs written by the real writers (the demo's
multi-seed summary, the benchmark's and the deploy benchmark's reports, fed made-up measurements),
joined across the ways a config path is written, drawn and tabulated with their exact numbers; files
that are missing, malformed, incomplete or measured unlike the others are named."""
import dataclasses
import json
import os
import re
from types import SimpleNamespace

import cv2
import pytest

from light_rcnn.analysis.frontier import (FrontierInputError, MixedSettingsError, config_key, load_latency,
                                          plot_frontier)

from ..conftest import _torch_threads

FW1 = "shapes/light_mask_rcnn_framework1_shapes.yaml"
R50 = "shapes/mask_rcnn_R_50_C4_shapes.yaml"
FD = "shapes/light_mask_rcnn_fd_mobilenet_shapes.yaml"
VOC = "shapes/faster_rcnn_fd_mobilenet_voc_shapes.yaml"  # boxes only
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_summary(folder, config_file, ap_by_seed):
    """``seeds_summary.json`` written by :func:`light_rcnn.demo.run_demo_seeds` itself, its demo runs
    replaced by ``ap_by_seed`` (``{seed: {task: AP}}``)."""
    import light_rcnn.demo as demo

    def fake_run_demo(config, output_dir, opts, num_images, resume=False):
        seed = opts[opts.index("SEED") + 1]
        return {task: {"AP": ap, "AP50": ap + 10.0} for task, ap in ap_by_seed[seed].items()}, {}, None

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(demo, "run_demo", fake_run_demo)
        demo.run_demo_seeds(config_file, str(folder), list(ap_by_seed))
    return os.path.join(str(folder), "seeds_summary.json")


def write_benchmark(folder, models, threads=2, dataset="shapes_val", image_size=(128, 128)):
    """``benchmark.json`` written by the benchmark's own header and report writer; ``models``:
    ``[(config_file, per-image seconds)]``, each an inference record of :func:`run_benchmark`'s shape."""
    from light_rcnn.analysis.benchmark import BenchmarkSettings, latency_stats, make_specs, write_reports
    from light_rcnn.analysis.benchmark.runner import _results_header, add_ratios
    from light_rcnn.analysis.stage_timer import STAGES

    specs = make_specs([[c] for c, _ in models])
    settings = BenchmarkSettings(models=specs, threads=threads, dataset=dataset, image_size=image_size,
                                 output_dir=str(folder), command_line="tools/benchmark.py ...")
    with _torch_threads(threads):
        results = _results_header(settings)
    for spec, (_, seconds) in zip(specs, models):
        lat = latency_stats(seconds)
        results["models"].append({
            "name": spec.name, "status": "ok", "kind": "detectron2", "config_file": spec.config_file, "opts": [],
            "latency_ms": lat, "images_per_s": 1000.0 / lat["mean"],
            "stages_ms": {s: lat["mean"] / len(STAGES) for s in STAGES}, "params": 1_000_000, "weights_mib": 4.0,
            "counts": {"proposals_per_image": 20.0, "box_rois": 20.0, "mask_rois": 5.0, "detections_per_image": 5.0,
                       "identical_every_pass": True}})
    add_ratios(results, specs[0].name)
    write_reports(results, str(folder))
    return os.path.join(str(folder), "benchmark.json")


def write_deploy(folder, config_file, seconds_by_runtime, ap_by_runtime, threads=2, dataset="shapes_val"):
    """``deploy_benchmark.json`` written by :func:`deploy_record` and the deploy report writer, from
    per-runtime entries of :func:`run_deploy_benchmark`'s shape."""
    from light_rcnn.deploy.benchmark import DeployBenchmarkSettings, latency_record
    from light_rcnn.deploy.benchmark_report import deploy_record, write_reports

    os.makedirs(folder, exist_ok=True)
    runtimes = {}
    for name, seconds in seconds_by_runtime.items():
        entry = {"format": name, "precision": "int8" if name.endswith("int8") else "fp32",
                 "path": os.path.join(str(folder), name), "file_mib": 4.0, "threads": {"torch": threads},
                 "latency_ms": latency_record(seconds), "warmup_runs": 1, "detections": 9,
                 "ap": {task: {"AP": ap} for task, ap in ap_by_runtime[name].items()}}
        if name == "eager":
            entry["weights_mib"] = 4.0
        else:
            entry.update(parity_vs_eager={"box_px": 0.01}, export_s=1.0, export_check={"parity": {}, "passed": True})
        runtimes[name] = entry
    num_images = len(seconds_by_runtime["eager"])
    settings = DeployBenchmarkSettings(threads=threads, dataset=dataset, max_images=num_images)
    record = deploy_record(runtimes, cfg=SimpleNamespace(MODEL=SimpleNamespace(META_ARCHITECTURE="GeneralizedRCNN")),
                           config_file=config_file, weights=os.path.join(str(folder), "model_final.pth"), opts=[],
                           dataset=dataset, num_images=num_images, settings=dataclasses.asdict(settings),
                           load_average=[[0.5, 0.5, 0.5], [0.6, 0.6, 0.6]])
    path = os.path.join(str(folder), "deploy_benchmark.json")
    write_reports(record, path, os.path.join(str(folder), "deploy_benchmark.md"))
    return path


def config_file(rel):
    from light_rcnn.config import resolve_config_file

    return resolve_config_file("light_rcnn://" + rel)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Framework 1 (3 seeds; latency in benchmark.json and a deploy benchmark), FD-MobileNet (2 seeds;
    benchmark.json only), the boxes-only VOC detector (1 seed, no latency), and an R50-C4 latency
    without summary; each config written a different way in each file."""
    root = tmp_path_factory.mktemp("frontier_inputs")
    fw1 = write_summary(root / "fw1", "light_rcnn://" + FW1, {
        0: {"bbox": 50.0, "segm": 40.0}, 1: {"bbox": 51.0, "segm": 42.0}, 2: {"bbox": 52.0, "segm": 44.0}})
    fd = write_summary(root / "fd", config_file(FD), {3: {"bbox": 35.0, "segm": 30.0}, 4: {"bbox": 36.0, "segm": 31.0}})
    voc = write_summary(root / "voc", "light_rcnn://" + VOC, {0: {"bbox": 60.0}})
    bench = write_benchmark(root / "bench", [(config_file(FW1), [0.10, 0.12, 0.20]),
                                             ("light_rcnn://" + FD, [0.05, 0.06, 0.30]),
                                             ("light_rcnn://" + R50, [0.4, 0.5, 0.6])])
    deploy = write_deploy(root / "deploy", "configs/" + FW1,
                          {"eager": [0.10, 0.11, 0.12], "onnx": [0.08, 0.09, 0.10], "onnx-int8": [0.06, 0.07, 0.08]},
                          {"eager": {"bbox": 50.0, "segm": 42.0}, "onnx": {"bbox": 50.0, "segm": 42.0},
                           "onnx-int8": {"bbox": 49.5, "segm": 41.0}})
    return SimpleNamespace(root=root, fw1=fw1, fd=fd, voc=voc, bench=bench, deploy=deploy)


def test_config_paths_written_any_way_match(tmp_path):
    from detectron2 import model_zoo

    key = "light_rcnn://" + FW1
    for name in ["light_rcnn://" + FW1, "light_rcnn:///shapes/./light_mask_rcnn_framework1_shapes.yaml",
                 config_file(FW1), os.path.join(REPO_ROOT, "configs", FW1), "configs/" + FW1,
                 "light_rcnn/configs/" + FW1,
                 "/elsewhere/checkout/configs/" + FW1,
                 "C:\\checkout\\configs\\shapes\\light_mask_rcnn_framework1_shapes.yaml"]:
        assert config_key(name) == key, name
    assert config_key("light_rcnn://" + R50) != key
    zoo = "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml"
    assert config_key(model_zoo.get_config_file(zoo)) == config_key("detectron2://" + zoo) == "detectron2://" + zoo
    assert config_key("detectron2://" + zoo) != config_key("light_rcnn://" + zoo)
    mine = tmp_path / "my.yaml"
    mine.write_text("MODEL: {}\n")
    assert config_key(str(mine)) == str(mine) and config_key("sub/../my.yaml") == "my.yaml"


def test_png_and_table_with_the_exact_numbers(inputs, tmp_path):
    out = tmp_path / "frontier"
    result = plot_frontier([inputs.fw1, inputs.fd, inputs.voc], [inputs.bench, inputs.deploy], str(out))
    assert result["png"] == str(out / "frontier.png") and result["markdown"] == str(out / "frontier.md")
    img = cv2.imread(result["png"])
    assert img is not None and img.shape[0] >= 400 and img.shape[1] >= 600
    # the first config's colour (#4e79a7, BGR 167 121 78): its marker, error bar, label and joining line
    assert int(((abs(img.astype(int) - [167, 121, 78])).sum(axis=2) < 30).sum()) > 100
    md = (out / "frontier.md").read_text()
    assert md == result["text"]
    lines = md.splitlines()
    # framework 1: segm 40/42/44 -> 42.0 +- 2.0, bbox 50/51/52 -> 51.0 +- 1.0; eager p50 of the deploy run
    # (110 ms, not tools/benchmark.py's 120); int8 fastest at 70 ms, 41.0 - 42.0 = -1.00 segm AP
    assert "| light_mask_rcnn_framework1_shapes | 42.0 ± 2.0 (3 seeds) | 51.0 ± 1.0 (3 seeds) | 110.0 | " \
           "onnx-int8 70.0 (segm ΔAP -1.00) | S1, L1, L2 |" in lines
    # FD-MobileNet: 30/31 -> 30.5 +- 0.7, 35/36 -> 35.5 +- 0.7; tools/benchmark.py median 60 ms, no deploy run
    assert "| light_mask_rcnn_fd_mobilenet_shapes | 30.5 ± 0.7 (2 seeds) | 35.5 ± 0.7 (2 seeds) | 60.0 | - | " \
           "S2, L1 |" in lines
    assert "| faster_rcnn_fd_mobilenet_voc_shapes | - | 60.0 (1 seed) | - | - | S3 |" in lines
    assert "- faster_rcnn_fd_mobilenet_voc_shapes: no latency measurement: not plotted" in lines
    assert any("tools/benchmark.py measured 120.0 ms" in ln for ln in lines)
    assert "- latency settings: cpu, 2 threads, dataset shapes_val, eager fp32" in lines
    # the R50-C4 latency has no summary: ignored, with a warning naming it and its file
    assert [w for w in result["warnings"] if "mask_rcnn_R_50_C4_shapes" in w] == [
        f"{inputs.bench}: latency of light_rcnn://{R50} ('mask_rcnn_R_50_C4_shapes') has no seeds summary: ignored"]
    # fastest first: FD eager 60 ms (30.5), int8 70 ms (41.0), framework 1 eager 110 ms (42.0)
    assert ("Pareto frontier (no other point is both faster and more accurate), fastest first: "
            "light_mask_rcnn_fd_mobilenet_shapes eager (60.0 ms, 30.5 AP), light_mask_rcnn_framework1_shapes "
            "onnx-int8 (70.0 ms, 41.0 AP), light_mask_rcnn_framework1_shapes eager (110.0 ms, 42.0 AP)") in lines
    assert f"- S1: `{inputs.fw1}` (tools/demo.py --seeds): `tools/demo.py --config-file light_rcnn://{FW1} " \
           f"--seeds 0 1 2 --output-dir {os.path.dirname(inputs.fw1)}`" in lines
    assert f"- L1: `{inputs.bench}` (tools/benchmark.py): `tools/benchmark.py ...`" in lines


def test_bbox_metric_and_a_summary_without_it(inputs, tmp_path):
    voc_bench = write_benchmark(tmp_path / "bench_voc", [("configs/" + VOC, [0.03, 0.04, 0.05])])
    # segm: the boxes-only detector has a latency but no segm AP -> listed with "-", not plotted
    result = plot_frontier([inputs.voc, inputs.fw1], [inputs.deploy, voc_bench], str(tmp_path / "segm"))
    voc, fw1 = result["rows"]
    assert voc.point("segm") is None and voc.notes == ["no segm AP in the summary: not plotted"]
    assert "| faster_rcnn_fd_mobilenet_voc_shapes | - | 60.0 (1 seed) | 40.0 | - | S1, L2 |" in result["text"]
    assert fw1.point("segm") == pytest.approx((110.0, 42.0, 2.0, 70.0, 41.0))
    # bbox: both plotted, the int8 runtime at 51.0 - 0.5
    result = plot_frontier([inputs.voc, inputs.fw1], [inputs.deploy, voc_bench], str(tmp_path / "bbox"),
                           metric="bbox")
    voc, fw1 = result["rows"]
    assert voc.point("bbox")[:2] == pytest.approx((40.0, 60.0)) and voc.notes == ["one seed: no error bar"]
    assert fw1.point("bbox") == pytest.approx((110.0, 51.0, 1.0, 70.0, 50.5))
    assert "onnx-int8 70.0 (bbox ΔAP -0.50) |" in result["text"] and "bbox AP against latency" in result["text"]


def test_missing_file_and_malformed_json_are_named(inputs, tmp_path):
    missing = str(tmp_path / "nowhere" / "seeds_summary.json")
    with pytest.raises(FrontierInputError, match=re.escape(missing) + ".*no such file"):
        plot_frontier([missing], [], str(tmp_path / "out"))
    broken = tmp_path / "benchmark.json"
    broken.write_text('{"task": "inference", "models": [')
    with pytest.raises(FrontierInputError, match=re.escape(str(broken)) + ": malformed JSON"):
        plot_frontier([inputs.fw1], [str(broken)], str(tmp_path / "out"))
    # a folder stands for the summary in it; a folder without one is named with the file looked for
    assert plot_frontier([os.path.dirname(inputs.fw1)], [], str(tmp_path / "out"))["rows"][0].summary.path == inputs.fw1
    with pytest.raises(FrontierInputError, match=re.escape(os.path.join(str(tmp_path), "seeds_summary.json"))):
        plot_frontier([str(tmp_path)], [], str(tmp_path / "out"))


def test_missing_keys_are_named_with_the_file(inputs, tmp_path):
    with open(inputs.deploy) as f:
        record = json.load(f)
    del record["runtimes"]["eager"]["latency_ms"]["p50"]
    bad = tmp_path / "deploy_benchmark.json"
    bad.write_text(json.dumps(record))
    with pytest.raises(FrontierInputError, match=re.escape(f"{bad}: missing key 'runtimes.eager.latency_ms.p50' "
                                                           "('runtimes.eager.latency_ms' has no key 'p50')")):
        load_latency(str(bad))
    with open(inputs.bench) as f:
        results = json.load(f)
    del results["models"][1]["latency_ms"]
    bad.write_text(json.dumps(results))
    with pytest.raises(FrontierInputError, match=re.escape(f"{bad}: missing key 'models[1].latency_ms.median'")):
        load_latency(str(bad))
    summary = tmp_path / "seeds_summary.json"
    summary.write_text(json.dumps({"config_file": "x.yaml", "summary": {"segm": {"AP": {"mean": "41", "std": 1.0}}}}))
    with pytest.raises(FrontierInputError,
                       match=re.escape(f"{summary}: 'summary.segm.AP.mean' is \"41\", expected a number")):
        plot_frontier([str(summary)], [], str(tmp_path / "out"))
    with pytest.raises(FrontierInputError, match=re.escape(f"{inputs.fw1}: this is a seeds_summary.json")):
        load_latency(inputs.fw1)


def test_a_summary_may_say_how_its_runs_were_made(inputs, tmp_path):
    with open(inputs.fd) as f:
        record = json.load(f)
    record["command"] = "per seed s: tools/train_net.py ... SEED s"
    given = tmp_path / "given" / "seeds_summary.json"
    given.parent.mkdir()
    given.write_text(json.dumps(record))
    text = plot_frontier([str(given)], [inputs.bench], str(tmp_path / "out"))["text"]
    assert f"- S1: `{given}` (tools/demo.py --seeds): `per seed s: tools/train_net.py ... SEED s`" in text.splitlines()
    record["command"] = ["tools/train_net.py"]
    given.write_text(json.dumps(record))
    with pytest.raises(FrontierInputError, match=re.escape(f"{given}: 'command' is [\"tools/train_net.py\"], "
                                                           "expected a str")):
        plot_frontier([str(given)], [], str(tmp_path / "out"))


def config_file_of(summary_path):
    with open(summary_path) as f:
        return json.load(f)["config_file"]


def test_mixed_settings_are_refused_naming_the_files(inputs, tmp_path):
    other = write_deploy(tmp_path / "deploy1", config_file_of(inputs.fd), {"eager": [0.2, 0.2], "onnx": [0.1, 0.1]},
                         {"eager": {"bbox": 35.0, "segm": 30.0}, "onnx": {"bbox": 35.0, "segm": 30.0}}, threads=1)
    with pytest.raises(MixedSettingsError) as e:
        plot_frontier([inputs.fw1, inputs.fd], [inputs.bench, inputs.deploy, other], str(tmp_path / "out"))
    msg = str(e.value)
    assert msg.startswith("the latency files differ in threads (a frontier compares like with like)")
    assert f"cpu, 2 threads, dataset shapes_val, eager fp32: {inputs.bench}, {inputs.deploy}" in msg
    assert f"cpu, 1 threads, dataset shapes_val, eager fp32: {other}" in msg and "--allow-mixed-settings" in msg
    # a fixed-work benchmark on a synthetic image against a deploy run on the data set: a different input
    synthetic = write_benchmark(tmp_path / "bench_fixed", [("light_rcnn://" + FD, [0.05])], dataset=None)
    with pytest.raises(MixedSettingsError, match=r"(?s)differ in input .*synthetic 128x128 image, fixed work"):
        plot_frontier([inputs.fw1, inputs.fd], [synthetic, inputs.deploy], str(tmp_path / "out"))
    result = plot_frontier([inputs.fw1, inputs.fd], [inputs.bench, inputs.deploy, other], str(tmp_path / "out"),
                           allow_mixed_settings=True)
    assert "- latency settings: **mixed** (see the notes)" in result["text"]
    assert any("plotted anyway: --allow-mixed-settings" in w for w in result["warnings"])
    assert "| light_mask_rcnn_fd_mobilenet_shapes | 30.5 ± 0.7 (2 seeds) | 35.5 ± 0.7 (2 seeds) | 200.0 | " \
           "onnx 100.0 (segm ΔAP +0.00) |" in result["text"]


def test_two_latencies_of_one_config_are_refused(inputs, tmp_path):
    second = write_deploy(tmp_path / "deploy2", "light_rcnn://" + FW1, {"eager": [0.1], "onnx": [0.05]},
                          {"eager": {"segm": 42.0}, "onnx": {"segm": 42.0}})
    with pytest.raises(FrontierInputError, match=re.escape(f"{inputs.deploy} ('light_mask_rcnn_framework1_shapes') "
                                                           f"and {second}")):
        plot_frontier([inputs.fw1], [inputs.deploy, second], str(tmp_path / "out"))


def test_command_line_end_to_end(inputs, load_tool, tmp_path, capsys):
    tool = load_tool("plot_frontier")
    out = tmp_path / "cli"
    rc = tool.main(["--summaries", inputs.fw1, inputs.fd, "--summaries", inputs.voc,
                    "--latency", inputs.bench, inputs.deploy, "--output-dir", str(out)])
    captured = capsys.readouterr()
    assert rc == 0
    md = (out / "frontier.md").read_text()
    assert md.rstrip("\n") in captured.out and f"wrote {out / 'frontier.png'} and {out / 'frontier.md'}" in captured.out
    assert f"- command: `tools/plot_frontier.py --summaries {inputs.fw1}" in md
    assert "warning: " in captured.err and "has no seeds summary: ignored" in captured.err
    img = cv2.imread(str(out / "frontier.png"))
    assert img is not None and img.shape[1] >= 600

    missing = str(tmp_path / "missing.json")
    rc = tool.main(["--summaries", inputs.fw1, "--latency", missing, "--output-dir", str(out)])
    assert rc == 2 and capsys.readouterr().err.startswith(f"error: {missing}: no such file")
