"""ModelEMAHook: the final weights are the exponential moving average of the trained ones, computed
independently here; bad settings raise naming the key; the Trainer inserts it before checkpointing."""
import pytest
import torch
from detectron2.engine import SimpleTrainer, hooks
from torch import nn

from light_rcnn.engine import Trainer
from light_rcnn.engine.ema import ModelEMAHook


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.register_buffer("seen", torch.zeros(2))

    def forward(self, batch):
        x = torch.stack(batch)
        self.seen += x.mean()  # a float buffer that changes every step
        return {"loss": ((self.fc(x) - 1.0) ** 2).mean()}


def _loader(seed):
    g = torch.Generator().manual_seed(seed)
    while True:
        yield [torch.randn(3, generator=g) for _ in range(4)]


class _Recorder(hooks.HookBase):
    """Snapshot of the weights after each optimizer step (runs before the EMA hook)."""

    def __init__(self):
        self.states = []

    def after_step(self):
        self.states.append({k: v.detach().clone() for k, v in self.trainer.model.state_dict().items()})


@pytest.mark.parametrize("start_fraction, start_iter", [(0.0, 0), (0.45, 4)])
def test_final_weights_are_the_ema_of_the_trained_weights(start_fraction, start_iter):
    torch.manual_seed(0)
    model = _Toy()
    trainer = SimpleTrainer(model, _loader(1), torch.optim.SGD(model.parameters(), lr=0.05))
    recorder, decay = _Recorder(), 0.7
    trainer.register_hooks([recorder, ModelEMAHook(decay, start_fraction=start_fraction)])
    trainer.train(0, 10)

    expected = {k: v.clone() for k, v in recorder.states[start_iter].items()}
    for state in recorder.states[start_iter + 1:]:
        for k in expected:
            expected[k] = decay * expected[k] + (1 - decay) * state[k]
    final = model.state_dict()
    for k in expected:
        assert torch.allclose(final[k], expected[k], atol=1e-6), k
    # and it is not simply the last trained weights
    assert not torch.allclose(final["fc.weight"], recorder.states[-1]["fc.weight"])


def test_bad_settings_raise_naming_the_key():
    with pytest.raises(ValueError, match="MODEL_EMA.DECAY=1.0"):
        ModelEMAHook(1.0)
    with pytest.raises(ValueError, match=r"MODEL_EMA.START_FRACTION=1.0: expected a value in \[0, 1\)"):
        ModelEMAHook(0.9, start_fraction=1.0)


def test_trainer_puts_ema_before_checkpointer_and_evaluation(config_file, tiny_resnet, tiny_sizes, tmp_path):
    from light_rcnn.config import load_config

    cfg = load_config(config_file("shapes/light_mask_rcnn_framework1_shapes.yaml"), tiny_resnet + tiny_sizes + [
        "MODEL_EMA.ENABLED", True, "OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_ITER", 2])
    trainer = Trainer(cfg)
    kinds = [type(h) for h in trainer._hooks]
    ema = kinds.index(ModelEMAHook)
    assert kinds.index(hooks.LRScheduler) < ema < kinds.index(hooks.PeriodicCheckpointer) < kinds.index(hooks.EvalHook)
