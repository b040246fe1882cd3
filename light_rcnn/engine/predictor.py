"""detectron2's ``DefaultPredictor`` for models built by :func:`light_rcnn.build_model`."""
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import DefaultPredictor

from ..compression import build_model

__all__ = ["Predictor"]


class Predictor(DefaultPredictor):
    """``DefaultPredictor`` (same pre-processing, BGR/RGB handling and output) whose model has
    ``cfg.MODEL.MODELING_HOOKS`` applied before ``cfg.MODEL.WEIGHTS`` is loaded, so a checkpoint of a
    hooked model (e.g. decomposed convs) loads into the same architecture. Without hooks it is
    ``DefaultPredictor`` unchanged."""

    def __init__(self, cfg):
        super().__init__(cfg)
        if cfg.MODEL.MODELING_HOOKS:
            # detectron2 built the bare META_ARCHITECTURE; rebuild with the hooks and reload.
            self.model = build_model(self.cfg)
            self.model.eval()
            DetectionCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
