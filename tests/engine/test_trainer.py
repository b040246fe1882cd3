"""light_rcnn.engine.trainer: the optimizer choice (SOLVER.OPTIMIZER) and the evaluation loader's
error on an image that cannot be decoded."""
import re

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

from light_rcnn.config import load_config
from light_rcnn.data import generate_shapes_dataset, register_coco_instances_checked
from light_rcnn.engine import Trainer


@pytest.fixture
def model_and_cfg(config_file, tiny_resnet):
    def make(*opts):
        cfg = load_config(config_file("shapes/light_mask_rcnn_framework1_shapes.yaml"), tiny_resnet + list(opts))
        return build_model(cfg), cfg

    return make


def test_sgd_is_detectron2s_default(model_and_cfg):
    model, cfg = model_and_cfg("SOLVER.OPTIMIZER", "SGD", "SOLVER.MOMENTUM", 0.8)
    opt = Trainer.build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["momentum"] == 0.8


def test_adamw_uses_betas_decay_and_norm_groups(model_and_cfg):
    model, cfg = model_and_cfg(
        "SOLVER.OPTIMIZER", "adamw", "SOLVER.BASE_LR", 0.001, "SOLVER.WEIGHT_DECAY", 0.05,
        "SOLVER.ADAM_BETAS", (0.8, 0.99), "SOLVER.WEIGHT_DECAY_NORM", 0.0,
    )
    opt = Trainer.build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["betas"] == (0.8, 0.99)
    decays = {g["weight_decay"] for g in opt.param_groups}
    assert decays == {0.0, 0.05}  # BN parameters get WEIGHT_DECAY_NORM, as with detectron2's SGD
    n_params = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    # One step moves the weights.
    before = [p.detach().clone() for g in opt.param_groups for p in g["params"]]
    for g in opt.param_groups:
        for p in g["params"]:
            p.grad = torch.ones_like(p)
    opt.step()
    after = [p for g in opt.param_groups for p in g["params"]]
    assert all(not torch.equal(a, b) for a, b in zip(after, before))


def test_unknown_optimizer_names_the_key(model_and_cfg):
    model, cfg = model_and_cfg("SOLVER.OPTIMIZER", "LAMB")
    with pytest.raises(ValueError, match=r"SOLVER.OPTIMIZER='LAMB'.*'SGD' or 'ADAMW'"):
        Trainer.build_optimizer(cfg, model)


def _truncate(path):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def _not_an_image(path):
    with open(path, "w") as f:
        f.write("this is a text file, not a JPEG\n")


@pytest.mark.parametrize("corrupt", [_truncate, _not_an_image], ids=["truncated_jpeg", "not_an_image"])
@pytest.mark.parametrize("workers", [0, 1])
def test_evaluation_on_a_corrupt_image_names_the_file(
    corrupt, workers, tmp_path, config_file, tiny_resnet, tiny_sizes
):
    """The --eval-only path (Trainer.test -> build_test_loader) raises RuntimeError naming the
    file, in the main process and from a data-loader worker, instead of PIL's bare OSError /
    UnidentifiedImageError."""
    json_file, image_root = generate_shapes_dataset(str(tmp_path), "val", 3, 64, seed=2)
    name = f"corrupt_{corrupt.__name__}_{workers}"
    register_coco_instances_checked(name, {}, json_file, image_root)
    try:
        bad = DatasetCatalog.get(name)[1]["file_name"]
        corrupt(bad)
        cfg = load_config(
            config_file("shapes/mask_rcnn_R_50_C4_shapes.yaml"),
            tiny_resnet + tiny_sizes + ["DATASETS.TEST", (name,), "DATALOADER.NUM_WORKERS", workers,
                                        "OUTPUT_DIR", str(tmp_path / "out")],
        )
        model = Trainer.build_model(cfg)
        with pytest.raises(RuntimeError, match=f"Cannot decode image '{re.escape(bad)}'"):
            Trainer.test(cfg, model)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
