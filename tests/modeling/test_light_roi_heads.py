"""Redesigned R-CNN subnet and ROI heads (and Table II's C5 subnet) on CPU with tiny sizes, and
pinned losses and detections of LightRCNNROIHeads (as detectron2's tests/modeling/test_roi_heads.py)."""
import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.roi_heads import build_box_head, build_roi_heads
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from light_rcnn import load_config
from light_rcnn.modeling.light_roi_heads import LightRCNNROIHeads, LightRCNNSubnetHead, ThinRes5ROIHeads

TINY_LIGHT = [
    "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
    "MODEL.SLK.MID_CHANNELS", 8, "MODEL.SLK.OUT_CHANNELS", 16, "MODEL.LIGHT_HEAD.CONV_DIMS", [8, 24],
    "MODEL.ROI_MASK_HEAD.CONV_DIM", 8, "MODEL.ROI_HEADS.NUM_CLASSES", 3,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 100, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 30,
    "MODEL.RPN.PRE_NMS_TOPK_TEST", 50, "MODEL.RPN.POST_NMS_TOPK_TEST", 12,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 16,
]


@pytest.fixture
def light_cfg(config_file, tiny_resnet):
    """``f(*opts)`` -> Base-LightRCNN-C4 shrunk to a tiny ResNet, thin map 16, subnet 8 -> 24, 3 classes."""
    base = config_file("Base-LightRCNN-C4.yaml")
    return lambda *opts: load_config(base, tiny_resnet + TINY_LIGHT + list(opts))


@pytest.mark.parametrize("pool,vector", [(7, 24 * 4), (14, 24)])
def test_subnet_shapes_for_each_pooling(light_cfg, pool, vector):
    cfg = light_cfg("MODEL.LIGHT_HEAD.BOX_POOL_SIZE", pool)
    head = build_box_head(cfg, ShapeSpec(channels=16, height=14, width=14))
    assert isinstance(head, LightRCNNSubnetHead)
    feats = head(torch.randn(5, 16, 14, 14))
    assert feats.shape == (5, 24, 14, 14)
    assert head.pool(feats).shape == (5, vector) and head.output_shape.channels == vector
    assert [c.kernel_size for c in head.convs] == [(3, 3), (3, 3)]  # paper Fig. 2: two 3x3 convs


def test_subnet_pool_7_averages_each_quadrant():
    head = LightRCNNSubnetHead(ShapeSpec(channels=1, height=14, width=14), conv_dims=[1], box_pool_size=7)
    x = torch.zeros(1, 1, 14, 14)
    x[..., :7, 7:] = 2.0  # top-right quadrant
    x[..., 0, 7] = 51.0  # one hot pixel: averaged over the 49 cells, not their max
    assert head.pool(x).tolist() == [[0.0, 3.0, 0.0, 0.0]]


@pytest.mark.parametrize(
    "opts,message",
    [
        (["MODEL.LIGHT_HEAD.BOX_POOL_SIZE", 5], r"MODEL.LIGHT_HEAD.BOX_POOL_SIZE=5: must divide .* allowed: \[2, 7, 14\]"),
        (["MODEL.LIGHT_HEAD.CONV_DIMS", [8, 0]], r"MODEL.LIGHT_HEAD.CONV_DIMS=\[8, 0\]"),
        (["MODEL.LIGHT_HEAD.CONV_DIMS", []], r"MODEL.LIGHT_HEAD.CONV_DIMS=\[\]"),
        (["MODEL.ROI_HEADS.IN_FEATURES", ["thin", "thin"]],
         r"IN_FEATURES=\['thin', 'thin'\]: LightRCNNROIHeads reads one"),
        (["MODEL.ROI_BOX_HEAD.NAME", "FastRCNNConvFCHead", "MODEL.ROI_BOX_HEAD.NUM_FC", 8],
         r"'FastRCNNConvFCHead': LightRCNNROIHeads needs a box head with a pool\(\) method"),
    ],
)
def test_invalid_head_config_names_key(light_cfg, opts, message):
    with pytest.raises(ValueError, match=message):
        build_model(light_cfg(*opts))


def test_c5_subnet_needs_the_thin_map(light_cfg):
    cfg = light_cfg("MODEL.ROI_HEADS.NAME", "ThinRes5ROIHeads")
    with pytest.raises(ValueError, match=r"reads 'thin' with 24 channels but MODEL.SLK.OUT_CHANNELS=16"):
        build_roi_heads(cfg, {"thin": ShapeSpec(channels=24, stride=16)})


def _batch(box_mask_targets):
    torch.manual_seed(0)
    two = box_mask_targets(75, 101, [[10, 8, 60, 50], [40, 30, 95, 70]], [0, 2])
    empty = box_mask_targets(75, 101, [], [])
    return [{"image": torch.rand(3, 75, 101) * 255, "instances": two},
            {"image": torch.rand(3, 75, 101) * 255, "instances": empty}]


@pytest.mark.parametrize("roi_heads,cls", [("LightRCNNROIHeads", LightRCNNROIHeads),
                                           ("ThinRes5ROIHeads", ThinRes5ROIHeads)])
def test_training_step_and_inference(light_cfg, box_mask_targets, roi_heads, cls):
    cfg = light_cfg("MODEL.ROI_HEADS.NAME", roi_heads)
    torch.manual_seed(0)
    model = build_model(cfg)
    assert type(model.roi_heads) is cls
    model.train()
    with EventStorage():
        losses = model(_batch(box_mask_targets))
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.roi_heads.mask_head.predictor.weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.rand(3, 75, 101) * 255}])[0]["instances"]
    # An untrained 4-way softmax scores every class ~0.25 > SCORE_THRESH_TEST: there are detections.
    assert len(out) > 0 and out.pred_masks.shape[1:] == (75, 101)
    assert (out.pred_classes < 3).all() and (out.scores >= cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST).all()


def test_mask_branch_is_a_14_to_28_deconvolution_on_the_subnet_features(light_cfg):
    mask_head = build_model(light_cfg()).roi_heads.mask_head
    assert mask_head.deconv.in_channels == 24 and tuple(mask_head.deconv.stride) == (2, 2)
    x = torch.randn(3, 24, 14, 14)
    assert mask_head.layers(x).shape == (3, 3, 28, 28)


def test_c5_subnet_reads_thin_channels(light_cfg):
    first = build_model(light_cfg("MODEL.ROI_HEADS.NAME", "ThinRes5ROIHeads")).roi_heads.res5[0]
    assert first.conv1.in_channels == 16 and first.shortcut.in_channels == 16


SLIM_RES5 = ("MODEL.ROI_HEADS.NAME", "ThinRes5ROIHeads", "MODEL.LIGHT_HEAD.RES5_NUM_BLOCKS", 2,
             "MODEL.LIGHT_HEAD.RES5_BOTTLENECK_CHANNELS", 8, "MODEL.LIGHT_HEAD.RES5_OUT_CHANNELS", 32)


def test_slim_res5_subnet_shapes(light_cfg):
    """RES5_{NUM_BLOCKS,BOTTLENECK_CHANNELS,OUT_CHANNELS}: 2 bottleneck blocks of width 8 and 32
    outputs, the first strided (14 -> 7), feeding the box predictor (pooled) and the mask deconvolution."""
    roi_heads = build_model(light_cfg(*SLIM_RES5)).roi_heads
    assert len(roi_heads.res5) == 2
    assert [b.conv2.out_channels for b in roi_heads.res5] == [8, 8]
    assert [b.conv3.out_channels for b in roi_heads.res5] == [32, 32]
    assert roi_heads.res5[0].shortcut.in_channels == 16 and roi_heads.res5[1].shortcut is None
    x = roi_heads.res5(torch.randn(3, 16, 14, 14))
    assert x.shape == (3, 32, 7, 7)
    assert roi_heads.box_predictor.cls_score.in_features == 32
    assert roi_heads.mask_head.layers(x).shape == (3, 3, 14, 14)


def test_default_res5_subnet_is_detectron2s_res5(light_cfg, tiny_resnet):
    """The RES5_* keys at their defaults (3, 0, 0, "") build res5 as ResNet's config would;
    RES5_NORM replaces its normalization (trainable BN for a res5 not loaded from weights)."""
    cfg = light_cfg("MODEL.ROI_HEADS.NAME", "ThinRes5ROIHeads")
    res5 = build_model(cfg).roi_heads.res5
    r = cfg.MODEL.RESNETS
    assert len(res5) == 3
    assert res5[1].conv2.out_channels == r.NUM_GROUPS * r.WIDTH_PER_GROUP * 8
    assert res5[2].conv3.out_channels == r.RES2_OUT_CHANNELS * 8
    assert type(res5[0].conv1.norm).__name__ == "FrozenBatchNorm2d" == type(res5[0].shortcut.norm).__name__
    trainable = build_model(light_cfg("MODEL.ROI_HEADS.NAME", "ThinRes5ROIHeads", "MODEL.LIGHT_HEAD.RES5_NORM", "BN"))
    assert {type(m.norm).__name__ for m in trainable.roi_heads.res5.modules() if hasattr(m, "norm")} == {"BatchNorm2d"}


@pytest.mark.parametrize("opts,message", [
    (("MODEL.LIGHT_HEAD.RES5_NUM_BLOCKS", 0), r"MODEL.LIGHT_HEAD.RES5_NUM_BLOCKS=0: expected a positive integer"),
    (("MODEL.LIGHT_HEAD.RES5_OUT_CHANNELS", -8), r"MODEL.LIGHT_HEAD.RES5_OUT_CHANNELS=-8"),
    (("MODEL.RESNETS.NUM_GROUPS", 4, "MODEL.RESNETS.WIDTH_PER_GROUP", 1, "MODEL.LIGHT_HEAD.RES5_BOTTLENECK_CHANNELS", 6),
     r"RES5_BOTTLENECK_CHANNELS=6: must be a multiple of MODEL.RESNETS.NUM_GROUPS=4"),
])
def test_invalid_res5_subnet_config_names_key(light_cfg, opts, message):
    with pytest.raises(ValueError, match=message):
        build_model(light_cfg("MODEL.ROI_HEADS.NAME", "ThinRes5ROIHeads", *opts))


def test_training_forward_shares_roi_features_between_box_and_mask(light_cfg, box_mask_targets):
    model = build_model(light_cfg()).train()
    subnet_out, mask_in = [], []
    model.roi_heads.subnet.register_forward_hook(lambda m, i, o: subnet_out.append(o))
    model.roi_heads.mask_head.register_forward_hook(lambda m, args, o: mask_in.append(args[0]))
    with EventStorage():
        model(_batch(box_mask_targets))
    assert len(subnet_out) == 1 and len(mask_in) == 1  # the subnet ran once
    rois, fg = subnet_out[0], mask_in[0]
    # the mask head read a non-empty proper subset of the subnet's rows (the foreground ones)
    assert 0 < len(fg) < len(rois)
    same_row = (fg[:, None] == rois[None]).flatten(2).all(dim=2)
    assert same_row.any(dim=1).all()


def test_parameter_counts_of_r50_c4_and_framework1_are_pinned(config_file):
    """Pinned counts (80 COCO classes): a silent change to a layer fails here. Framework 1 has
    38.5% fewer parameters than Mask R-CNN R50-C4 (paper Table I: about 40%)."""
    def build(path):
        return build_model(load_config(config_file(f"COCO-InstanceSegmentation/{path}"), ["MODEL.DEVICE", "cpu"]))

    def count(module):
        return sum(p.numel() for p in module.parameters())

    assert count(build("mask_rcnn_R_50_C4_1x.yaml")) == 35_909_612
    framework1 = build("light_mask_rcnn_R_50_C4_framework1_1x.yaml")
    assert count(framework1) == 22_090_476
    # Written out from the paper (Sec. III-B, III-C), independently of the code:
    k, c4, thin, c1, c2 = 15, 1024, 256, 256, 512
    branch = (c4 * k * thin + thin) + (thin * k * thin + thin)  # k x 1 then 1 x k, with biases
    assert count(framework1.backbone) - count(framework1.backbone.bottom_up) == 2 * branch
    assert count(framework1.roi_heads.subnet) == (thin * 9 * c1 + c1) + (c1 * 9 * c2 + c2)
    vector = c2 * 2 * 2  # 7x7/7 pooling of 14 x 14 -> 2 x 2 x C_out
    assert count(framework1.roi_heads.box_predictor) == (vector + 1) * 81 + (vector + 1) * 80 * 4


# ------------------------------------------------------------------------------------------------
# Pinned regression test of LightRCNNROIHeads (detectron2's tests/modeling/test_roi_heads.py idea):
# a seeded build, fixed features, proposals and ground truth; the losses and the top detections
# must not change unless the forward logic does.
# ------------------------------------------------------------------------------------------------
IMAGE_H, IMAGE_W = 75, 101


def _proposals(generator, gt_boxes, num_random):
    """Proposals of one image: the GT boxes shifted by 3 px, then ``num_random`` random boxes."""
    jitter = torch.tensor(gt_boxes, dtype=torch.float32).reshape(-1, 4) + torch.tensor([3.0, -3.0, 3.0, 3.0])
    xy = torch.rand(num_random, 2, generator=generator) * torch.tensor([IMAGE_W * 0.7, IMAGE_H * 0.7])
    wh = 8 + torch.rand(num_random, 2, generator=generator) * 30
    boxes = torch.cat([jitter, torch.cat([xy, xy + wh], dim=1)]).clamp(min=0)
    boxes[:, 2].clamp_(max=IMAGE_W)
    boxes[:, 3].clamp_(max=IMAGE_H)
    return Instances((IMAGE_H, IMAGE_W), proposal_boxes=Boxes(boxes),
                     objectness_logits=torch.linspace(3, -3, len(boxes)))


def _pinned_roi_heads_run(cfg, box_mask_targets):
    """Losses and inference output of a seeded LightRCNNROIHeads on fixed inputs."""
    torch.manual_seed(121)
    roi_heads = build_roi_heads(cfg, {"thin": ShapeSpec(channels=16, stride=16)})
    # The default predictor init (std 0.01 / 0.001) leaves the losses at ~ln(4), ~ln(2) whatever the
    # features; wider weights make them depend on the pooled subnet features.
    with torch.no_grad():
        for layer in (roi_heads.box_predictor.cls_score, roi_heads.box_predictor.bbox_pred,
                      roi_heads.mask_head.predictor):
            layer.weight.normal_(std=0.05)
    features = {"thin": torch.rand(2, 16, 5, 7) * 2}  # ceil(75 / 16) x ceil(101 / 16)
    gt = [[[10.0, 8.0, 60.0, 50.0], [40.0, 30.0, 95.0, 70.0]], [[5.0, 20.0, 45.0, 66.0]]]
    targets = [box_mask_targets(IMAGE_H, IMAGE_W, gt[0], [0, 2]), box_mask_targets(IMAGE_H, IMAGE_W, gt[1], [1])]
    generator = torch.Generator().manual_seed(7)
    proposals = [_proposals(generator, boxes, 14) for boxes in gt]

    roi_heads.train()
    with EventStorage():
        _, losses = roi_heads(None, features, proposals, targets)
    roi_heads.eval()
    with torch.no_grad():
        detections, _ = roi_heads(None, features, proposals)
    return {k: v.item() for k, v in losses.items()}, detections


@pytest.mark.parametrize("separable", [False, True])
def test_light_roi_heads_pinned_losses(light_cfg, box_mask_targets, single_thread, separable):
    # The separable (matrix-product) ROIAlign trains to the same losses as torchvision's kernel.
    losses, _ = _pinned_roi_heads_run(light_cfg("MODEL.LIGHT_HEAD.SEPARABLE_ROI_ALIGN", separable), box_mask_targets)
    expected = {"loss_cls": 1.6195, "loss_box_reg": 0.2948, "loss_mask": 0.7096}
    assert set(losses) == set(expected)
    for name, value in expected.items():
        assert losses[name] == pytest.approx(value, abs=1e-4), (name, losses)


@pytest.mark.parametrize("separable", [False, True])
def test_slim_res5_roi_heads_pinned_losses(light_cfg, box_mask_targets, single_thread, separable):
    losses, detections = _pinned_roi_heads_run(
        light_cfg(*SLIM_RES5, "MODEL.LIGHT_HEAD.SEPARABLE_ROI_ALIGN", separable), box_mask_targets)
    expected = {"loss_cls": 1.4099, "loss_box_reg": 0.2339, "loss_mask": 0.6768}
    assert set(losses) == set(expected)
    for name, value in expected.items():
        assert losses[name] == pytest.approx(value, abs=1e-4), (name, losses)
    assert detections[0].pred_masks.shape[1:] == (1, 14, 14)  # res5's 7x7 -> one 2x deconvolution


def test_light_roi_heads_pinned_detections(light_cfg, box_mask_targets, single_thread):
    _, detections = _pinned_roi_heads_run(light_cfg(), box_mask_targets)
    assert [len(d) for d in detections] == [48, 45]
    top = detections[0][:3]
    torch.testing.assert_close(top.scores, torch.tensor([0.5099, 0.5072, 0.4935]), rtol=0, atol=1e-4)
    assert top.pred_classes.tolist() == [0, 0, 0]
    torch.testing.assert_close(top.pred_boxes.tensor, torch.tensor([
        [39.9854, 10.4189, 71.3286, 22.1028],
        [22.1875, 10.8049, 52.1854, 26.9132],
        [61.3322, 28.9095, 81.0676, 43.0154],
    ]), rtol=0, atol=1e-3)
    # mask probabilities of the top detection (28 x 28, its predicted class)
    assert top.pred_masks.shape == (3, 1, 28, 28)
    assert top.pred_masks[0].mean().item() == pytest.approx(0.4874, abs=1e-4)


@pytest.mark.parametrize("roi_heads", ["LightRCNNROIHeads", "ThinRes5ROIHeads"])
def test_separable_roi_align_trains_the_same_model(light_cfg, box_mask_targets, single_thread, roi_heads):
    """MODEL.LIGHT_HEAD.SEPARABLE_ROI_ALIGN swaps the pooler of both light ROI heads; same weights,
    same batch -> the same losses and the same gradients up to float rounding."""
    runs = []
    for separable in (False, True):
        torch.manual_seed(0)
        model = build_model(light_cfg("MODEL.ROI_HEADS.NAME", roi_heads, "MODEL.LIGHT_HEAD.SEPARABLE_ROI_ALIGN", separable))
        assert (type(model.roi_heads.pooler).__name__ == "SeparableROIPooler") == separable
        model.train()
        torch.manual_seed(1)
        with EventStorage():
            losses = model(_batch(box_mask_targets))
        sum(losses.values()).backward()
        runs.append(({k: v.item() for k, v in losses.items()},
                     model.backbone.branch_a[0].weight.grad.clone()))
    (plain, grad_plain), (separable, grad_separable) = runs
    assert plain.keys() == separable.keys()
    for k in plain:
        assert separable[k] == pytest.approx(plain[k], abs=1e-5), k
    torch.testing.assert_close(grad_separable, grad_plain, rtol=1e-3, atol=1e-6)
