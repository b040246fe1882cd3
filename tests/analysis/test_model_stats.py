"""light_rcnn.analysis.model_stats and tools/analyze_model.py on tiny configs."""
import pytest
from torch import nn

import light_rcnn  # noqa: F401
from light_rcnn.analysis.model_stats import analyze_configs, count_parameters, weights_size_mib


@pytest.fixture
def configs(tiny_d2_configs):
    return tiny_d2_configs


def test_counts_and_fp32_size():
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)).half()
    m[1].weight.requires_grad_(False)
    # conv 3*8*9 + 8, bn weight 8 + bias 8; buffers: mean 8, var 8 (fp32) + num_batches_tracked (int64)
    assert count_parameters(m) == {"total": 216 + 8 + 16, "trainable": 216 + 8 + 8}
    assert weights_size_mib(m) == pytest.approx(((240 + 16) * 4 + 8) / 2 ** 20)


def test_analyze_two_configs_and_a_broken_one(configs):
    c4, fpn = configs
    res = analyze_configs([c4, fpn, c4], tasks=("flop", "parameter"), image_size=(96, 128),
                          per_config_opts=[(), (), ("MODEL.BACKBONE.NAME", "NoSuchBackbone")], fixed_work=(30, 10))
    a, b, bad = res
    for r in (a, b):
        assert r["error"] is None
        assert r["params"]["total"] > 0 and r["flops"]["total"] > 0
        assert "roi_heads" in r["flops"]["by_module"] and "backbone" in r["parameter_table"]
        assert r["summary"].startswith(r["name"] + ": params") and "multiply-adds" in r["summary"]
        assert "30 proposals" in r["summary"]
    assert a["params"]["total"] != b["params"]["total"]
    assert bad["error"] and "NoSuchBackbone" in bad["summary"]


def test_parameters_match_model(configs):
    from detectron2.modeling import build_model

    from light_rcnn import load_config

    cfg = load_config(configs[0], ["MODEL.WEIGHTS", ""])
    model = build_model(cfg)
    (r,) = analyze_configs([configs[0]], tasks=("parameter",))
    assert r["params"]["total"] == sum(p.numel() for p in model.parameters())
    assert r["flops"] is None


def test_cli_two_configs(configs, load_tool, capsys):
    rc = load_tool("analyze_model").main(["--config-file", configs[0], "--config-file", configs[1], "MODEL.FPN.OUT_CHANNELS", "8",
                    "--tasks", "parameter", "--image-size", "96x128"])
    out = capsys.readouterr().out
    assert rc == 0
    summary = out.split("Summary:")[1].strip().splitlines()
    assert len(summary) == 2
    assert summary[0].startswith("tiny_c4: params") and summary[1].startswith("tiny_fpn[OUT_CHANNELS=8]: params")
