"""The detector configs of the mobile backbones: every YAML builds, and shrunken detectors run one
training step (forward + backward) and one inference on CPU."""
import glob
import os

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

import light_rcnn  # noqa: F401  (registers the backbones)
from light_rcnn import load_config
from light_rcnn.config import packaged_configs_dir

# Names under the package's configs/ (light_rcnn://<name>), listed at collection time.
VOC = sorted(os.path.relpath(p, packaged_configs_dir()) for p in
             glob.glob(os.path.join(packaged_configs_dir(), "PascalVOC-Detection", "faster_rcnn_*.yaml")))
KITTI = "KITTI/faster_rcnn_dilated_mobilenetv2_layer17.yaml"
COCO = [f"COCO-InstanceSegmentation/{name}" for name in
        ("light_mask_rcnn_fd_mobilenet_1x.yaml", "light_mask_rcnn_dilated_mobilenetv2_1x.yaml")]

TINY = [
    "MODEL.DEVICE", "cpu",
    "INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 96,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 200, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 40,
    "MODEL.RPN.PRE_NMS_TOPK_TEST", 100, "MODEL.RPN.POST_NMS_TOPK_TEST", 20,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 16,
    "MODEL.ANCHOR_GENERATOR.SIZES", [[16, 32, 64]],
]


def _inputs(with_masks):
    """Two odd, non-square images: one with two objects, one without any (empty ground truth)."""
    g = torch.Generator().manual_seed(0)
    batch = []
    for (h, w), boxes in (((67, 93), [[4.0, 6.0, 40.0, 50.0], [30.0, 20.0, 90.0, 60.0]]),
                          ((75, 61), [])):
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.tensor(boxes).reshape(-1, 4))
        inst.gt_classes = torch.zeros(len(boxes), dtype=torch.int64)
        if with_masks:
            masks = torch.zeros(len(boxes), h, w, dtype=torch.bool)
            for i, (x0, y0, x1, y1) in enumerate(boxes):
                masks[i, int(y0):int(y1), int(x0):int(x1)] = True
            inst.gt_masks = BitMasks(masks)
        batch.append({"image": torch.randint(0, 256, (3, h, w), generator=g).float(),
                      "height": h, "width": w, "instances": inst})
    return batch


def _train_step_and_inference(cfg):
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    batch = _inputs(cfg.MODEL.MASK_ON)
    with EventStorage():
        losses = model(batch)
    total = sum(losses.values())
    assert all(torch.isfinite(v) for v in losses.values()), losses
    total.backward()
    grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        out = model([{k: v for k, v in d.items() if k != "instances"} for d in batch])
    assert len(out) == 2 and all(o["instances"].image_size == (d["height"], d["width"])
                                 for o, d in zip(out, batch))
    return losses


@pytest.mark.parametrize("path", VOC + [KITTI], ids=os.path.basename)
def test_detection_configs_build(config_file, path):
    cfg = load_config(config_file(path), TINY)
    assert cfg.VERSION == 2
    model = build_model(cfg)
    feature = cfg.MODEL.RPN.IN_FEATURES[0]
    assert cfg.MODEL.ROI_HEADS.IN_FEATURES == [feature]
    assert model.backbone.output_shape()[feature].stride == (32 if "KITTI" in path else 16)


def test_voc_schedule_is_15_epochs_of_voc07_trainval(config_file):
    assert len(VOC) == 6, VOC  # fd_mobilenet 0.25x/0.5x/1x, mobilenet_v1 0.125x/0.25x/0.5x
    cfg = load_config(config_file("PascalVOC-Detection/faster_rcnn_fd_mobilenet_0.25x.yaml"))
    assert cfg.SOLVER.IMS_PER_BATCH == 1 and cfg.SOLVER.MAX_ITER == 15 * 5011
    assert tuple(cfg.SOLVER.STEPS) == (5 * 5011, 10 * 5011)
    assert cfg.SOLVER.BASE_LR == 1e-3 and cfg.SOLVER.WEIGHT_DECAY == 4e-5
    assert cfg.MODEL.RPN.POST_NMS_TOPK_TEST == 300 and cfg.INPUT.MIN_SIZE_TEST == 600


def test_voc_fd_mobilenet_train_step(config_file):
    cfg = load_config(config_file("PascalVOC-Detection/faster_rcnn_fd_mobilenet_0.25x.yaml"), TINY)
    _train_step_and_inference(cfg)


def test_kitti_layer17_train_step(config_file):
    cfg = load_config(config_file(KITTI), TINY + ["MODEL.MOBILENET.WIDTH_MULT", 0.25])
    _train_step_and_inference(cfg)


@pytest.mark.parametrize("path", COCO, ids=os.path.basename)
def test_coco_light_mask_rcnn_configs(config_file, path):
    cfg = load_config(config_file(path), TINY + ["MODEL.MOBILENET.WIDTH_MULT", 0.25,
                                    "MODEL.SLK.MID_CHANNELS", 16, "MODEL.SLK.OUT_CHANNELS", 16])
    assert cfg.MODEL.BACKBONE.NAME == "build_slk_backbone"
    assert cfg.MODEL.SLK.IN_FEATURE == "stage4"
    losses = _train_step_and_inference(cfg)
    assert "loss_mask" in losses
