"""Peak memory of one model, measured in a fresh Python process.

On CUDA ``torch.cuda.max_memory_allocated`` (weights + activations + workspaces of one forward); on
the CPU the process's peak resident set size (``VmHWM`` of ``/proc/self/status``, which unlike
``ru_maxrss`` is not inherited from the parent through fork/exec), reported absolute and as the
increase over the same process right after its imports (``model_peak_mib``). A process-wide high
water mark in the benchmarking process itself would only show the largest model measured so far.
The child is :mod:`.memory_child`, run as ``python -m`` of the installed package.
"""
import json
import subprocess
import sys
from typing import Dict

from .candidate import Candidate
from .specs import BenchmarkSettings

CHILD_MODULE = "light_rcnn.analysis.benchmark.memory_child"
MARKER = "@@MEMORY@@"
# The settings the child needs to rebuild the model and its input.
CHILD_SETTINGS = ("task", "device", "image_size", "batch_size", "num_gt", "seed", "num_proposals", "num_detections",
                  "dataset", "precision", "control_scores", "classes_per_roi", "rpn_pre_nms_topk")


def measure_memory(cand: Candidate, settings: BenchmarkSettings, image_size) -> Dict[str, object]:
    """Peak memory of one model in a fresh Python process (see the module docstring).

    The child is a new interpreter (``sys.executable``), not a fork, so it inherits neither the
    parent's memory nor its high-water mark. It receives ``cand.child_spec`` and the settings as
    JSON on stdin and answers one JSON line on stdout.
    """
    sdict = {k: getattr(settings, k) for k in CHILD_SETTINGS}
    sdict["image_size"] = list(image_size)
    payload = {"child_spec": cand.child_spec, "device": settings.device, "task": settings.task,
               "image_size": list(image_size), "settings": sdict, "threads": settings.threads}
    proc = subprocess.run([sys.executable, "-m", CHILD_MODULE], input=json.dumps(payload),
                          capture_output=True, text=True)
    marker = [line for line in proc.stdout.splitlines() if line.startswith(MARKER)]
    if proc.returncode != 0 or not marker:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"memory child exited with {proc.returncode}: {' / '.join(tail)}")
    return json.loads(marker[-1][len(MARKER):])
