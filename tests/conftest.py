"""Shared fixtures: a tiny generated shapes data set and tiny CPU configs."""
import contextlib
import importlib.util
import logging
import os
import warnings

import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_configure(config):
    # detectron2 imports pkg_resources and calls torch.jit.script; both warn on every import.
    config.addinivalue_line("filterwarnings", "ignore:pkg_resources is deprecated:UserWarning")
    config.addinivalue_line("filterwarnings", "ignore:`torch.jit.script` is deprecated:FutureWarning")
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
    torch.set_num_threads(min(2, torch.get_num_threads()))


# Sizes that make any R50-C4-style config cheap on a CPU (D2Go's "quick test" idea).
TINY_RESNET = [
    "MODEL.RESNETS.WIDTH_PER_GROUP", 4,
    "MODEL.RESNETS.RES2_OUT_CHANNELS", 16,
    "MODEL.RESNETS.STEM_OUT_CHANNELS", 8,
]
TINY_SIZES = [
    "INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MAX_SIZE_TRAIN", 96,
    "INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 96,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 200, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 50,
    "MODEL.RPN.PRE_NMS_TOPK_TEST", 100, "MODEL.RPN.POST_NMS_TOPK_TEST", 20,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 16,
    "DATALOADER.NUM_WORKERS", 0,
]


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory):
    """A cache folder for generated shapes data, shared by the whole session (outside the repo)."""
    return str(tmp_path_factory.mktemp("shapes_cache"))


def tiny_shapes_opts(root, num_train=16, num_val=6, image_size=64):
    return [
        "DATASETS.SHAPES.ROOT", root,
        "DATASETS.SHAPES.NUM_TRAIN", num_train,
        "DATASETS.SHAPES.NUM_VAL", num_val,
        "DATASETS.SHAPES.IMAGE_SIZE", image_size,
    ]


def box_mask_targets(h, w, boxes, classes):
    """Ground-truth ``Instances`` of an ``h x w`` image: the given boxes, classes, and box-shaped
    bit masks."""
    from detectron2.structures import BitMasks, Boxes, Instances

    inst = Instances((h, w))
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
    masks = torch.zeros(len(classes), h, w, dtype=torch.bool)
    for m, (x0, y0, x1, y1) in zip(masks, boxes):
        m[int(y0):int(y1), int(x0):int(x1)] = True
    inst.gt_masks = BitMasks(masks)
    return inst


# ------------------------------------------------------------------------------------------------
# Fixtures (use these; never import conftest as a module).
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_resnet():
    """KEY VALUE overrides that shrink any ResNet-based config to a few thousand parameters."""
    return list(TINY_RESNET)


@pytest.fixture
def tiny_sizes():
    """KEY VALUE overrides: 64-96 px inputs, few proposals and ROIs, no loader workers."""
    return list(TINY_SIZES)


@pytest.fixture(name="tiny_shapes_opts")
def _tiny_shapes_opts_fixture():
    """``f(root, num_train=16, num_val=6, image_size=64)`` -> KEY VALUE overrides of a tiny shapes set."""
    return tiny_shapes_opts


@pytest.fixture(name="box_mask_targets")
def _box_mask_targets_fixture():
    """``f(h, w, boxes, classes)`` -> ground-truth ``Instances`` with box-shaped bit masks."""
    return box_mask_targets


@pytest.fixture
def config_file():
    """``f("shapes/x.yaml")`` -> the path of a config shipped with light_rcnn (``light_rcnn://``)."""
    from light_rcnn.config import resolve_config_file

    return lambda rel: resolve_config_file("light_rcnn://" + rel)


@pytest.fixture(scope="session")
def load_script():
    """``f("tools/train_net.py")`` -> that script loaded as a module, the way ``python <script>`` runs
    it (``tools/`` and ``datasets/`` are folders of scripts, not packages)."""

    def load(relpath):
        path = os.path.join(REPO_ROOT, relpath)
        name = "script_" + os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def load_tool(load_script):
    """``f("benchmark")`` -> ``tools/benchmark.py`` loaded as a module."""
    return lambda name: load_script(os.path.join("tools", f"{name}.py"))


@contextlib.contextmanager
def _torch_threads(n):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def torch_threads():
    """``with torch_threads(1): ...``: torch's intra-op threads set to ``n`` inside, restored after.
    Tiny models gain nothing from two threads, and on a 2-core machine shared with other work
    OpenMP's spin-waiting made such tests many times slower."""
    return _torch_threads


@pytest.fixture
def logger_warnings(caplog):
    """``f(logger_name)`` -> ``caplog`` holding that logger's warnings, captured even if a logger
    set-up elsewhere stopped propagation (the handler is removed afterwards)."""
    loggers = []

    def capture(name):
        log = logging.getLogger(name)
        log.addHandler(caplog.handler)
        loggers.append(log)
        caplog.set_level(logging.WARNING)
        return caplog

    yield capture
    for log in loggers:
        log.removeHandler(caplog.handler)
