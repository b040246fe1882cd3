"""tools/benchmark.py end to end: a light_rcnn model side by side with detectron2's Mask R-CNN C4
baseline at fixed work, and its exit codes."""
import json
import os

import pytest

N_PROPOSALS, N_MASKS = 40, 10
H, W = 112, 144


def test_light_rcnn_against_detectron2_baseline(load_tool, config_file, tiny_resnet, tmp_path, capsys):
    """Random weights, tiny widths: both models process exactly the fixed work on every pass, the
    reports name both, and their FLOPs and parameters equal those of ``analyze_configs``."""
    from light_rcnn.analysis.model_stats import analyze_configs

    out = str(tmp_path / "bench")
    rc = load_tool("benchmark").main([
        "--config-file", "light_rcnn://shapes/mask_rcnn_R_50_C4_shapes.yaml",
        "--config-file", "light_rcnn://shapes/light_mask_rcnn_framework1_shapes.yaml",
        "--image-size", f"{H}x{W}", "--warmup", "1", "--iters", "2", "--threads", "1", "--memory", "off",
        "--num-proposals", str(N_PROPOSALS), "--num-detections", str(N_MASKS), "--output-dir", out,
        "--", *map(str, tiny_resnet),
    ])
    printed = capsys.readouterr().out
    assert rc == 0
    with open(os.path.join(out, "benchmark.json")) as f:
        results = json.load(f)
    base, light = results["models"]
    assert base["status"] == light["status"] == "ok", (base.get("error"), light.get("error"))
    assert (base["name"], light["name"]) == ("mask_rcnn_R_50_C4_shapes", "light_mask_rcnn_framework1_shapes")
    assert (base["roi_heads"], light["roi_heads"]) == ("Res5ROIHeads", "LightRCNNROIHeads")
    assert results["fixed_work"]["verified"] is True and results["baseline"] == base["name"]
    # the same boxes enter every NMS: 7 x 9 positions x 12 anchors, 40 ROIs x the shapes' 4 classes
    assert base["nms_inputs"] == light["nms_inputs"] == [7 * 9 * 12, N_PROPOSALS * 4]
    for m in (base, light):
        assert m["work_verified"] is True
        c = m["counts"]
        assert (c["proposals_per_image"], c["box_rois"], c["mask_rois"], c["detections_per_image"]) == (
            N_PROPOSALS, N_PROPOSALS, N_MASKS, N_MASKS)
        assert c["identical_every_pass"] and m["latency_ms"]["n"] == 2
        assert "memory" not in m
    # the large-kernel neck is a stage of its own in the light model; C4 has none
    assert light["stages_ms"]["neck"] > 0 and base["stages_ms"]["neck"] == 0.0

    paths = [config_file("shapes/mask_rcnn_R_50_C4_shapes.yaml"),
             config_file("shapes/light_mask_rcnn_framework1_shapes.yaml")]
    stats = analyze_configs(paths, list(tiny_resnet), tasks=("flop",), image_size=(H, W),
                            fixed_work=(N_PROPOSALS, N_MASKS))
    assert [base["params"], light["params"]] == [s["params"]["total"] for s in stats]
    assert [base["flops"]["total"], light["flops"]["total"]] == pytest.approx([s["flops"]["total"] for s in stats])
    assert light["ratio_to_baseline"]["flops"] == pytest.approx(stats[1]["flops"]["total"] / stats[0]["flops"]["total"])

    with open(os.path.join(out, "benchmark.md")) as f:
        md = f.read()
    assert printed.rstrip("\n").endswith(md.rstrip("\n"))  # the tool prints the Markdown report last
    assert f"| {base['name']} |" in md and f"| {light['name']} |" in md
    assert f"{N_PROPOSALS} proposals and {N_MASKS} mask boxes per image, verified on every pass: True" in md
    with open(os.path.join(out, "benchmark_stages.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_cli_remote_weights_exit_code(load_tool, tiny_d2_configs, tmp_path, capsys):
    rc = load_tool("benchmark").main(["--config-file", tiny_d2_configs[0], "--output-dir", str(tmp_path), "--",
                                      "MODEL.WEIGHTS", "https://example.com/model_final.pth"])
    assert rc == 2 and "model_final.pth" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(str(tmp_path), "benchmark.json"))


def test_cli_rejects_a_malformed_image_size(load_tool, tiny_d2_configs, capsys):
    with pytest.raises(SystemExit, match="2"):
        load_tool("benchmark").main(["--config-file", tiny_d2_configs[0], "--image-size", "800by1333"])
    assert "expected HxW" in capsys.readouterr().err
