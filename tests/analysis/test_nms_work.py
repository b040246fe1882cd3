"""Equal NMS work at fixed work: model-independent scores, boxes counted where they enter each NMS,
unequal work refused unless allowed; the benchmark's precision and train task on full-depth random
models."""
import json
import os

import pytest
import torch
import torchvision

import light_rcnn  # noqa: F401
from light_rcnn.analysis.benchmark import BenchmarkSettings, FixedWorkError, make_specs, run_benchmark
from light_rcnn.analysis.benchmark.nms_work import FixedScores, count_nms_inputs

C = "light_rcnn://COCO-InstanceSegmentation/"
R50_C4, FRAMEWORK1 = C + "mask_rcnn_R_50_C4_1x.yaml", C + "light_mask_rcnn_R_50_C4_framework1_1x.yaml"
SMALL = (64, 96)  # full-width COCO models on a small image: 4 x 6 positions x 15 anchors at stride 16
N, M = 8, 4


class _Pair(torch.nn.Module):
    def forward(self, x):
        return x, x


def test_fixed_scores_pass_exactly_k_classes_per_roi_in_both_layouts():
    head, predictor = _Pair(), _Pair()
    scores = FixedScores(head, predictor, classes_per_roi=3, background="last")
    out, _ = predictor(torch.randn(50, 81) * 1e4)  # a saturated model's logits are ignored
    prob = out.softmax(dim=-1)
    assert ((prob[:, :-1] > 0).sum(dim=1) == 3).all() and (prob[:, -1] == 0).all()
    assert torch.equal(out, predictor(torch.zeros(50, 81))[0])  # the same whatever the model computed
    tv_predictor, small = _Pair(), _Pair()
    tv = FixedScores(_Pair(), tv_predictor, classes_per_roi=3, background="first")
    tv_out = tv_predictor(torch.randn(50, 81))[0]
    assert torch.equal(tv_out[:, 1:], out[:, :-1]) and (tv_out.softmax(dim=-1)[:, 0] == 0).all()
    capped = FixedScores(_Pair(), small, classes_per_roi=12)  # 4 foreground classes: all of them
    assert ((small(torch.randn(7, 5))[0].softmax(-1)[:, :-1] > 0).sum(dim=1) == 4).all()
    logits = [torch.randn(1, 15, 4, 6), torch.randn(1, 3, 2, 3)]
    replaced, deltas = head(logits)
    assert [x.shape for x in replaced] == [x.shape for x in logits] and deltas is logits
    assert torch.equal(replaced[0], FixedScores(_Pair(), _Pair(), 1).objectness((1, 15, 4, 6)))
    for s in (scores, tv, capped):
        s.remove()
    assert head(logits)[0] is logits


class _NMSUser(torch.nn.Module):
    def __init__(self, n, classes):
        super().__init__()
        self.n, self.classes = n, classes

    def forward(self, x):
        g = torch.Generator().manual_seed(self.n)
        xy = torch.rand(self.n, 2, generator=g) * 100
        boxes = torch.cat([xy, xy + 1 + torch.rand(self.n, 2, generator=g) * 50], dim=1)
        return torchvision.ops.batched_nms(boxes, torch.rand(self.n, generator=g),
                                           torch.randint(0, self.classes, (self.n,), generator=g), 0.5)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_count_nms_inputs_sums_batched_calls_and_counts_autocast_once(dtype):
    """A batched NMS of 1500 boxes in 7 classes runs one nms per class on the CPU (more than 1000
    boxes): they add up to 1500; autocast's re-dispatch in fp32 is not counted twice."""
    rpn, roi = _NMSUser(300, 1), _NMSUser(1500, 7)

    def run():
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            rpn(None), roi(None)
            torchvision.ops.nms(torch.tensor([[0.0, 0, 5, 5]]), torch.ones(1), 0.5)  # outside both

    assert count_nms_inputs(run, rpn, roi) == [300, 1500, 1]


def _settings(specs, **kw):
    base = dict(image_size=SMALL, warmup=0, iters=1, threads=1, memory="off", flops=False,
                num_proposals=N, num_detections=M)
    base.update(kw)
    return BenchmarkSettings(models=specs, **base)


@pytest.fixture(scope="module")
def random_full_depth_pair(tmp_path_factory):
    """detectron2's R50-C4 and framework 1, full width, random weights, at fixed work."""
    out = str(tmp_path_factory.mktemp("equal"))
    return run_benchmark(_settings(make_specs([[R50_C4], [FRAMEWORK1]]), output_dir=out)), out


def test_random_r50_c4_and_light_model_feed_every_nms_the_same_boxes(random_full_depth_pair):
    results, out = random_full_depth_pair
    base, light = results["models"]
    assert base["status"] == light["status"] == "ok", (base.get("error"), light.get("error"))
    # 4 x 6 positions x 15 anchors enter the RPN NMS; N ROIs x 12 classes the final one
    assert base["nms_inputs"] == light["nms_inputs"] == [4 * 6 * 15, N * 12]
    assert results["fixed_work"]["verified"] is True and results["fixed_work"]["rpn_pre_nms_topk"] == 6000
    with open(os.path.join(out, "benchmark.json")) as f:
        assert [m["nms_inputs"] for m in json.load(f)["models"]] == [[360, N * 12]] * 2
    with open(os.path.join(out, "benchmark.md")) as f:
        assert f.read().count(f"| 360/{N * 12} |") == 2


def test_models_own_scores_give_unequal_work_refused_unless_allowed():
    """The random R50-C4's saturated softmax filters nearly every class score; framework 1 passes
    all 80 per ROI. With the models' own scores the run stops, naming both counts."""
    specs = make_specs([[R50_C4], [FRAMEWORK1]])
    with pytest.raises(FixedWorkError, match=r"light_mask_rcnn_R_50_C4_framework1_1x: nms_inputs \[360, 640\] vs"):
        run_benchmark(_settings(specs, control_scores=False))
    results = run_benchmark(_settings(specs, control_scores=False, strict_work=False))
    base, light = results["models"]
    assert light["nms_inputs"] == [360, N * 80] and base["nms_inputs"][1] < N * 80
    assert light["unequal_work"]["differences"]["nms_inputs"] == {"model": [360, 640], "reference": base["nms_inputs"]}
    assert light["work_verified"] is False and base["work_verified"] is True
    assert results["fixed_work"]["verified"] is False


def test_pre_nms_topk_is_equalized_or_flagged(tiny_d2_configs):
    """A config ranking 100 boxes before the RPN NMS: ranked like the others at fixed work, refused
    when each config keeps its own (``--rpn-pre-nms-topk config``)."""
    c4 = tiny_d2_configs[0]
    specs = make_specs([[c4], [c4, "MODEL.RPN.PRE_NMS_TOPK_TEST", "100"]])
    kw = dict(image_size=(112, 144), num_proposals=20, num_detections=10)
    results = run_benchmark(_settings(specs, **kw))
    assert [m["nms_inputs"] for m in results["models"]] == [[7 * 9 * 15, 20 * 5]] * 2
    with pytest.raises(FixedWorkError, match=r"PRE_NMS_TOPK_TEST=100\]: nms_inputs \[100, 100\] vs \[945, 100\]"):
        run_benchmark(_settings(specs, rpn_pre_nms_topk=None, **kw))


def test_bf16_inference_and_precision_recorded(tiny_d2_configs, tmp_path, load_tool):
    out = str(tmp_path / "bf16")
    rc = load_tool("benchmark").main(["--config-file", tiny_d2_configs[0], "--precision", "bf16",
                                      "--image-size", "112x144", "--warmup", "0", "--iters", "1", "--memory", "off", "--no-flops",
                                      "--num-proposals", "20", "--num-detections", "10", "--output-dir", out])
    assert rc == 0
    with open(os.path.join(out, "benchmark.json")) as f:
        results = json.load(f)
    assert results["precision"] == "bf16" and results["settings"]["precision"] == "bf16"
    assert results["models"][0]["nms_inputs"] == [945, 100]  # not doubled by autocast's nms wrapper
    with open(os.path.join(out, "benchmark.md")) as f:
        assert "precision bf16" in f.read()


def test_unknown_precision_is_refused(tiny_d2_configs):
    with pytest.raises(ValueError, match="--precision 'fp8'"):
        run_benchmark(_settings(make_specs([[tiny_d2_configs[0]]]), precision="fp8"))


def test_train_task_on_random_full_depth_models(tiny_sizes):
    """A random R50-C4 diverges in its first SGD steps unless its frozen BNs are calibrated; with
    them it trains like framework 1 (losses stay finite over three iterations)."""
    specs = make_specs([[R50_C4], [FRAMEWORK1]])
    results = run_benchmark(_settings(specs, task="train", global_opts=tiny_sizes, warmup=1, iters=2,
                                      batch_size=1, num_gt=2))
    for m in results["models"]:
        assert m["status"] == "ok", m.get("error")
        assert m["calibrated_frozen_bn_layers"] > 0 and m["iter_ms"]["n"] == 2
    r50, light = results["models"]
    assert r50["calibrated_frozen_bn_layers"] > light["calibrated_frozen_bn_layers"]  # and its res5 head's
