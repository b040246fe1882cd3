"""Every YAML shipped in the package's configs/ loads by its ``light_rcnn://`` name, builds, trains
one step and runs one inference on CPU at a tiny size (DensePose's test_setup.py idea); the
ablation configs vary only what their table varies."""
import glob
import os

import pytest
import torch
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from light_rcnn import build_model, load_config
from light_rcnn.config import flatten_config, packaged_configs_dir

CONFIG_DIR = packaged_configs_dir()  # listed at collection time; loaded by light_rcnn:// name
EVERY_YAML = sorted(
    os.path.relpath(p, CONFIG_DIR) for p in glob.glob(os.path.join(CONFIG_DIR, "**", "*.yaml"), recursive=True)
)
# Leaf configs; a Base-*.yaml is an incomplete architecture exercised through its leaves.
ALL_CONFIGS = [name for name in EVERY_YAML if not os.path.basename(name).startswith("Base-")]
SHRINK = [
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


def _load(name, opts=()):
    return load_config(f"light_rcnn://{name}", opts)


def test_configs_found():
    assert len(ALL_CONFIGS) >= 30, ALL_CONFIGS
    assert {"Base-LightRCNN-C4.yaml", "COCO-InstanceSegmentation/light_mask_rcnn_R_50_C4_framework1_1x.yaml",
            "shapes/light_mask_rcnn_framework1_shapes.yaml"} <= set(EVERY_YAML)


@pytest.mark.parametrize("name", EVERY_YAML)
def test_config_loads_by_its_light_rcnn_name_as_by_its_path(name):
    by_name = _load(name)
    assert by_name.dump() == load_config(os.path.join(CONFIG_DIR, name)).dump()
    assert by_name.VERSION == 2


def test_a_user_config_inherits_a_shipped_one_by_name(tmp_path):
    parent = "shapes/light_mask_rcnn_framework1_shapes.yaml"
    mine = tmp_path / "mine.yaml"
    mine.write_text(f'_BASE_: "light_rcnn://{parent}"\nSOLVER:\n  MAX_ITER: 7\n')
    cfg, base = load_config(str(mine)), _load(parent)
    assert base.SOLVER.MAX_ITER != 7 and cfg.SOLVER.MAX_ITER == 7
    assert _diff_cfgs(cfg, base) == {"SOLVER.MAX_ITER"}


def test_unknown_light_rcnn_name_is_refused():
    message = r"'light_rcnn://shapes/nope.yaml' is not a config shipped with light_rcnn"
    with pytest.raises(FileNotFoundError, match=message):
        _load("shapes/nope.yaml")


def _teacher_checkpoint(cfg, folder):
    """A distillation config's teacher needs weights: save a fresh one under ``folder``."""
    from detectron2.checkpoint import DetectionCheckpointer
    from light_rcnn.compression.distillation import build_teacher_config

    DetectionCheckpointer(build_model(build_teacher_config(cfg)), save_dir=str(folder)).save("teacher")
    return str(folder / "teacher.pth")


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_config_builds_trains_one_step_and_infers(name, tmp_path, tiny_resnet):
    cfg = _shrink(_load(name, tiny_resnet + SHRINK))
    if cfg.MODEL.META_ARCHITECTURE == "DistillationRCNN" or "DistillationHook" in cfg.MODEL.MODELING_HOOKS:
        cfg.merge_from_list(["MODEL.DISTILL.TEACHER_WEIGHTS", _teacher_checkpoint(cfg, tmp_path)])
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    with EventStorage():
        losses = model(_inputs(cfg.MODEL.MASK_ON))
    total = sum(losses.values())
    assert torch.isfinite(total), losses
    if "DistillationHook" in cfg.MODEL.MODELING_HOOKS or cfg.MODEL.META_ARCHITECTURE == "DistillationRCNN":
        assert "loss_distill_cls" in losses
    total.backward()
    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.rand(3, 70, 90) * 255}])[0]["instances"]
    assert out.image_size == (70, 90)
    assert out.has("pred_masks") == cfg.MODEL.MASK_ON


def _diff_cfgs(a, b):
    fa, fb = flatten_config(a), flatten_config(b)
    return {k for k in fa if fa[k] != fb[k]}


def _diff(a, b):
    return _diff_cfgs(_load(a), _load(b))


TABLE_II = {"MODEL.SLK.MID_CHANNELS", "MODEL.SLK.OUT_CHANNELS", "MODEL.ROI_HEADS.NAME"}
TABLE_III = {"MODEL.LIGHT_HEAD.CONV_DIMS", "MODEL.LIGHT_HEAD.BOX_POOL_SIZE"}
ABLATION = "COCO-InstanceSegmentation/ablation"


@pytest.mark.parametrize("name", [n for n in EVERY_YAML if n.startswith(ABLATION + "/")])
def test_ablation_configs_differ_only_in_what_their_table_varies(name):
    varied = TABLE_II if os.path.basename(name).startswith("slk") else TABLE_III
    assert _diff(name, f"{ABLATION}/Base-Ablation.yaml") <= varied


def test_table_rows_have_the_papers_values():
    def get(name):
        return _load(f"{ABLATION}/{name}")

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
    cfg = _load("COCO-InstanceSegmentation/light_mask_rcnn_R_50_C4_framework1_paper.yaml")
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
    cfg = _load(parent)
    assert cfg.MODEL.SLK.OUT_CHANNELS <= 128 and max(cfg.MODEL.LIGHT_HEAD.CONV_DIMS) <= 256  # thin neck


def test_pretrained_ablation_forms_are_the_coco_forms_at_a_quarter_width():
    """Each slim res5 subnet trained on shapes, the full-width C5 row and framework 2 is its COCO
    form (the one benchmarked at 800x1333) at the quarter width of the shapes configs; each ablation
    row differs from its parent only in what it varies."""
    pairs = [("light_mask_rcnn_slim_res5_iou_loss_pretrained", "light_mask_rcnn_R_50_C4_slim_res5_iou_loss_1x"),
             ("light_mask_rcnn_slim_res5_half_out_iou_loss_pretrained",
              "light_mask_rcnn_R_50_C4_slim_res5_half_out_iou_loss_1x"),
             ("light_mask_rcnn_slim_res5_2blocks_iou_loss_pretrained",
              "light_mask_rcnn_R_50_C4_slim_res5_2blocks_iou_loss_1x")]

    def res5_out(cfg):  # 0 = detectron2's res5 width
        return cfg.MODEL.LIGHT_HEAD.RES5_OUT_CHANNELS or cfg.MODEL.RESNETS.RES2_OUT_CHANNELS * 8

    for shapes, coco in pairs:
        small, full = _load(f"shapes/{shapes}_shapes.yaml"), _load(f"COCO-InstanceSegmentation/{coco}.yaml")
        assert 4 * small.MODEL.LIGHT_HEAD.RES5_BOTTLENECK_CHANNELS == full.MODEL.LIGHT_HEAD.RES5_BOTTLENECK_CHANNELS
        assert 4 * res5_out(small) == res5_out(full)
        assert 4 * small.MODEL.SLK.OUT_CHANNELS == full.MODEL.SLK.OUT_CHANNELS
        assert small.MODEL.LIGHT_HEAD.RES5_NUM_BLOCKS == full.MODEL.LIGHT_HEAD.RES5_NUM_BLOCKS
        assert small.MODEL.ROI_MASK_HEAD.NAME == full.MODEL.ROI_MASK_HEAD.NAME == "IoUMaskRCNNConvUpsampleHead"
    # Table II's C5 on the thin map, full-width res5 (the slim forms halve its 3x3 width)
    small = _load("shapes/light_mask_rcnn_framework1_c5_pretrained_shapes.yaml")
    full = _load(f"{ABLATION}/slk256_c5.yaml")
    assert small.MODEL.ROI_HEADS.NAME == full.MODEL.ROI_HEADS.NAME == "ThinRes5ROIHeads"
    assert 4 * small.MODEL.SLK.OUT_CHANNELS == full.MODEL.SLK.OUT_CHANNELS
    assert small.MODEL.LIGHT_HEAD.RES5_BOTTLENECK_CHANNELS == full.MODEL.LIGHT_HEAD.RES5_BOTTLENECK_CHANNELS == 0
    assert small.MODEL.LIGHT_HEAD.RES5_OUT_CHANNELS == full.MODEL.LIGHT_HEAD.RES5_OUT_CHANNELS == 0
    # the subnet-channels row: framework 2 (C_out 1024) at a quarter width
    small = _load("shapes/light_mask_rcnn_framework2_pretrained_shapes.yaml")
    full = _load("COCO-InstanceSegmentation/light_mask_rcnn_R_50_C4_framework2_1x.yaml")
    assert [4 * c for c in small.MODEL.LIGHT_HEAD.CONV_DIMS] == list(full.MODEL.LIGHT_HEAD.CONV_DIMS) == [256, 1024]
    outputs, blocks = {"MODEL.LIGHT_HEAD.RES5_OUT_CHANNELS"}, {"MODEL.LIGHT_HEAD.RES5_NUM_BLOCKS"}
    mask_loss = {"MODEL.ROI_MASK_HEAD.NAME", "MODEL.MASK_LOSS.TYPE"}  # the IoU term and the head computing it
    for folder, parent, child, expected in [
        ("shapes", "light_mask_rcnn_slim_res5_iou_loss_pretrained_shapes",
         "light_mask_rcnn_slim_res5_half_out_iou_loss_pretrained_shapes", outputs),
        ("COCO-InstanceSegmentation", "light_mask_rcnn_R_50_C4_slim_res5_iou_loss_1x",
         "light_mask_rcnn_R_50_C4_slim_res5_half_out_iou_loss_1x", outputs),
        ("shapes", "light_mask_rcnn_slim_res5_iou_loss_pretrained_shapes",
         "light_mask_rcnn_slim_res5_2blocks_iou_loss_pretrained_shapes", blocks),
        ("COCO-InstanceSegmentation", "light_mask_rcnn_R_50_C4_slim_res5_iou_loss_1x",
         "light_mask_rcnn_R_50_C4_slim_res5_2blocks_iou_loss_1x", blocks),
        ("shapes", "light_mask_rcnn_slim_res5_half_out_iou_loss_pretrained_shapes",
         "light_mask_rcnn_slim_res5_half_out_pretrained_shapes", mask_loss),
        ("shapes", "light_mask_rcnn_framework1_pretrained_shapes",
         "light_mask_rcnn_framework1_pool14_pretrained_shapes", {"MODEL.LIGHT_HEAD.BOX_POOL_SIZE"}),
        ("shapes", "light_mask_rcnn_framework1_pretrained_shapes",
         "light_mask_rcnn_framework1_thin256_pretrained_shapes", {"MODEL.SLK.MID_CHANNELS", "MODEL.SLK.OUT_CHANNELS"}),
        ("shapes", "light_mask_rcnn_framework1_pretrained_shapes",
         "light_mask_rcnn_framework1_c5_pretrained_shapes", {"MODEL.ROI_HEADS.NAME"}),
        ("shapes", "light_mask_rcnn_framework1_pretrained_shapes",
         "light_mask_rcnn_framework2_pretrained_shapes", {"MODEL.LIGHT_HEAD.CONV_DIMS"}),
        ("shapes", "light_mask_rcnn_framework1_c5_pretrained_shapes",
         "light_mask_rcnn_slim_res5_pretrained_shapes", {"MODEL.LIGHT_HEAD.RES5_BOTTLENECK_CHANNELS"}),
    ]:
        varied = _diff(f"{folder}/{parent}.yaml", f"{folder}/{child}.yaml") - {"OUTPUT_DIR"}
        assert varied == expected, (child, varied)
