"""Redesigned R-CNN subnet and ROI heads (and Table II's C5 subnet) on CPU with tiny sizes."""
import numpy as np
import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.roi_heads import build_box_head
from detectron2.utils.events import EventStorage

from light_rcnn import load_config
from light_rcnn.modeling.light_roi_heads import LightRCNNROIHeads, LightRCNNSubnetHead, ThinRes5ROIHeads

from ..conftest import REPO_ROOT, TINY_RESNET, box_mask_targets

BASE = f"{REPO_ROOT}/configs/Base-LightRCNN-C4.yaml"
TINY_LIGHT = TINY_RESNET + [
    "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
    "MODEL.SLK.MID_CHANNELS", 8, "MODEL.SLK.OUT_CHANNELS", 16, "MODEL.LIGHT_HEAD.CONV_DIMS", [8, 24],
    "MODEL.ROI_MASK_HEAD.CONV_DIM", 8, "MODEL.ROI_HEADS.NUM_CLASSES", 3,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 100, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 30,
    "MODEL.RPN.PRE_NMS_TOPK_TEST", 50, "MODEL.RPN.POST_NMS_TOPK_TEST", 12,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 16,
]


@pytest.mark.parametrize("pool,vector", [(7, 24 * 4), (14, 24)])
def test_subnet_shapes_for_each_pooling(pool, vector):
    cfg = load_config(BASE, TINY_LIGHT + ["MODEL.LIGHT_HEAD.BOX_POOL_SIZE", pool])
    head = build_box_head(cfg, ShapeSpec(channels=16, height=14, width=14))
    assert isinstance(head, LightRCNNSubnetHead)
    feats = head(torch.randn(5, 16, 14, 14))
    assert feats.shape == (5, 24, 14, 14)
    assert head.pool(feats).shape == (5, vector) and head.output_shape.channels == vector
    assert [c.kernel_size for c in head.convs] == [(3, 3), (3, 3)]


def test_subnet_pool_7_averages_each_quadrant():
    head = LightRCNNSubnetHead(ShapeSpec(channels=1, height=14, width=14), conv_dims=[1], box_pool_size=7)
    x = torch.zeros(1, 1, 14, 14)
    x[..., :7, 7:] = 2.0  # top-right quadrant
    assert head.pool(x).tolist() == [[0.0, 2.0, 0.0, 0.0]]


@pytest.mark.parametrize(
    "opts,message",
    [
        (["MODEL.LIGHT_HEAD.BOX_POOL_SIZE", 5], r"MODEL.LIGHT_HEAD.BOX_POOL_SIZE=5: must divide .* allowed: \[2, 7, 14\]"),
        (["MODEL.LIGHT_HEAD.CONV_DIMS", [8, 0]], r"MODEL.LIGHT_HEAD.CONV_DIMS=\[8, 0\]"),
        (["MODEL.LIGHT_HEAD.CONV_DIMS", []], r"MODEL.LIGHT_HEAD.CONV_DIMS=\[\]"),
    ],
)
def test_invalid_head_config_names_key(opts, message):
    with pytest.raises(ValueError, match=message):
        build_model(load_config(BASE, TINY_LIGHT + opts))


def _batch():
    torch.manual_seed(0)
    return [
        {"image": torch.rand(3, 75, 101) * 255, "instances": box_mask_targets(75, 101, [[10, 8, 60, 50], [40, 30, 95, 70]], [0, 2])},
        {"image": torch.rand(3, 75, 101) * 255, "instances": box_mask_targets(75, 101, [], [])},  # empty GT
    ]


@pytest.mark.parametrize("roi_heads", ["LightRCNNROIHeads", "ThinRes5ROIHeads"])
def test_training_step_and_inference(roi_heads):
    cfg = load_config(BASE, TINY_LIGHT + ["MODEL.ROI_HEADS.NAME", roi_heads])
    torch.manual_seed(0)
    model = build_model(cfg)
    expected_cls = {"LightRCNNROIHeads": LightRCNNROIHeads, "ThinRes5ROIHeads": ThinRes5ROIHeads}[roi_heads]
    assert type(model.roi_heads) is expected_cls
    model.train()
    with EventStorage():
        losses = model(_batch())
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.roi_heads.mask_head.predictor.weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.rand(3, 75, 101) * 255}])[0]["instances"]
    assert out.pred_masks.shape[1:] == (75, 101) and len(out) <= 100


def test_mask_branch_is_a_14_to_28_deconvolution_on_the_subnet_features():
    model = build_model(load_config(BASE, TINY_LIGHT))
    mask_head = model.roi_heads.mask_head
    assert mask_head.deconv.in_channels == 24 and tuple(mask_head.deconv.stride) == (2, 2)
    x = torch.randn(3, 24, 14, 14)
    assert mask_head.layers(x).shape == (3, 3, 28, 28)


def test_c5_subnet_reads_thin_channels():
    model = build_model(load_config(BASE, TINY_LIGHT + ["MODEL.ROI_HEADS.NAME", "ThinRes5ROIHeads"]))
    first = model.roi_heads.res5[0]
    assert first.conv1.in_channels == 16 and first.shortcut.in_channels == 16


def test_training_forward_shares_roi_features_between_box_and_mask():
    model = build_model(load_config(BASE, TINY_LIGHT)).train()
    calls = []
    model.roi_heads.subnet.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    seen_mask_input = []
    model.roi_heads.mask_head.register_forward_hook(lambda m, args, o: seen_mask_input.append(args[0].shape[0]))
    with EventStorage():
        model(_batch())
    assert len(calls) == 1  # the subnet ran once; masks reused the foreground rows
    assert 0 < seen_mask_input[0] <= calls[0]


def test_framework1_has_about_40_percent_fewer_parameters_than_r50_c4():
    """Pinned counts (80 COCO classes): a silent change to a layer fails here."""
    def count(path):
        cfg = load_config(f"{REPO_ROOT}/configs/COCO-InstanceSegmentation/{path}", ["MODEL.DEVICE", "cpu"])
        return sum(p.numel() for p in build_model(cfg).parameters())

    baseline, framework1 = count("mask_rcnn_R_50_C4_1x.yaml"), count("light_mask_rcnn_R_50_C4_framework1_1x.yaml")
    assert baseline == 35_909_612
    assert framework1 == 22_090_476
    assert 0.35 <= 1 - framework1 / baseline <= 0.45
    assert np.isclose(1 - framework1 / baseline, 0.385, atol=0.001)
