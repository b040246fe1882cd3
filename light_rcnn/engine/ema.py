"""Exponential moving average of the weights (Polyak averaging) as a detectron2 training hook.

The average is kept by PyTorch's ``torch.optim.swa_utils.AveragedModel`` with
``get_ema_multi_avg_fn`` (parameters and buffers, so BatchNorm statistics follow the averaged
weights, as D2Go's EMA does). At the last iteration the averaged weights replace the trained ones
before the checkpointer and the evaluation hook run, so ``model_final.pth`` and the final COCO
evaluation are those of the averaged model. Intermediate checkpoints hold the raw weights and the
average is not checkpointed: a run resumed after the start iteration restarts it from the resumed
weights (the average spans ~1/(1 - decay) iterations, so only a resume near the end matters).
"""
import torch
from detectron2.engine import HookBase
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

__all__ = ["ModelEMAHook"]


def _unwrap(model):
    return model.module if isinstance(model, DistributedDataParallel) else model


class ModelEMAHook(HookBase):
    """Keep ``W_ema = decay * W_ema + (1 - decay) * W`` after every step from iteration
    ``int(start_fraction * max_iter)`` on; load ``W_ema`` into the model after the final step.

    Args:
        decay: in (0, 1); the average spans about ``1 / (1 - decay)`` iterations.
        start_fraction: in [0, 1): where in the schedule averaging starts (from scratch, the first
            iterations' weights are far from the final ones and would only drag the average). A
            fraction rather than an iteration, so a shortened ``SOLVER.MAX_ITER`` keeps it valid.
    """

    def __init__(self, decay, start_fraction=0.0):
        if not 0.0 < float(decay) < 1.0:
            raise ValueError(f"MODEL_EMA.DECAY={decay!r}: expected a value in (0, 1), e.g. 0.999")
        if not 0.0 <= float(start_fraction) < 1.0:
            raise ValueError(f"MODEL_EMA.START_FRACTION={start_fraction!r}: expected a value in [0, 1)")
        self.decay = float(decay)
        self.start_fraction = float(start_fraction)
        self.start_iter = 0
        self.ema = None

    def before_train(self):
        self.start_iter = int(self.start_fraction * self.trainer.max_iter)

    @torch.no_grad()
    def after_step(self):
        model = _unwrap(self.trainer.model)
        it = self.trainer.iter
        if it >= self.start_iter:
            if self.ema is None:
                self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(self.decay), use_buffers=True)
            # The first update copies the weights (W_ema = W at the start iteration), later ones average.
            self.ema.update_parameters(model)
        if it + 1 == self.trainer.max_iter and self.ema is not None:
            model.load_state_dict(self.ema.module.state_dict())
