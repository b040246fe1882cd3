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
        if not cfg.MODEL.MODELING_HOOKS:
            super().__init__(cfg)
            return
        # DefaultPredictor builds the bare META_ARCHITECTURE; let it skip the checkpoint (which
        # belongs to the hooked architecture), then build the hooked model and load it there once.
        bare = cfg.clone()
        bare.defrost()
        bare.MODEL.WEIGHTS = ""
        super().__init__(bare)
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg)
        self.model.eval()
        DetectionCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
