"""light_rcnn.engine.trainer: the optimizer choice (SOLVER.OPTIMIZER)."""
import pytest
import torch
from detectron2.modeling import build_model

from light_rcnn.config import load_config
from light_rcnn.engine import Trainer
from tests.conftest import REPO_ROOT, TINY_RESNET

CONFIG = f"{REPO_ROOT}/configs/shapes/light_mask_rcnn_framework1_shapes.yaml"


def _model_and_cfg(*opts):
    cfg = load_config(CONFIG, TINY_RESNET + list(opts))
    return build_model(cfg), cfg


def test_sgd_is_detectron2s_default():
    model, cfg = _model_and_cfg("SOLVER.OPTIMIZER", "SGD", "SOLVER.MOMENTUM", 0.8)
    opt = Trainer.build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["momentum"] == 0.8


def test_adamw_uses_betas_decay_and_norm_groups():
    model, cfg = _model_and_cfg(
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


def test_unknown_optimizer_names_the_key():
    model, cfg = _model_and_cfg("SOLVER.OPTIMIZER", "LAMB")
    with pytest.raises(ValueError, match=r"SOLVER.OPTIMIZER='LAMB'.*'SGD' or 'ADAMW'"):
        Trainer.build_optimizer(cfg, model)
