"""Convert a torchvision ResNet state dict to detectron2's ResNet naming (in the spirit of
detectron2's ``tools/convert-torchvision-to-d2.py``), for ``tools/convert_torchvision_to_d2.py``.

Renaming (torchvision -> detectron2 ``build_resnet_backbone``):

==============================  ======================================
``conv1.weight``                ``stem.conv1.weight``
``bn1.*``                       ``stem.conv1.norm.*``
``layer{X}.{Y}.conv{N}.weight`` ``res{X+1}.{Y}.conv{N}.weight``
``layer{X}.{Y}.bn{N}.*``        ``res{X+1}.{Y}.conv{N}.norm.*``
``layer{X}.{Y}.downsample.0.*`` ``res{X+1}.{Y}.shortcut.*``
``layer{X}.{Y}.downsample.1.*`` ``res{X+1}.{Y}.shortcut.norm.*``
``fc.*``                        dropped (ImageNet classifier)
==============================  ======================================

BatchNorm ``weight``, ``bias``, ``running_mean``, ``running_var`` (and ``num_batches_tracked``)
are kept. The output ``{"model": ..., "__author__": "torchvision", "matching_heuristics": True}``
is loaded by ``DetectionCheckpointer`` (``MODEL.WEIGHTS``): a ``.pkl`` file holds numpy arrays
(detectron2's model-zoo format), any other extension a ``torch.save`` of tensors.

What the converted weights imply for a detectron2 config (torchvision's ResNets take **RGB**
images scaled to 0-1 and normalized with mean ``[0.485, 0.456, 0.406]`` / std
``[0.229, 0.224, 0.225]``; detectron2 subtracts PIXEL_MEAN and divides by PIXEL_STD on 0-255
pixels, so the same normalization is the values times 255; torchvision's ResNet-50/101/152 are
"v1.5", with the stride in the 3x3 conv)::

    INPUT:
      FORMAT: "RGB"
    MODEL:
      PIXEL_MEAN: [123.675, 116.280, 103.530]
      PIXEL_STD: [58.395, 57.120, 57.375]
      RESNETS:
        DEPTH: 50
        STRIDE_IN_1X1: False       # ResNet-50/101/152
        RES2_OUT_CHANNELS: 64      # ResNet-18/34 only

detectron2's default (MSRA, Caffe2) R-50 is BGR with PIXEL_MEAN [103.530, 116.280, 123.675] and
PIXEL_STD [1, 1, 1], STRIDE_IN_1X1 True: keeping those with these weights silently swaps the colour
channels and scales the input ~58x.
"""
import pickle
import re
from typing import Dict, List, Tuple

import torch

from .engine.checkpoint import AtomicFile

__all__ = [
    "REQUIRED_RESNET_KEYS",
    "TORCHVISION_PIXEL_MEAN",
    "TORCHVISION_PIXEL_STD",
    "convert_torchvision_resnet",
    "convert_file",
    "detectron2_config_changes",
    "load_torchvision_state_dict",
]

# torchvision's normalization on 0-255 RGB pixels (mean / std times 255), detectron2 style.
TORCHVISION_PIXEL_MEAN = [123.675, 116.280, 103.530]
TORCHVISION_PIXEL_STD = [58.395, 57.120, 57.375]

# Keys every torchvision ResNet state dict has (stem and the first block of each stage).
REQUIRED_RESNET_KEYS = (
    ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"]
    + [f"layer{x}.0.conv1.weight" for x in (1, 2, 3, 4)]
    + [f"layer{x}.0.bn1.running_var" for x in (1, 2, 3, 4)]
)

_BN_FIELDS = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_RULES = [
    (re.compile(r"^conv1\.weight$"), lambda m: "stem.conv1.weight"),
    (re.compile(rf"^bn1\.{_BN_FIELDS}$"), lambda m: f"stem.conv1.norm.{m[1]}"),
    (re.compile(r"^layer([1-4])\.(\d+)\.conv(\d)\.weight$"),
     lambda m: f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.weight"),
    (re.compile(rf"^layer([1-4])\.(\d+)\.bn(\d)\.{_BN_FIELDS}$"),
     lambda m: f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.norm.{m[4]}"),
    (re.compile(r"^layer([1-4])\.(\d+)\.downsample\.0\.weight$"),
     lambda m: f"res{int(m[1]) + 1}.{m[2]}.shortcut.weight"),
    (re.compile(rf"^layer([1-4])\.(\d+)\.downsample\.1\.{_BN_FIELDS}$"),
     lambda m: f"res{int(m[1]) + 1}.{m[2]}.shortcut.norm.{m[3]}"),
]
_DROPPED = re.compile(r"^fc\.(weight|bias)$")

# torchvision depth -> (blocks per stage, bottleneck?)
_DEPTHS = {
    18: ([2, 2, 2, 2], False),
    34: ([3, 4, 6, 3], False),
    50: ([3, 4, 6, 3], True),
    101: ([3, 4, 23, 3], True),
    152: ([3, 8, 36, 3], True),
}


def load_torchvision_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Tensors of a torchvision ``.pth`` (a bare state dict, or one under "state_dict"/"model")."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict) and "conv1.weight" not in obj:
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise ValueError(f"'{path}' does not hold a state dict (found {type(obj).__name__})")
    # DataParallel checkpoints prefix every key with "module."
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _infer_depth(keys) -> int:
    blocks = []
    for x in (1, 2, 3, 4):
        ids = {int(m[1]) for k in keys for m in [re.match(rf"^layer{x}\.(\d+)\.", k)] if m}
        blocks.append(max(ids) + 1 if ids else 0)
    bottleneck = "layer1.0.conv3.weight" in keys
    for depth, (layout, is_bottleneck) in _DEPTHS.items():
        if layout == blocks and is_bottleneck == bottleneck:
            return depth
    return 0


def convert_torchvision_resnet(state_dict: Dict) -> Tuple[Dict[str, torch.Tensor], int]:
    """Rename a torchvision ResNet state dict to detectron2's ResNet naming (see module doc).

    Returns:
        (converted state dict of tensors, depth: 18/34/50/101/152, or 0 if the block layout is
        not a standard one)
    Raises:
        ValueError: not a ResNet state dict: names the missing keys, or the keys that are
            neither ResNet nor classifier keys.
    """
    if not isinstance(state_dict, dict):
        raise ValueError(f"expected a state dict, got {type(state_dict).__name__}")
    missing = [k for k in REQUIRED_RESNET_KEYS if k not in state_dict]
    if missing:
        raise ValueError(
            f"Not a torchvision ResNet state dict: missing keys {missing}"
            + (f" (it has e.g. {sorted(state_dict)[:5]})" if state_dict else " (it is empty)"))
    converted: Dict[str, torch.Tensor] = {}
    unknown: List[str] = []
    for key, value in state_dict.items():
        if _DROPPED.match(key):
            continue
        for pattern, rename in _RULES:
            m = pattern.match(key)
            if m:
                if not torch.is_tensor(value):
                    raise ValueError(f"'{key}' is a {type(value).__name__}, not a tensor")
                converted[rename(m)] = value.detach().cpu()
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"Not a torchvision ResNet state dict: unexpected keys {unknown[:10]}"
                         + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""))
    return converted, _infer_depth(state_dict.keys())


def detectron2_config_changes(depth: int, weights: str = "") -> str:
    """The YAML a detectron2 config needs to use the converted weights of a ResNet-``depth``
    (``weights``: the converted file, printed as ``MODEL.WEIGHTS`` when given)."""
    def fmt(values):
        return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"

    lines = ["INPUT:", '  FORMAT: "RGB"', "MODEL:"]
    if weights:
        lines.append(f'  WEIGHTS: "{weights}"')
    lines += [
        f"  PIXEL_MEAN: {fmt(TORCHVISION_PIXEL_MEAN)}",
        f"  PIXEL_STD: {fmt(TORCHVISION_PIXEL_STD)}",
        "  RESNETS:",
    ]
    if depth:
        lines.append(f"    DEPTH: {depth}")
    lines.append("    STRIDE_IN_1X1: False")
    if depth in (18, 34):
        lines.append("    RES2_OUT_CHANNELS: 64")
    return "\n".join(lines)


def convert_file(src: str, dst: str) -> Dict:
    """Convert the torchvision ResNet ``.pth`` at ``src`` and write ``dst`` (``.pkl``: pickle of
    numpy arrays; else ``torch.save``). Returns the saved dict (plus "depth")."""
    converted, depth = convert_torchvision_resnet(load_torchvision_state_dict(src))
    pkl = dst.endswith(".pkl")
    model = {k: v.numpy() for k, v in converted.items()} if pkl else converted
    out = {"model": model, "__author__": "torchvision", "matching_heuristics": True}
    with AtomicFile(dst, "wb") as f:  # a temporary sibling, then renamed: never a truncated output
        if pkl:
            pickle.dump(out, f)
        else:
            torch.save(out, f)
    return dict(out, depth=depth)
