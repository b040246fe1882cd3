"""light_rcnn.engine.shapes_trunks: light_rcnn_trunk:// names resolve to the cached trunk, fail
naming the build command while it is missing, and a (tiny) build loads into the detectors of the
pretrained shapes configs through the Trainer."""
import os

import pytest
import torch
from detectron2.utils.file_io import PathManager

from light_rcnn import load_config
from light_rcnn.engine import Trainer, check_weights
from light_rcnn.engine.checkpoint import is_classifier_checkpoint
from light_rcnn.engine.shapes_trunks import SHAPES_TRUNKS, build_shapes_trunk, trunk_path

from ..conftest import tiny_shapes_opts

TRUNK = "light_rcnn_trunk://resnet50_quarter.pth"
TINY = ["MODEL.RESNETS.WIDTH_PER_GROUP", 4, "MODEL.RESNETS.RES2_OUT_CHANNELS", 16,
        "MODEL.RESNETS.STEM_OUT_CHANNELS", 8]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHT_RCNN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module", autouse=True)
def one_thread(torch_threads):
    with torch_threads(1):
        yield


def test_missing_trunk_names_the_build_command(cache):
    assert trunk_path("resnet50_quarter") == str(cache / "trunks" / "resnet50_quarter.pth")
    assert not PathManager.exists(TRUNK)
    with pytest.raises(FileNotFoundError, match=r"not built yet .*python tools/pretrain_shapes_trunk\.py resnet50_quarter"):
        check_weights(TRUNK)
    with pytest.raises(ValueError, match=r"unknown generated trunk 'resnet18'.*resnet50_quarter\.pth"):
        check_weights("light_rcnn_trunk://resnet18.pth")
    with pytest.raises(ValueError, match=r"unknown trunk 'resnet18'"):
        build_shapes_trunk("resnet18")


def test_recipe_is_the_measured_one():
    recipe = SHAPES_TRUNKS["resnet50_quarter"]
    assert recipe["schedule"] == {"epochs": 60, "batch_size": 32, "lr": 0.01, "lr_steps": [40, 55]}
    assert recipe["crops"]["train_scenes"] == 400 and recipe["image_size"] == 64
    assert recipe["config_file"] == "light_rcnn://shapes/mask_rcnn_R_50_C4_shapes.yaml"
    assert recipe["threads"] == 2  # the trunk measured in RESULTS.md trained on 2 threads


@pytest.mark.parametrize("config,loaded_prefix", [
    ("mask_rcnn_R_50_C4_pretrained_shapes.yaml", "roi_heads.res5.0.conv1.weight"),
    ("light_mask_rcnn_slim_res5_iou_loss_pretrained_shapes.yaml", None),
])
def test_tiny_build_resolves_and_loads_through_the_trainer(cache, tmp_path, config, loaded_prefix):
    lines = []
    path = build_shapes_trunk(
        "resnet50_quarter", log=lines.append, crops={"train_scenes": 12, "val_scenes": 6, "crop_size": 16},
        schedule={"epochs": 1, "batch_size": 8, "lr": 0.01, "lr_steps": []}, image_size=16, opts=TINY)
    assert path == trunk_path("resnet50_quarter") and os.path.isfile(path)
    assert not os.path.exists(path.replace(".pth", ".partial.pth"))
    assert PathManager.get_local_path(TRUNK) == path
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    assert is_classifier_checkpoint(checkpoint) and checkpoint["epoch"] == 1
    stamp = os.path.getmtime(path)
    assert build_shapes_trunk("resnet50_quarter", log=lines.append) == path  # kept, not rebuilt
    assert os.path.getmtime(path) == stamp and lines[-1].endswith("is already built")
    assert torch.get_num_threads() == 1  # the build's 2 threads are given back

    cfg = load_config(f"light_rcnn://shapes/{config}", TINY + tiny_shapes_opts(str(tmp_path / "data"), 4, 2) + [
        "OUTPUT_DIR", str(tmp_path / "run"), "DATALOADER.NUM_WORKERS", 0])
    assert cfg.MODEL.WEIGHTS == TRUNK
    check_weights(cfg.MODEL.WEIGHTS)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    model = trainer.model
    state = model.state_dict()
    stem = "backbone.stem.conv1.weight" if "backbone.stem.conv1.weight" in state else "backbone.bottom_up.stem.conv1.weight"
    torch.testing.assert_close(state[stem], checkpoint["model"]["stem.conv1.weight"])
    if loaded_prefix:
        torch.testing.assert_close(state[loaded_prefix], checkpoint["model"]["res5.0.conv1.weight"])
