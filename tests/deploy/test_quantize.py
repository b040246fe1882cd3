"""int8 static quantization (tools/export_model.py --int8): calibrated on training images through the test-time
resize, QDQ around the convs only (RoiAlign, NMS and box arithmetic stay float), smaller, and runs
end to end through load_predictor with finite outputs."""
import os

import numpy as np
import onnx
import pytest
import torch

from light_rcnn import load_config
from light_rcnn.deploy import load_predictor
from light_rcnn.deploy.quantize import QUANTIZED_OPS, calibration_inputs, quantize_onnx


def _op_inputs(model):
    """``{op_type: set of producer op types of its inputs}`` over the main graph."""
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}
    found = {}
    for n in model.graph.node:
        found.setdefault(n.op_type, set()).update(
            "initializer" if i in inits else producer.get(i, "input") for i in n.input if i)
    return found


def test_int8_export_is_smaller_quantized_and_runs(exported, check_image):
    fp32, int8 = exported("onnx", int8=True)
    assert (fp32.precision, int8.precision) == ("fp32", "int8")
    assert os.path.basename(int8.path) == "model_int8.onnx" and os.path.dirname(int8.path) == os.path.dirname(fp32.path)
    assert int8.passed is None  # reported, not held to the fp32 tolerances
    assert int8.size_bytes < 0.5 * fp32.size_bytes

    model = onnx.load(int8.path)
    ops = {n.op_type for n in model.graph.node}
    # QDQ: the float ops stay (RoiAlign, box decoding, ...); no integer-only op replaces one.
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "ConvTranspose", "RoiAlign"} <= ops
    assert not ops & {"QLinearConv", "ConvInteger", "MatMulInteger", "QLinearMatMul"}
    assert ops - {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in onnx.load(fp32.path).graph.node}
    # Every conv reads dequantized int8 weights and activations.
    assert _op_inputs(model)["Conv"] == {"DequantizeLinear"}
    weights = {i.name: i for i in model.graph.initializer}
    # int8 weights are dequantized for the quantized op types only.
    consumers = {i: n.op_type for n in model.graph.node for i in n.input}
    int8_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in weights
               and weights[n.input[0]].data_type == onnx.TensorProto.INT8]
    assert int8_dq and {consumers[n.output[0]] for n in int8_dq} <= set(QUANTIZED_OPS)
    int8_weights = [w for w in weights.values() if w.data_type == onnx.TensorProto.INT8]
    assert int8_weights and any(len(w.dims) == 4 for w in int8_weights)
    # Per-channel: conv weight scales are vectors, one per output channel.
    scales = [weights[n.input[1]] for n in model.graph.node
              if n.op_type == "DequantizeLinear" and n.input[0] in weights and weights[n.input[0]].data_type ==
              onnx.TensorProto.INT8 and len(weights[n.input[0]].dims) == 4]
    assert scales and all(len(s.dims) == 1 and s.dims[0] > 1 for s in scales)

    predictor = load_predictor(int8.path, threads=1)
    assert predictor.format == "onnx" and predictor.precision == "int8"
    images = [check_image(0), np.full((40, 56, 3), 200, np.uint8)]
    for image, out in zip(images, predictor(images)):
        assert out.image_size == image.shape[:2]
        assert torch.isfinite(out.pred_boxes.tensor).all() and torch.isfinite(out.scores).all()
        assert out.pred_masks.shape[1:] == image.shape[:2] and out.pred_masks.dtype == torch.bool
    assert len(predictor([images[0]])[0]) > 0


def test_calibration_inputs_are_training_images_at_test_size(trained_model):
    path, opts = trained_model()
    cfg = load_config(path, opts + ["INPUT.MIN_SIZE_TEST", 80, "INPUT.MAX_SIZE_TEST", 120])
    inputs = calibration_inputs(cfg, 3)
    assert len(inputs) == 3
    # The tiny shapes training images are 64 x 64: resized so that the short side is 80.
    assert all(x.dtype == np.float32 and x.shape == (3, 80, 80) for x in inputs)
    assert not np.array_equal(inputs[0], inputs[1])
    with pytest.raises(ValueError, match="--calibration-images 0: need at least one image"):
        calibration_inputs(cfg, 0)


def test_quantize_refuses_existing_output(exported, tmp_path):
    (fp32,) = exported("onnx")
    target = tmp_path / "q.onnx"
    target.write_bytes(b"keep")
    with pytest.raises(FileExistsError, match=r"q\.onnx exists; nothing is overwritten"):
        quantize_onnx(fp32.path, str(target), [np.zeros((3, 64, 64), np.float32)])
    assert target.read_bytes() == b"keep"
    with pytest.raises(ValueError, match="needs at least one input"):
        quantize_onnx(fp32.path, str(tmp_path / "r.onnx"), [])
    assert QUANTIZED_OPS == ("Conv", "ConvTranspose", "MatMul", "Gemm")
