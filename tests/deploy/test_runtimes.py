"""Runtimes and load_predictor (one predictor for every artifact): formats recognised by content, strict
checkpoints, DefaultPredictor's pre-processing, batches, ONNX Runtime threads, clear errors."""
import os
import pickle

import numpy as np
import onnx
import pytest
import torch
from detectron2.engine import DefaultPredictor

from light_rcnn import load_config
from light_rcnn.deploy import detect_format, load_predictor
from light_rcnn.deploy.runtimes import onnx_session

FRAMEWORK1 = "shapes/light_mask_rcnn_framework1_shapes.yaml"


def _weights(opts):
    return opts[opts.index("MODEL.WEIGHTS") + 1]


def test_formats_are_recognised_by_content(trained_model, exported, tmp_path):
    _, opts = trained_model()
    assert detect_format(_weights(opts)) == "eager"
    (ts,) = exported("torchscript")
    (ox,) = exported("onnx")
    assert detect_format(ts.path) == "torchscript" and detect_format(ox.path) == "onnx"
    # Extensions do not decide: a TorchScript file named .pt, a checkpoint pickled as .pkl.
    renamed = tmp_path / "model.pt"
    renamed.write_bytes(open(ts.path, "rb").read())
    assert detect_format(str(renamed)) == "torchscript"
    pkl = tmp_path / "model.pkl"
    with open(pkl, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in torch.load(_weights(opts))["model"].items()}}, f)
    assert detect_format(str(pkl)) == "eager"


def test_missing_and_foreign_files(tmp_path, config_file):
    with pytest.raises(FileNotFoundError, match=r"model file '.*nope\.onnx': no such file"):
        load_predictor(str(tmp_path / "nope.onnx"))
    foreign = tmp_path / "notes.onnx"
    foreign.write_text("this is not a model\n")
    with pytest.raises(ValueError, match=r"model file '.*notes\.onnx' is not a model light_rcnn can load"):
        load_predictor(str(foreign))
    image = tmp_path / "image.pth"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(ValueError, match=r"image\.pth' is not a model light_rcnn can load"):
        load_predictor(str(image), config_file(FRAMEWORK1))


def test_onnx_of_another_kind_is_refused(tmp_path):
    other = tmp_path / "linear.onnx"
    torch.onnx.export(torch.nn.Linear(3, 2), (torch.rand(1, 3),), str(other), input_names=["x"], dynamo=False)
    (tmp_path / "config.yaml").write_text("VERSION: 2\n")
    with pytest.raises(ValueError, match=r"linear\.onnx': inputs \['x'\], expected \['image'\]"):
        load_predictor(str(other))


def test_config_must_match_the_checkpoint(trained_model, config_file, deploy_opts):
    _, opts = trained_model()
    weights = _weights(opts)
    with pytest.raises(ValueError, match=r"model\.pth' is an eager checkpoint: pass the config"):
        load_predictor(weights)
    # Another architecture: keys missing and unexpected, named.
    with pytest.raises(ValueError, match=r"does not match the model .*missing in the checkpoint: "
                                         r"backbone\.bottom_up\.stage2.*not in the model: backbone\.bottom_up\.res2"):
        load_predictor(weights, config_file("shapes/light_mask_rcnn_fd_mobilenet_shapes.yaml"), deploy_opts)
    # Same architecture, other class count: shapes named.
    with pytest.raises(ValueError, match=r"shape mismatch .*roi_heads\.box_predictor\.cls_score\.weight \(5, 512\) "
                                         r"vs \(8, 512\)"):
        load_predictor(weights, config_file(FRAMEWORK1), deploy_opts + ["MODEL.ROI_HEADS.NUM_CLASSES", 7])


def test_exported_artifact_config_and_device(exported, tmp_path):
    (ox,) = exported("onnx")
    lonely = tmp_path / "model.onnx"
    lonely.write_bytes(open(ox.path, "rb").read())
    with pytest.raises(FileNotFoundError, match=r"has no config\.yaml beside it"):
        load_predictor(str(lonely))
    with pytest.raises(ValueError, match=r"MODEL\.ROI_HEADS\.SCORE_THRESH_TEST is baked into it"):
        load_predictor(ox.path, opts=["MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.5])
    with pytest.raises(ValueError, match=r"traced for and run on the CPU; device='cuda'"):
        load_predictor(ox.path, device="cuda")


def test_eager_matches_default_predictor_and_batches(trained_model, check_image):
    path, opts = trained_model()
    predictor = load_predictor(_weights(opts), path, opts)
    cfg = load_config(path, opts)
    cfg.MODEL.WEIGHTS = _weights(opts)
    reference = DefaultPredictor(cfg)
    images = [check_image(0), check_image(1), check_image(2)[:, :48], check_image(0)[:40]]
    assert images[0].shape[:2] != images[1].shape[:2]
    batch = predictor(images)  # equal sizes run as one batch, others alone
    for image, got in zip(images, batch):
        want = reference(image)["instances"]
        assert got.image_size == image.shape[:2] and len(got) == len(want) > 0
        assert torch.allclose(got.pred_boxes.tensor, want.pred_boxes.tensor, atol=1e-4)
        assert torch.equal(got.pred_classes, want.pred_classes) and torch.equal(got.pred_masks, want.pred_masks)
    assert (predictor.format, predictor.precision) == ("eager", "fp32")
    assert predictor.cfg.MODEL.WEIGHTS == _weights(opts)
    # RGB models get the channels flipped exactly as DefaultPredictor does.
    rgb = load_predictor(_weights(opts), path, opts + ["INPUT.FORMAT", "RGB"])
    assert torch.equal(rgb.preprocess(images[0]), predictor.preprocess(images[0][:, :, ::-1]))


def test_bad_images_are_refused(trained_model):
    path, opts = trained_model()
    predictor = load_predictor(_weights(opts), path, opts)
    with pytest.raises(ValueError, match=r"image 1: expected a uint8 numpy array of shape \(H, W, 3\) in BGR order, "
                                         r"got ndarray \(4, 4\) uint8"):
        predictor([np.zeros((8, 8, 3), np.uint8), np.zeros((4, 4), np.uint8)])
    with pytest.raises(ValueError, match=r"image 0: .*got ndarray \(4, 4, 3\) float32"):
        predictor([np.zeros((4, 4, 3), np.float32)])


def test_onnx_runtime_threads(exported, check_image):
    (ox,) = exported("onnx")
    assert onnx_session(ox.path, threads=2).get_session_options().intra_op_num_threads == 2
    predictor = load_predictor(ox.path, threads=1)
    assert predictor.session.get_session_options().intra_op_num_threads == 1
    assert predictor.session.get_providers() == ["CPUExecutionProvider"]
    assert predictor.format == "onnx" and predictor.precision == "fp32"
    out = predictor(check_image(0))  # a single array is accepted too
    assert len(out) == 1 and len(out[0]) > 0
    assert all(n.op_type not in ("QuantizeLinear", "DequantizeLinear") for n in onnx.load(ox.path).graph.node)


def test_torchscript_threads_and_repr(exported):
    (ts,) = exported("torchscript")
    assert torch.get_num_threads() == 1  # the deploy tests' default (conftest)
    predictor = load_predictor(ts.path, threads=2)
    assert torch.get_num_threads() == 2
    assert repr(predictor) == f"TorchScriptPredictor(format='torchscript', precision='fp32', model={ts.path!r})"
    assert os.path.dirname(ts.path) != ""
