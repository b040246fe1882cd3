"""int8 post-training static quantization of an exported ONNX model for the CPU
(``tools/export_model.py --int8``).

ONNX Runtime's ``quantize_static`` in QDQ format, calibrated on training images. Choices:

* ONNX Runtime rather than PyTorch PT2E/FX: the artifact users deploy is the ONNX model and ORT's
  quantizer works on exactly that graph; PT2E starts from ``torch.export`` (dynamo), which fails
  on detectron2's data-dependent control flow (as the dynamo ONNX exporter does), and FX needs the
  whole detector symbolically traceable. At session start ORT fuses DequantizeLinear -> Conv
  (-> Relu) -> QuantizeLinear into ``QLinearConv`` (int8 kernels, VNNI on x86);
* calibration: ``num_images`` images of ``cfg.DATASETS.TRAIN[0]`` (evenly spaced in the data set's
  order), pre-processed exactly as at inference (``ResizeShortestEdge`` with ``MIN_SIZE_TEST`` /
  ``MAX_SIZE_TEST``, ``INPUT.FORMAT``); MinMax ranges (ORT's default);
* QDQ format, activations uint8 (asymmetric), weights int8 (symmetric), **per-channel** weights:
  the convs' output channels differ in range by orders of magnitude (depthwise convs of the mobile
  backbones and of decomposed models above all), and one scale per tensor would crush the small
  channels to zero; ``reduce_range`` off (7-bit weights only help x86 CPUs without VNNI);
* only ``Conv``, ``ConvTranspose``, ``MatMul`` and ``Gemm`` are quantized (:data:`QUANTIZED_OPS`):
  they hold most of the compute. Everything else **computes in float**: the input normalization,
  ``RoiAlign`` (on the dequantized thin map), ``NonMaxSuppression``, ``TopK``/``NonZero``/``Gather``
  of the proposal and detection selection, box decoding and clipping, softmax, sigmoid of the mask
  logits, average pooling, ``Concat``/``Reshape``; pasting masks and resizing are outside the
  graph anyway. Quantizing every op (``op_types_to_quantize`` empty) also runs, but puts Q/DQ
  pairs around box arithmetic and scores for no speed-up on framework 1 and a larger deviation;
* ``quant_pre_process`` (ONNX shape inference + ORT's basic graph optimizations: constant folding,
  redundant node removal) runs first, with ``skip_symbolic_shape=True``: ORT's symbolic shape
  inference fails on these graphs ("Incomplete symbolic shape inference"; they hold
  data-dependent sizes after NonZero/TopK/NonMaxSuppression and scripted If branches).
"""
import logging
import os

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from .datasets import load_dataset_images
from .runtimes import INPUT_NAME, DeployPredictor

__all__ = ["QUANTIZED_OPS", "calibration_inputs", "quantize_onnx"]

logger = logging.getLogger(__name__)

QUANTIZED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def calibration_inputs(cfg, num_images):
    """``num_images`` pre-processed training images of ``cfg.DATASETS.TRAIN[0]`` as the exported
    model's input (float32 (3, h, w) numpy arrays, resized as at test time)."""
    if int(num_images) < 1:
        raise ValueError(f"--calibration-images {num_images}: need at least one image")
    if not len(cfg.DATASETS.TRAIN):
        raise ValueError("DATASETS.TRAIN is empty: int8 calibration reads training images")
    images = load_dataset_images(cfg, cfg.DATASETS.TRAIN[0], num_images)
    pre = DeployPredictor(cfg, model_path=None)
    return [pre.preprocess(im).numpy() for im in images]


class _Reader(CalibrationDataReader):
    """ONNX Runtime's calibration reader over a list of inputs."""

    def __init__(self, input_name, inputs):
        self._feeds = iter([{input_name: np.ascontiguousarray(x, dtype=np.float32)} for x in inputs])

    def get_next(self):
        return next(self._feeds, None)


def quantize_onnx(fp32_path, int8_path, inputs, per_channel=True, op_types=QUANTIZED_OPS, preprocess=True):
    """Write an int8 QDQ model of the ONNX model ``fp32_path`` to ``int8_path``.

    Args:
        fp32_path: an ONNX model from :func:`light_rcnn.deploy.export.export_onnx`.
        int8_path: output file; refused if it exists.
        inputs: calibration inputs, each a float32 (3, h, w) array (:func:`calibration_inputs`).
        per_channel / op_types / preprocess: see the module docstring.
    Returns:
        ``int8_path``.
    """
    if os.path.exists(int8_path):
        raise FileExistsError(f"{int8_path} exists; nothing is overwritten")
    if not inputs:
        raise ValueError("int8 calibration needs at least one input")
    reader = _Reader(INPUT_NAME, inputs)
    tmp = int8_path + ".tmp"
    source = fp32_path
    if preprocess:
        source = int8_path + ".pre.tmp"
        quant_pre_process(fp32_path, source, skip_symbolic_shape=True)
    try:
        _quantize(source, tmp, reader, per_channel, op_types)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    finally:
        if source != fp32_path and os.path.exists(source):
            os.remove(source)
    os.replace(tmp, int8_path)
    logger.info(f"int8 model written to {int8_path} ({len(inputs)} calibration inputs)")
    return int8_path


def _quantize(source, target, reader, per_channel, op_types):
    quantize_static(
        source,
        target,
        reader,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(op_types),
        per_channel=per_channel,
        reduce_range=False,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
