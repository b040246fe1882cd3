"""StageTimer against independent clocks: a stopwatch around the forward, and our own hooks on the
mask head."""
import time

import pytest
import torch

import light_rcnn  # noqa: F401
from light_rcnn.analysis.benchmark import BenchmarkSettings, Candidate, make_specs, synthetic_image
from light_rcnn.analysis.stage_timer import STAGES, StageTimer

H, W = 112, 144


@pytest.fixture(scope="module")
def candidates(tiny_d2_configs):
    settings = BenchmarkSettings(models=make_specs([[c] for c in tiny_d2_configs]), image_size=(H, W),
                                 num_proposals=60, num_detections=20)
    return [Candidate.from_spec(spec, settings) for spec in settings.models]


def _clock_module(module, log):
    start = []

    def pre(module, args):
        start.append(time.perf_counter())

    def post(module, args, out):
        log.append(time.perf_counter() - start.pop())

    return module.register_forward_pre_hook(pre), module.register_forward_hook(post)


def test_stages_partition_the_forward_measured_outside(candidates):
    for cand in candidates:
        inputs = cand.eval_inputs_from_bgr(synthetic_image(H, W))
        mask_times = []
        # our hooks go on first, so they run outside the timer's own hooks on the mask head
        handles = _clock_module(cand.parts.mask_head, mask_times)
        with StageTimer(cand.parts, "cpu") as timer, torch.no_grad():
            timer.timing(True)
            for _ in range(3):
                mask_times.clear()
                t0 = time.perf_counter()
                cand.forward(inputs)
                outside = time.perf_counter() - t0
                st = timer.last_stages
                parts = [st[s] for s in STAGES]
                assert all(v >= 0 for v in parts), (cand.name, st)
                assert sum(parts) == pytest.approx(st["total"], rel=1e-9)
                # the timed interval is the model's forward: inside the stopwatch, and nearly all of it
                assert 0.9 * outside <= st["total"] <= outside, (cand.name, st["total"], outside)
                # the mask_head stage holds (at least) every call of the mask head itself
                assert st["mask_head"] >= sum(mask_times) > 0, (cand.name, st["mask_head"], mask_times)
                assert st["preprocess"] <= st["postprocess"]
        for h in handles:
            h.remove()


def test_counting_hooks_without_timing(candidates):
    """Timing off (the clean passes): no stage times, but the work is still counted."""
    cand = candidates[1]
    with StageTimer(cand.parts, "cpu") as timer, torch.no_grad():
        out = cand.forward(cand.eval_inputs_from_bgr(synthetic_image(H, W)))
        timer.record_detections(out)
        assert timer.last_stages is None
        assert timer.last_counts["proposals"] == [60] and timer.last_counts["box_rois"] == 60
        assert timer.last_counts["mask_rois"] == 20 and timer.last_counts["detections"] == [len(out[0]["instances"])]
