"""The machine, versions and numerics flags that benchmark figures depend on."""
import datetime
import importlib.util
import os
import platform
import shlex
import subprocess
import sys
from typing import Dict, Optional

import numpy as np
import torch

from ..model_stats import MIB


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_state(folder: Optional[str] = None) -> Dict[str, object]:
    """Commit and dirtiness of the git checkout holding ``folder`` (default: the installed
    ``light_rcnn`` package; git finds the checkout itself). ``None`` for both when ``folder`` is
    not inside a checkout or git is missing."""
    if folder is None:
        folder = os.path.dirname(os.path.abspath(importlib.util.find_spec("light_rcnn").origin))
    try:
        head = subprocess.run(["git", "-C", folder, "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0 or not head.stdout.strip():
            return {"commit": None, "dirty": None}
        dirty = subprocess.run(["git", "-C", folder, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip()) if dirty.returncode == 0 else None}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _version(mod):
    try:
        return __import__(mod).__version__
    except Exception:  # noqa: BLE001  (absent or broken package: reported as None)
        return None


def environment(device: str, command_line: Optional[str] = None) -> Dict[str, object]:
    """Versions, machine and numerics flags that the figures depend on."""
    env = {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command_line": command_line if command_line is not None else " ".join(map(shlex.quote, sys.argv)),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "detectron2": _version("detectron2"),
        "fvcore": _version("fvcore"),
        "numpy": np.__version__,
        "light_rcnn_git": git_state(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "device": device,
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cudnn_enabled": torch.backends.cudnn.enabled,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "device_name": cpu_model(),
    }
    if str(device).startswith("cuda"):
        idx = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(idx)
        env.update(device_name=torch.cuda.get_device_name(idx),
                   device_capability=f"{props.major}.{props.minor}",
                   device_memory_mib=props.total_memory / MIB)
    return env


def apply_numerics(settings) -> None:
    """Thread count, cudnn.benchmark and TF32 of ``settings`` (``None``: left as they are)."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    if settings.cudnn_benchmark is not None:
        torch.backends.cudnn.benchmark = bool(settings.cudnn_benchmark)
    if settings.tf32 is not None:
        torch.backends.cuda.matmul.allow_tf32 = bool(settings.tf32)
        torch.backends.cudnn.allow_tf32 = bool(settings.tf32)
