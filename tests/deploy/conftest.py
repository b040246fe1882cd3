"""Fixtures of the deploy tests: tiny shapes models with weights that give distinct
scores and decisive masks, their checkpoints and exported artifacts, cached for the session."""
import os

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.events import EventStorage
from torch import nn

from light_rcnn import build_model, load_config

FRAMEWORK1 = "shapes/light_mask_rcnn_framework1_shapes.yaml"


def decisive_random_model(cfg, box_mask_targets, seed=0):
    """A random-weight model whose outputs are worth comparing: BatchNorm statistics estimated on
    one training-mode pass over two noise images (random init leaves activations ~1e-5 deep in the
    net, so every score is 1/(K+1)), then class and mask logits scaled up (distinct scores, masks far
    from the 0.5 threshold)."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the passes
    g = torch.Generator().manual_seed(seed)
    batch = []
    for h, w in ((96, 128), (112, 128)):
        batch.append({"image": torch.randint(0, 256, (3, h, w), generator=g).float(),
                      "instances": box_mask_targets(h, w, [[10, 10, 50, 60], [40, 30, 100, 90]], [0, 1])})
    model.train()
    with torch.no_grad(), EventStorage():
        model(batch)
    model.eval()
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(10)
        if cfg.MODEL.MASK_ON:
            model.roi_heads.mask_head.predictor.weight.mul_(300)
    return model


@pytest.fixture(autouse=True)
def _one_thread(torch_threads):
    """One torch intra-op thread during each deploy test (see ``torch_threads``)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def _deploy_cache(tmp_path_factory):
    return {"root": tmp_path_factory.mktemp("deploy"), "models": {}, "exports": {}}


@pytest.fixture
def deploy_opts(shapes_root, tiny_resnet, tiny_sizes, tiny_shapes_opts):
    """KEY VALUE overrides of the deploy tests: tiny sizes, a tiny shapes set (8 train, 4 val images),
    at most 10 detections per image (mask pasting on the CPU is the slow part)."""
    return tiny_resnet + tiny_sizes + tiny_shapes_opts(shapes_root, num_train=8, num_val=4) + [
        "TEST.DETECTIONS_PER_IMAGE", 10]


@pytest.fixture
def trained_model(_deploy_cache, deploy_opts, config_file, box_mask_targets):
    """``f(config="shapes/...yaml", extra_opts=()) -> (config path, opts)`` where ``opts`` hold
    ``MODEL.WEIGHTS`` of a saved :func:`decisive_random_model` checkpoint (cached per arguments)."""

    def make(config=FRAMEWORK1, extra_opts=()):
        key = (config, tuple(extra_opts))
        if key not in _deploy_cache["models"]:
            path = config_file(config)
            opts = deploy_opts + list(extra_opts)
            cfg = load_config(path, opts)
            model = decisive_random_model(cfg, box_mask_targets)
            folder = _deploy_cache["root"] / f"model{len(_deploy_cache['models'])}"
            folder.mkdir()
            DetectionCheckpointer(model, save_dir=str(folder)).save("model")
            _deploy_cache["models"][key] = (path, opts + ["MODEL.WEIGHTS", str(folder / "model.pth")])
        return _deploy_cache["models"][key]

    return make


@pytest.fixture
def exported(_deploy_cache, trained_model):
    """``f(fmt, config=..., extra_opts=(), int8=False) -> list[ExportedArtifact]`` of
    ``export_model`` on :func:`trained_model` (cached per arguments; one check image, ONNX Runtime
    checks on one thread)."""
    from light_rcnn.deploy import export_model

    def make(fmt, config=FRAMEWORK1, extra_opts=(), int8=False, calibration_images=4):
        key = (fmt, config, tuple(extra_opts), int8)
        if key not in _deploy_cache["exports"]:
            path, opts = trained_model(config, extra_opts)
            out = _deploy_cache["root"] / f"export{len(_deploy_cache['exports'])}"
            _deploy_cache["exports"][key] = export_model(
                load_config(path, opts), fmt, str(out), int8=int8, calibration_images=calibration_images,
                num_check_images=1, threads=1, log=lambda line: None)
        return _deploy_cache["exports"][key]

    return make


@pytest.fixture
def check_image(shapes_root):
    """``f(i) -> (H, W, 3)`` a shapes validation-style image (64 px), cropped to a non-square size."""
    from light_rcnn.data import generate_shapes_dataset

    def make(i=0):
        import cv2

        _, image_root = generate_shapes_dataset(shapes_root, "val", 4, 64, 1)
        files = sorted(f for f in os.listdir(image_root) if f.endswith((".jpg", ".png")))
        image = cv2.imread(os.path.join(image_root, files[i % len(files)]))
        return np.ascontiguousarray(image[:, : 48 + 4 * i])

    return make
