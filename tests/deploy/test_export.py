"""Export (tools/export_model.py): TorchScript and ONNX artifacts of tiny shapes models give eager's
boxes, classes, scores and pasted masks through load_predictor; ONNX has dynamic height/width and
survives zero detections; the light heads script; bad requests fail before anything is written."""
import os

import numpy as np
import onnx
import pytest
import torch
from detectron2.export import scripting_with_instances
from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes

from light_rcnn import build_model, load_config
from light_rcnn.deploy import compare_predictions, export_model, load_predictor
from light_rcnn.deploy.export import within_tolerance
from light_rcnn.modeling.light_roi_heads import LightRCNNSubnetHead

FRAMEWORK1 = "shapes/light_mask_rcnn_framework1_shapes.yaml"


def _assert_parity(reference, outputs):
    parity = compare_predictions(reference, outputs)
    assert parity["detections_eager"] > 0, "nothing to compare: the test model detects nothing"
    assert within_tolerance(parity), parity
    return parity


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_artifact_matches_eager_through_load_predictor(fmt, exported, trained_model, check_image):
    (artifact,) = exported(fmt)
    # The export-time check ran and passed (check image, its crop, a blank image).
    assert artifact.passed is True and artifact.parity["detections_eager"] > 0
    assert artifact.format == fmt and artifact.precision == "fp32"
    assert os.path.basename(artifact.path) == {"torchscript": "model.ts", "onnx": "model.onnx"}[fmt]
    assert os.path.isfile(os.path.join(os.path.dirname(artifact.path), "config.yaml"))

    path, opts = trained_model()
    eager = load_predictor(opts[opts.index("MODEL.WEIGHTS") + 1], path, opts)
    deployed = load_predictor(artifact.path, threads=1)  # config.yaml beside it
    assert (eager.format, deployed.format) == ("eager", fmt)
    assert deployed.cfg.DATASETS.TEST == ("shapes_val",)
    # Images of other sizes than the traced one (dynamic height and width), several per call.
    images = [check_image(1), check_image(2), np.ascontiguousarray(check_image(3)[:40])]
    expected, got = eager(images), deployed(images)
    _assert_parity(expected, got)
    for image, inst, ref in zip(images, got, expected):
        assert inst.image_size == image.shape[:2]
        assert inst.pred_masks.dtype == torch.bool and inst.pred_masks.shape[1:] == image.shape[:2]
        assert inst.pred_classes.dtype == torch.int64 and isinstance(inst.pred_boxes, Boxes)
        assert torch.equal(inst.pred_classes, ref.pred_classes)


def test_onnx_graph_has_dynamic_size_and_mask_output(exported):
    (artifact,) = exported("onnx")
    model = onnx.load(artifact.path)
    (inp,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.name == "image" and dims == [3, "height", "width"]
    assert [o.name for o in model.graph.output] == ["boxes", "scores", "classes", "mask_probs"]
    mask_dims = [d.dim_param or d.dim_value for d in model.graph.output[3].type.tensor_type.shape.dim]
    assert mask_dims[1:] == [1, 28, 28]
    assert model.opset_import[0].version == 17
    assert {"RoiAlign", "NonMaxSuppression"} <= _op_types(model.graph)


def _op_types(graph):
    """Op types of ``graph`` and of its subgraphs (torchvision's batched_nms is scripted into If nodes)."""
    ops = set()
    for node in graph.node:
        ops.add(node.op_type)
        for attr in node.attribute:
            for sub in list(attr.g.node and [attr.g]) + list(attr.graphs):
                ops |= _op_types(sub)
    return ops


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_zero_detections(fmt, exported, check_image):
    # A score threshold nothing passes: the graph is traced with, and returns, zero detections.
    (artifact,) = exported(fmt, extra_opts=("MODEL.ROI_HEADS.SCORE_THRESH_TEST", 1.0))
    assert artifact.passed is True and artifact.parity["detections_artifact"] == 0
    image = check_image(0)
    blank = np.full((50, 70, 3), 255, np.uint8)
    out = load_predictor(artifact.path, threads=1)([image, blank])
    assert [len(o) for o in out] == [0, 0]
    assert tuple(out[1].pred_masks.shape) == (0, 50, 70) and tuple(out[1].pred_boxes.tensor.shape) == (0, 4)


# One config per distinct exported graph (the other configs under configs/ differ from one of these
# in widths, schedules or data only): backbones, necks, ROI heads, hooks, mask on/off.
EXPORT_CONFIGS = [
    "shapes/light_mask_rcnn_fd_mobilenet_shapes.yaml",  # FD-MobileNet + neck + redesigned subnet
    "shapes/light_mask_rcnn_decomposed_shapes.yaml",  # hooked: DecomposedGeneralizedRCNN
    "shapes/mask_rcnn_R_50_C4_shapes.yaml",  # detectron2's R50-C4 baseline (Res5ROIHeads)
    "shapes/light_mask_rcnn_dilated_mobilenetv2_shapes.yaml",  # pyramid depthwise-dilated MobileNetV2
    "shapes/light_mask_rcnn_framework1_iou_loss_shapes.yaml",  # IoUMaskRCNNConvUpsampleHead
    "COCO-InstanceSegmentation/light_mask_rcnn_R_50_C4_framework2_1x.yaml",  # framework 2, norm-free neck
    "COCO-InstanceSegmentation/ablation/slk64_c5.yaml",  # Table II "C5": ThinRes5ROIHeads
    "COCO-InstanceSegmentation/ablation/cout256_pool14.yaml",  # Table III: 14x14 box pooling
    "COCO-InstanceSegmentation/light_mask_rcnn_fd_mobilenet_decomposed_1x.yaml",  # decomposed mobile
    "PascalVOC-Detection/faster_rcnn_mobilenet_v1_0.5x.yaml",  # detection only (no mask output)
    "KITTI/faster_rcnn_dilated_mobilenetv2_layer17.yaml",
]


@pytest.mark.parametrize("config", EXPORT_CONFIGS)
def test_configs_export_to_onnx_and_match_eager(config, exported):
    # Tiny sizes (deploy_opts), the CPU, shapes images for the export-time check; trainable BN
    # instead of FrozenBN (the test model's BN statistics are estimated on noise images).
    extra = ("MODEL.DEVICE", "cpu", "DATASETS.TRAIN", ("shapes_train",), "DATASETS.TEST", ("shapes_val",))
    if not config.startswith("shapes/"):
        extra += ("MODEL.RESNETS.NORM", "BN", "MODEL.MOBILENET.NORM", "BN", "MODEL.ROI_HEADS.NUM_CLASSES", 4)
    (artifact,) = exported("onnx", config=config, extra_opts=extra)
    assert artifact.passed is True, artifact.summary()
    assert artifact.parity["detections_eager"] > 0
    outputs = [o.name for o in onnx.load(artifact.path).graph.output]
    mask_on = load_predictor(artifact.path, threads=1).cfg.MODEL.MASK_ON
    assert outputs == ["boxes", "scores", "classes"] + (["mask_probs"] if mask_on else [])


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_slim_res5_subnet_exports_with_masks(fmt, exported):
    """The slim res5 subnet (ThinRes5ROIHeads with RES5_* narrowed) with the IoU-loss mask head,
    in both formats: parity with eager, masks of res5's 7x7 -> 14x14 deconvolution."""
    config = "shapes/light_mask_rcnn_slim_res5_iou_loss_shapes.yaml"
    (artifact,) = exported(fmt, config=config, extra_opts=("MODEL.LIGHT_HEAD.RES5_BOTTLENECK_CHANNELS", 8))
    assert artifact.passed is True and artifact.parity["detections_eager"] > 0, artifact.summary()
    deployed = load_predictor(artifact.path, threads=1)
    assert deployed.cfg.MODEL.LIGHT_HEAD.RES5_BOTTLENECK_CHANNELS == 8
    if fmt == "onnx":
        mask = [o for o in onnx.load(artifact.path).graph.output if o.name == "mask_probs"]
        assert [d.dim_param or d.dim_value for d in mask[0].type.tensor_type.shape.dim][1:] == [1, 14, 14]


def test_subnet_head_and_light_model_script(config_file, tiny_resnet, tiny_sizes):
    head = LightRCNNSubnetHead(ShapeSpec(channels=8, height=14, width=14), conv_dims=[8, 16], conv_norm="BN",
                               box_pool_size=7).eval()
    scripted = torch.jit.script(head)
    x = torch.rand(3, 8, 14, 14)
    assert torch.equal(scripted(x), head(x)) and tuple(scripted(x).shape) == (3, 16, 14, 14)
    assert head.conv_output_shape.channels == 16 and head.output_shape.channels == 16 * 4  # eager unchanged

    # detectron2's scripting export (tools/deploy/export_model.py --export-method scripting).
    cfg = load_config(config_file(FRAMEWORK1), tiny_resnet + tiny_sizes + ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    fields = {"proposal_boxes": Boxes, "objectness_logits": torch.Tensor, "pred_boxes": Boxes,
              "scores": torch.Tensor, "pred_classes": torch.Tensor, "pred_masks": torch.Tensor}
    scripted_model = scripting_with_instances(model, fields)
    inputs = [{"image": torch.rand(3, 64, 80) * 255}]
    with torch.no_grad():
        a = model.inference(inputs, do_postprocess=False)[0]
        b = scripted_model.inference(inputs, do_postprocess=False)[0]
    assert len(a) == len(b) > 0
    assert torch.allclose(a.pred_boxes.tensor, b.pred_boxes.tensor) and torch.allclose(a.pred_masks, b.pred_masks)


def test_bad_requests_fail_before_writing(trained_model, tmp_path, config_file):
    path, opts = trained_model()
    cfg = load_config(path, opts)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"--format 'tflite' is not supported; choose one of "
                                         r"\['onnx', 'torchscript'\]"):
        export_model(cfg, "tflite", str(out))
    with pytest.raises(ValueError, match="--int8 quantizes an ONNX model"):
        export_model(cfg, "torchscript", str(out), int8=True)
    with pytest.raises(ValueError, match="MODEL.WEIGHTS is empty"):
        export_model(load_config(path, opts[:-2]), "onnx", str(out))
    assert not out.exists()
    out.mkdir()
    (out / "model.onnx").write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="model.onnx already exist"):
        export_model(cfg, "onnx", str(out))
    assert (out / "model.onnx").read_bytes() == b"mine" and sorted(os.listdir(out)) == ["model.onnx"]
    (out / "config.yaml").write_text("MODEL:\n  DEVICE: cpu\n")
    with pytest.raises(FileExistsError, match="config.yaml exists and holds another config"):
        export_model(cfg, "torchscript", str(out), check_images=[np.zeros((64, 64, 3), np.uint8)])
    assert not (out / "model.ts").exists()


def test_export_tool(load_tool, trained_model, check_image, tmp_path, capsys):
    tool = load_tool("export_model")
    path, opts = trained_model()
    opts = [str(o) for o in opts]  # as on a command line
    image = tmp_path / "check.png"
    import cv2

    cv2.imwrite(str(image), check_image(0))
    out = tmp_path / "ts"
    assert tool.main(["--config-file", path, "--format", "torchscript", "--output", str(out),
                      "--check-image", str(image)] + opts) == 0
    printed = capsys.readouterr().out
    assert "within tolerance" in printed and "box 0.05 px, score 0.001, mask IoU >= 0.99" in printed
    assert sorted(os.listdir(out)) == ["config.yaml", "model.ts"]
    with pytest.raises(SystemExit, match="--format 'tflite' is not supported"):
        tool.main(["--config-file", path, "--format", "tflite", "--output", str(tmp_path / "x")] + opts)
    with pytest.raises(SystemExit, match="nope.png' is not a readable image"):
        tool.main(["--config-file", path, "--format", "onnx", "--output", str(tmp_path / "y"),
                   "--check-image", str(tmp_path / "nope.png")] + opts)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
