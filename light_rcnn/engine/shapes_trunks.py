"""Pre-trained trunks for the shapes configs, generated and cached like the shapes data.

The paper starts R50-C4 and Light Mask R-CNN from one ImageNet ResNet-50. Nothing can be
downloaded here, so the shapes form of that protocol pre-trains the quarter-width ResNet-50 of the
shapes configs as a 5-way classifier (four shapes + background) on crops of generated scenes that
are neither ``shapes_train`` nor ``shapes_val`` (:mod:`light_rcnn.data.shapes_crops`), with
:func:`light_rcnn.engine.classifier.train_classifier`. A config names such a trunk as
``MODEL.WEIGHTS: "light_rcnn_trunk://NAME.pth"``; :class:`ShapesTrunkHandler` (registered with
detectron2's ``PathManager`` on ``import light_rcnn``, as detectron2 registers ``detectron2://``)
resolves it to ``$LIGHT_RCNN_CACHE/trunks/NAME.pth`` (default ``~/.cache/light_rcnn/trunks``) and,
when the file is not there, raises FileNotFoundError with the command that builds it::

    python tools/pretrain_shapes_trunk.py resnet50_quarter     # 5-6 min on 2 CPU cores

Recipes (:data:`SHAPES_TRUNKS`) are fixed and seeded, and train with a fixed number of CPU threads
(2: the thread count changes float rounding, so 1 thread gave another trunk), so the same command on
the same CPU kind builds the same tensors on any machine. Choices: the classifier trains on the CPU
whatever the machine has (64-px crops, batch 32: a GPU would not be faster by much, and the
measured trunk is a CPU one); a build
writes ``NAME.partial.pth`` after every epoch and renames it to ``NAME.pth`` only when done, so a
stopped build is resumed by running the command again, and a half-trained trunk is never loaded.
"""
import os

import torch
from detectron2.utils.file_io import PathManager
from iopath.common.file_io import PathHandler

from ..data.shapes_crops import build_shapes_crops
from .classifier import resolve_schedule, train_classifier

PREFIX = "light_rcnn_trunk://"

# name -> recipe. resnet50_quarter: the ResNet-50 of the shapes configs (every stage at 1/4 width;
# MODEL.RESNETS of mask_rcnn_R_50_C4_shapes.yaml), loaded by the R50-C4 shapes configs (stem,
# res2-res5) and the Light Mask R-CNN ResNet ones (stem, res2-res4). Schedule: the one measured in
# RESULTS.md ("Framework 1 from a trunk pre-trained on shape crops": val top-1 53.7 %); 30 epochs
# at lr 0.05 did not learn (31 %).
SHAPES_TRUNKS = {
    "resnet50_quarter": {
        "arch": "resnet",
        "config_file": "light_rcnn://shapes/mask_rcnn_R_50_C4_shapes.yaml",
        "crops": {"train_scenes": 400, "val_scenes": 100, "crop_size": 64},
        "image_size": 64,
        "schedule": {"epochs": 60, "batch_size": 32, "lr": 0.01, "lr_steps": [40, 55]},
        "seed": 0,
        "threads": 2,
    },
}


def trunk_cache_dir():
    """``$LIGHT_RCNN_CACHE/trunks``, else ``~/.cache/light_rcnn/trunks`` (absolute; not created)."""
    base = os.environ.get("LIGHT_RCNN_CACHE", "") or os.path.join("~", ".cache", "light_rcnn")
    return os.path.abspath(os.path.expanduser(os.path.join(base, "trunks")))


def _name_of(path):
    name = path[len(PREFIX):]
    name = name[:-len(".pth")] if name.endswith(".pth") else name
    if name not in SHAPES_TRUNKS:
        raise ValueError(f"'{path}': unknown generated trunk {name!r}; known: "
                         f"{[PREFIX + n + '.pth' for n in sorted(SHAPES_TRUNKS)]}")
    return name


def trunk_path(name):
    """Where the finished trunk ``name`` lives (whether or not it is built)."""
    return os.path.join(trunk_cache_dir(), f"{name}.pth")


class ShapesTrunkHandler(PathHandler):
    """``light_rcnn_trunk://NAME.pth`` -> the cached trunk file; FileNotFoundError naming the
    build command when it is not built yet."""

    def _get_supported_prefixes(self):
        return [PREFIX]

    def _get_local_path(self, path, **kwargs):
        local = trunk_path(_name_of(path))
        if not os.path.isfile(local):
            raise FileNotFoundError(
                f"MODEL.WEIGHTS '{path}' is a generated pre-trained trunk that is not built yet "
                f"(expected at '{local}'). Build it once with: python tools/pretrain_shapes_trunk.py "
                f"{_name_of(path)}   (about 5-6 min on a 2-core CPU; LIGHT_RCNN_CACHE sets the cache).")
        return local

    def _open(self, path, mode="r", buffering=-1, **kwargs):
        return open(self._get_local_path(path), mode, buffering=buffering)

    def _exists(self, path, **kwargs):
        return os.path.isfile(trunk_path(_name_of(path)))

    def _isfile(self, path, **kwargs):
        return self._exists(path)


PathManager.register_handler(ShapesTrunkHandler())


def build_shapes_trunk(name, log=print, **overrides):
    """Build (or finish building) the trunk ``name`` of :data:`SHAPES_TRUNKS`; returns its path.

    ``overrides`` replace recipe entries (tests use tiny ones: ``crops``, ``schedule``,
    ``image_size``, ``opts``). A finished trunk is returned as is."""
    if name not in SHAPES_TRUNKS:
        raise ValueError(f"unknown trunk {name!r}; known: {sorted(SHAPES_TRUNKS)}")
    recipe = {**SHAPES_TRUNKS[name], **overrides}
    final = trunk_path(name)
    if os.path.isfile(final):
        log(f"{final} is already built")
        return final
    os.makedirs(os.path.dirname(final), exist_ok=True)
    data = build_shapes_crops(**recipe["crops"])
    partial = os.path.join(os.path.dirname(final), f"{name}.partial.pth")
    log(f"Training {name} on {data} -> {partial} (renamed to {final} when done)")
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe["threads"])
    try:
        result = _train(recipe, data, partial)
    finally:
        torch.set_num_threads(threads)
    os.replace(partial, final)
    log(f"Built {final} (val top-1 {result['top1']:.2f} %)")
    return final


def _train(recipe, data, output):
    return train_classifier(
        arch=recipe["arch"], data=data, output=output, schedule=resolve_schedule(None, **recipe["schedule"]),
        image_size=recipe["image_size"], resume=True, device="cpu", num_workers=0, seed=recipe["seed"],
        opts=recipe.get("opts", ()), config_file=recipe["config_file"],
    )
