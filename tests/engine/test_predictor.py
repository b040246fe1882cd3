"""Predictor: a checkpoint of a hooked (decomposed) model loads into the hooked architecture and
predicts; without hooks it is detectron2's DefaultPredictor."""
import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer

from light_rcnn import build_model, load_config
from light_rcnn.compression import DepthwiseSeparableConv
from light_rcnn.engine.predictor import Predictor


def test_hooked_checkpoint_loads_into_the_hooked_model(config_file, tiny_resnet, tiny_sizes, tmp_path):
    opts = tiny_resnet + tiny_sizes + [
        "MODEL.MODELING_HOOKS", ["DecompositionHook"], "MODEL.DECOMPOSE.LAYERS", [r"roi_heads\.subnet\.conv\d+"],
    ]
    cfg = load_config(config_file("shapes/light_mask_rcnn_framework1_shapes.yaml"), opts)
    torch.manual_seed(3)
    trained = build_model(cfg)
    DetectionCheckpointer(trained, save_dir=str(tmp_path)).save("hooked")
    cfg.MODEL.WEIGHTS = str(tmp_path / "hooked.pth")

    predictor = Predictor(cfg)
    assert isinstance(predictor.model.roi_heads.subnet.conv1, DepthwiseSeparableConv)
    expected = trained.state_dict()
    loaded = predictor.model.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    out = predictor(np.random.RandomState(0).randint(0, 255, (80, 96, 3), dtype=np.uint8))["instances"]
    assert out.image_size == (80, 96) and out.has("pred_masks")
