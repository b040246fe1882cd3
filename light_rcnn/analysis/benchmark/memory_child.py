"""The memory child of :mod:`.memory`: ``python -m light_rcnn.analysis.benchmark.memory_child``
reads JSON arguments on stdin, builds one model, runs one pass and prints its peak memory.

Running it as a module of the installed package imports ``light_rcnn`` first, which registers
every component; the package is not imported by ``light_rcnn.analysis.benchmark`` itself.
"""
import json
import resource
import sys
from typing import Dict

import torch

from ..build import build_detector, build_torchvision_detector, calibrate_frozen_bn
from ..model_stats import MIB
from .candidate import Candidate
from .inputs import synthetic_image
from .memory import MARKER
from .specs import BenchmarkSettings


def _proc_status_mib(key):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024 / MIB
    except OSError:
        pass
    return None


def child_candidate(child_spec: Dict[str, object], settings: BenchmarkSettings) -> Candidate:
    """Rebuild, with random weights, the model that ``Candidate.child_spec`` describes."""
    if child_spec["kind"] == "detectron2":
        from ...config import LightRCNNCfgNode

        cfg = LightRCNNCfgNode.load_cfg(child_spec["cfg_yaml"])
        torch.manual_seed(0)
        # random weights at fixed work: keep every box on the image, as the measured model does
        model, _ = build_detector(cfg, zero_regression=settings.fixed_work)
        return Candidate("child", "detectron2", model, settings, cfg=cfg)
    model = build_torchvision_detector(child_spec["name"], child_spec["kwargs"])
    return Candidate("child", "torchvision", model, settings)


def memory_child(child_spec, device, task, image_size, settings_dict, threads) -> Dict[str, object]:
    """Build one model, run one pass (inference, or forward + backward), return peak memory."""
    if threads:
        torch.set_num_threads(threads)
    base_rss = _proc_status_mib("VmRSS")
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    settings = BenchmarkSettings(models=[], **settings_dict)
    cand = child_candidate(child_spec, settings)
    if task == "train":
        from detectron2.utils.events import EventStorage

        cand.model.train()
        inputs = cand.train_inputs(settings.batch_size, settings.num_gt, settings.seed)
        with EventStorage():
            calibrate_frozen_bn(cand.model, lambda: cand.train_forward(inputs))  # as the timed model
            losses = cand.train_forward(inputs)
            sum(losses.values()).backward()
    else:
        inputs = cand.eval_inputs_from_bgr(synthetic_image(*image_size, seed=settings.seed))
        with torch.no_grad():
            cand.forward(inputs)
    out = {"method": "fresh python process"}
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        out.update(peak_allocated_mib=torch.cuda.max_memory_allocated() / MIB,
                   peak_reserved_mib=torch.cuda.max_memory_reserved() / MIB)
    hwm = _proc_status_mib("VmHWM")
    if hwm is None:  # not Linux: ru_maxrss (kB on Linux, bytes on macOS)
        scale = 1.0 if sys.platform == "darwin" else 1024.0
        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / MIB
    out.update(peak_rss_mib=hwm, baseline_rss_mib=base_rss,
               model_peak_mib=(hwm - base_rss) if base_rss is not None else None)
    return out


def main():
    """JSON arguments on stdin, one ``@@MEMORY@@{json}`` line on stdout."""
    args = json.loads(sys.stdin.read())
    out = memory_child(args["child_spec"], args["device"], args["task"], tuple(args["image_size"]),
                       args["settings"], args["threads"])
    sys.stdout.write("\n" + MARKER + json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
