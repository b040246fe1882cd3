"""Deployment: export to TorchScript / ONNX with masks (:mod:`.export`), ONNX Runtime and
int8 static quantization on the CPU (:mod:`.runtimes`, :mod:`.quantize`), and one predictor for an
eager checkpoint, a TorchScript file or an ONNX model (:func:`load_predictor`).

``onnx`` and ``onnxruntime`` are imported only when an ONNX model is written or read
(:mod:`.quantize` imports ``onnxruntime.quantization`` when imported).
"""
from .artifacts import CONFIG_NAME, detect_format
from .export import EXPORT_FORMATS, FP32_TOLERANCES, ExportedArtifact, compare_predictions, export_model
from .runtimes import DeployPredictor, load_predictor

__all__ = [
    "CONFIG_NAME",
    "EXPORT_FORMATS",
    "FP32_TOLERANCES",
    "DeployPredictor",
    "ExportedArtifact",
    "compare_predictions",
    "detect_format",
    "export_model",
    "load_predictor",
]
