"""Scripting (the light heads are scriptable too): detectron2's scripting export
(``scripting_with_instances``, as ``tools/deploy/export_model.py --export-method scripting``) compiles
one config of each distinct architecture, and the scripted model's ``inference`` gives eager's
boxes, classes, scores and mask probabilities; the mobile backbones (classifier form included) and
the decomposed convs script on their own."""
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.export import scripting_with_instances
from detectron2.structures import Boxes
from torch import nn

from light_rcnn import build_model, load_config
from light_rcnn.compression.decomposition.modules import make_decomposed_conv
from light_rcnn.modeling.backbone import DilatedMobileNetV2, FDMobileNet, MobileNetV1

# The Instances fields detectron2's tools/deploy/export_model.py declares for (Mask) R-CNN.
FIELDS = {"proposal_boxes": Boxes, "objectness_logits": torch.Tensor, "pred_boxes": Boxes,
          "scores": torch.Tensor, "pred_classes": torch.Tensor, "pred_masks": torch.Tensor}

# Non-shapes configs run on the CPU with 4 classes and trainable BN (the test weights estimate BN
# statistics, see tests/deploy/conftest.py), as in test_export.py.
COCO_EXTRA = ("MODEL.DEVICE", "cpu", "MODEL.RESNETS.NORM", "BN", "MODEL.MOBILENET.NORM", "BN",
              "MODEL.ROI_HEADS.NUM_CLASSES", 4)

# One config per distinct architecture (the other configs differ from one of these in widths,
# schedules or data). Sizes are the deploy tests' tiny ones (tiny ResNet: RES2_OUT_CHANNELS 16).
SCRIPTING_CONFIGS = [
    ("shapes/mask_rcnn_R_50_C4_shapes.yaml", ()),  # detectron2's R50-C4 baseline
    ("shapes/light_mask_rcnn_framework1_shapes.yaml", ()),  # neck + redesigned subnet
    ("shapes/light_mask_rcnn_fd_mobilenet_shapes.yaml", ()),  # FD-MobileNet
    ("shapes/light_mask_rcnn_dilated_mobilenetv2_shapes.yaml", ()),  # pyramid depthwise-dilated V2
    ("shapes/light_mask_rcnn_decomposed_shapes.yaml", ()),  # DecomposedGeneralizedRCNN
    ("shapes/light_mask_rcnn_fd_mobilenet_decomposed_shapes.yaml", ()),  # decomposed mobile
    # Table II "C5" with SLK.OUT_CHANNELS == RES2_OUT_CHANNELS * 8 (128 = 16 * 8): the first res5
    # block keeps the channels but halves the resolution (needs its strided projection shortcut).
    ("COCO-InstanceSegmentation/ablation/slk128_c5.yaml", COCO_EXTRA),
    ("PascalVOC-Detection/faster_rcnn_mobilenet_v1_0.5x.yaml", COCO_EXTRA),  # MobileNet v1, no masks
]


def _load(trained_model, config, extra):
    path, opts = trained_model(config, extra)
    cfg = load_config(path, opts)
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return cfg, model.eval()


@pytest.mark.parametrize("config,extra", SCRIPTING_CONFIGS, ids=[c for c, _ in SCRIPTING_CONFIGS])
def test_scripted_model_matches_eager(config, extra, trained_model):
    cfg, model = _load(trained_model, config, extra)
    fields = {k: v for k, v in FIELDS.items() if cfg.MODEL.MASK_ON or k != "pred_masks"}
    scripted = scripting_with_instances(model, fields)
    torch.manual_seed(0)
    inputs = [{"image": torch.randint(0, 256, (3, 64, 72)).float()}]
    with torch.no_grad():
        expected = model.inference(inputs, do_postprocess=False)[0]
        got = scripted.inference(inputs, do_postprocess=False)[0]
    assert len(expected) > 0, "nothing to compare: the test model detects nothing"
    assert len(got) == len(expected)
    assert torch.allclose(got.pred_boxes.tensor, expected.pred_boxes.tensor, atol=1e-4)
    assert torch.equal(got.pred_classes, expected.pred_classes)
    assert torch.allclose(got.scores, expected.scores, atol=1e-5)
    if cfg.MODEL.MASK_ON:
        assert got.pred_masks.shape == expected.pred_masks.shape
        assert torch.allclose(got.pred_masks, expected.pred_masks, atol=1e-4)


def test_c5_first_block_projects_its_strided_shortcut(trained_model):
    _, model = _load(trained_model, *SCRIPTING_CONFIGS[6])
    first = model.roi_heads.res5[0]
    assert first.in_channels == first.out_channels == 128 and first.stride == 2
    assert first.shortcut is not None and tuple(first.shortcut.stride) == (2, 2)


@pytest.mark.parametrize("backbone", [
    lambda: FDMobileNet(0.25, num_classes=5),
    lambda: MobileNetV1(0.25, num_classes=5, out_features=["stage3", "linear"]),
    lambda: DilatedMobileNetV2(0.35, num_classes=5, dilation_rates=(1, 2), hierarchical_fusion=True),
], ids=["fd_mobilenet", "mobilenet_v1", "dilated_mobilenet_v2_fusion"])
def test_classifier_backbones_script(backbone):
    torch.manual_seed(0)
    model = backbone().eval()
    scripted = torch.jit.script(model)
    x = torch.rand(2, 3, 48, 40)
    with torch.no_grad():
        expected, got = model(x), scripted(x)
    assert sorted(got) == sorted(expected) and got["linear"].shape == (2, 5)
    for name in expected:
        assert torch.allclose(got[name], expected[name], atol=1e-5), name
    with pytest.raises(torch.jit.Error, match=r"expected a \(N, C, H, W\) tensor, got shape \[3, 48, 40\]"):
        scripted(x[0])


@pytest.mark.parametrize("method", ["depthwise", "channel"])
def test_decomposed_convs_script(method):
    from detectron2.layers import Conv2d

    torch.manual_seed(0)
    conv = Conv2d(6, 8, 3, stride=2, padding=1, bias=False, norm=nn.BatchNorm2d(8), activation=nn.ReLU())
    module = make_decomposed_conv(conv, method, rank_ratio=0.5).eval()
    scripted = torch.jit.script(module)
    x = torch.rand(2, 6, 9, 11)
    assert torch.allclose(scripted(x), module(x), atol=1e-6) and scripted(x).shape == (2, 8, 5, 6)
    assert (module.in_channels, module.out_channels) == (6, 8)  # eager properties unchanged
