"""Every YAML under configs/ loads, builds, trains one step and runs one inference on CPU at a tiny
size (DensePose's test_setup.py idea); the ablation configs vary only what their table varies."""
import glob
import os

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from light_rcnn import load_config

from .conftest import REPO_ROOT, TINY_RESNET

CONFIG_DIR = os.path.join(REPO_ROOT, "configs")
# Leaf configs; a Base-*.yaml is an incomplete architecture exercised through its leaves.
ALL_CONFIGS = sorted(
    os.path.relpath(p, CONFIG_DIR)
    for p in glob.glob(os.path.join(CONFIG_DIR, "**", "*.yaml"), recursive=True)
    if not os.path.basename(p).startswith("Base-")
)
SHRINK = TINY_RESNET + [
    "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 64, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 16,
    "MODEL.RPN.PRE_NMS_TOPK_TEST", 32, "MODEL.RPN.POST_NMS_TOPK_TEST", 8,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 8,
    "MODEL.ROI_BOX_HEAD.FC_DIM", 32, "MODEL.ROI_MASK_HEAD.CONV_DIM", 8,
]


def _shrink(cfg):
    """Narrow whatever the config's architecture uses, keeping its structure."""
    opts = []
    if cfg.MODEL.BACKBONE.NAME == "build_slk_backbone":
        opts += ["MODEL.SLK.MID_CHANNELS", min(cfg.MODEL.SLK.MID_CHANNELS, 8),
                 "MODEL.SLK.OUT_CHANNELS", min(cfg.MODEL.SLK.OUT_CHANNELS, 16)]
    dims = list(cfg.MODEL.LIGHT_HEAD.CONV_DIMS)
    opts += ["MODEL.LIGHT_HEAD.CONV_DIMS", [min(d, 16) for d in dims]]
    if "mobilenet" in cfg.MODEL.BACKBONE.NAME or "mobilenet" in cfg.MODEL.SLK.BOTTOM_UP:
        opts += ["MODEL.MOBILENET.WIDTH_MULT", 0.25]
    cfg.merge_from_list(opts)
    return cfg


def _inputs(mask_on):
    torch.manual_seed(0)
    inst = Instances((70, 90))
    inst.gt_boxes = Boxes(torch.tensor([[5.0, 6.0, 50.0, 60.0]]))
    inst.gt_classes = torch.tensor([0])
    if mask_on:
        m = torch.zeros(1, 70, 90, dtype=torch.bool)
        m[0, 6:60, 5:50] = True
        inst.gt_masks = BitMasks(m)
    return [{"image": torch.rand(3, 70, 90) * 255, "instances": inst}]


def test_configs_found():
    assert len(ALL_CONFIGS) >= 30, ALL_CONFIGS


def _teacher_checkpoint(cfg, folder):
    """A distillation config's teacher needs weights: save a fresh one under ``folder``."""
    from detectron2.checkpoint import DetectionCheckpointer
    from light_rcnn.compression.distillation import build_teacher_config

    DetectionCheckpointer(build_model(build_teacher_config(cfg)), save_dir=str(folder)).save("teacher")
    return str(folder / "teacher.pth")


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_config_builds_trains_one_step_and_infers(name, tmp_path):
    cfg = _shrink(load_config(os.path.join(CONFIG_DIR, name), SHRINK))
    if cfg.MODEL.META_ARCHITECTURE == "DistillationRCNN":
        cfg.merge_from_list(["MODEL.DISTILL.TEACHER_WEIGHTS", _teacher_checkpoint(cfg, tmp_path)])
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    with EventStorage():
        losses = model(_inputs(cfg.MODEL.MASK_ON))
    total = sum(losses.values())
    assert torch.isfinite(total), losses
    total.backward()
    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.rand(3, 70, 90) * 255}])[0]["instances"]
    assert out.image_size == (70, 90)
    assert out.has("pred_masks") == cfg.MODEL.MASK_ON


def _flat(cfg, prefix=""):
    out = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _diff(a, b):
    fa, fb = _flat(load_config(os.path.join(CONFIG_DIR, a))), _flat(load_config(os.path.join(CONFIG_DIR, b)))
    return {k for k in fa if fa[k] != fb[k]}


TABLE_II = {"MODEL.SLK.MID_CHANNELS", "MODEL.SLK.OUT_CHANNELS", "MODEL.ROI_HEADS.NAME"}
TABLE_III = {"MODEL.LIGHT_HEAD.CONV_DIMS", "MODEL.LIGHT_HEAD.BOX_POOL_SIZE"}
ABLATION = "COCO-InstanceSegmentation/ablation"


@pytest.mark.parametrize("name", sorted(glob.glob(os.path.join(CONFIG_DIR, ABLATION, "*.yaml"))))
def test_ablation_configs_differ_only_in_what_their_table_varies(name):
    name = os.path.relpath(name, CONFIG_DIR)
    varied = TABLE_II if os.path.basename(name).startswith("slk") else TABLE_III
    assert _diff(name, f"{ABLATION}/Base-Ablation.yaml") <= varied


def test_table_rows_have_the_papers_values():
    def get(name):
        return load_config(os.path.join(CONFIG_DIR, ABLATION, name))

    for c in (64, 128, 256):
        for head, kind in (("c5", "ThinRes5ROIHeads"), ("redesigned", "LightRCNNROIHeads")):
            cfg = get(f"slk{c}_{head}.yaml")
            assert (cfg.MODEL.SLK.MID_CHANNELS, cfg.MODEL.SLK.OUT_CHANNELS, cfg.MODEL.ROI_HEADS.NAME) == (c, c, kind)
    rows = {(c, p) for c in (256, 512, 1024) for p in (7, 14) if (c, p) != (1024, 14)}
    for c, p in rows:
        cfg = get(f"cout{c}_pool{p}.yaml")
        assert (list(cfg.MODEL.LIGHT_HEAD.CONV_DIMS), cfg.MODEL.LIGHT_HEAD.BOX_POOL_SIZE) == ([256, c], p)
    fw = "COCO-InstanceSegmentation/light_mask_rcnn_R_50_C4_framework{}_1x.yaml"
    assert _diff(fw.format(1), fw.format(2)) == {"MODEL.LIGHT_HEAD.CONV_DIMS"}


def test_paper_schedule():
    cfg = load_config(os.path.join(CONFIG_DIR, "COCO-InstanceSegmentation/light_mask_rcnn_R_50_C4_framework1_paper.yaml"))
    s = cfg.SOLVER
    assert (s.BASE_LR, s.MAX_ITER, tuple(s.STEPS), s.WEIGHT_DECAY, s.MOMENTUM, s.IMS_PER_BATCH) == (
        0.01, 360000, (240000, 320000), 1e-4, 0.9, 2)
    assert cfg.INPUT.MIN_SIZE_TRAIN == (800,) and cfg.MODEL.RPN.IOU_THRESHOLDS == [0.3, 0.7]
    assert cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST == 0.5


@pytest.mark.parametrize("parent,decomposed", [
    ("COCO-InstanceSegmentation/light_mask_rcnn_R_50_C4_thin128_1x.yaml",
     "COCO-InstanceSegmentation/light_mask_rcnn_R_50_C4_decomposed_1x.yaml"),
    ("shapes/light_mask_rcnn_framework1_shapes.yaml", "shapes/light_mask_rcnn_decomposed_shapes.yaml"),
])
def test_decomposed_configs_differ_from_their_parent_only_in_the_decomposition(parent, decomposed):
    # tools/decompose_net.py turns a trained `parent` into `decomposed`; any other difference
    # would make the decomposed checkpoint fail to load (or silently change the model).
    assert {k for k in _diff(parent, decomposed) if k != "OUTPUT_DIR"} == {
        "MODEL.META_ARCHITECTURE", "MODEL.DECOMPOSE.LAYERS"}
    cfg = load_config(os.path.join(CONFIG_DIR, parent))
    assert cfg.MODEL.SLK.OUT_CHANNELS <= 128 and max(cfg.MODEL.LIGHT_HEAD.CONV_DIMS) <= 256  # thin neck
