"""One predictor for every artifact (:func:`load_predictor`, used by ``tools/predict.py``): an
eager checkpoint, a TorchScript file or an ONNX model (fp32 or int8) behind the same call,
returning detectron2 ``Instances``.

Pre-processing is detectron2's ``DefaultPredictor``'s (BGR -> RGB when ``INPUT.FORMAT`` is RGB,
``ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST)``, float32 CHW); post-processing is
detectron2's ``detector_postprocess`` (boxes scaled to the image, 28 x 28 mask probabilities pasted
and thresholded at 0.5), so the three formats give the same ``Instances``.

Choices:
* eager runs the images of one call as batches of equal input size (a mixed batch would be padded
  to its largest image, which changes the others' outputs); exported artifacts are traced at
  batch 1, so they run the list image by image;
* exported artifacts are traced on the CPU and run there (ONNX Runtime's CPU execution provider);
  eager runs on ``device`` (cpu or cuda);
* ``threads`` sets ONNX Runtime's ``intra_op_num_threads``; for eager and TorchScript it calls
  ``torch.set_num_threads`` (process-wide);
* outputs are always on the CPU.
"""
import logging

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import transforms as T
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances

from ..compression import build_model
from .artifacts import detect_format, load_artifact_config

__all__ = [
    "DeployPredictor",
    "EagerPredictor",
    "ONNXPredictor",
    "StrictCheckpointer",
    "TorchScriptPredictor",
    "load_predictor",
    "onnx_session",
]

logger = logging.getLogger(__name__)

# Names of an exported artifact's outputs, in order (the mask output only when MODEL.MASK_ON).
OUTPUT_NAMES = ("boxes", "scores", "classes", "mask_probs")
# Name of its one input: a float32 (3, H, W) image in INPUT.FORMAT order, already resized.
INPUT_NAME = "image"
# ONNX ops that mark a quantized (int8) model.
QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}


class StrictCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that refuses a checkpoint not matching the model: any missing or
    unexpected key or shape mismatch raises ``ValueError`` naming the file and the keys (detectron2
    only logs them and keeps the random initialization)."""

    def load(self, path, *args, **kwargs):
        self._strict_path = path
        return super().load(path, *args, **kwargs)

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        problems = []
        if incompatible.incorrect_shapes:
            shapes = ", ".join(f"{k} {tuple(a)} vs {tuple(b)}" for k, a, b in incompatible.incorrect_shapes)
            problems.append(f"shape mismatch (key, checkpoint, model): {shapes}")
        shape_keys = {k for k, _, _ in incompatible.incorrect_shapes}
        missing = [k for k in incompatible.missing_keys if k not in shape_keys]
        if missing:
            problems.append(f"missing in the checkpoint: {_short(missing)}")
        if incompatible.unexpected_keys:
            problems.append(f"not in the model: {_short(incompatible.unexpected_keys)}")
        if problems:
            raise ValueError(
                f"checkpoint {getattr(self, '_strict_path', '?')!r} does not match the model of its config "
                f"({type(self.model).__name__}); " + "; ".join(problems)
                + ". Pass the config (and KEY VALUE overrides) the checkpoint was trained with."
            )
        return incompatible


def _short(keys, n=8):
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" ... ({len(keys)} in all)" if len(keys) > n else "")


def _check_image(image, i):
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        desc = (f"{type(image).__name__} {getattr(image, 'shape', '')} {getattr(image, 'dtype', '')}").strip()
        raise ValueError(f"image {i}: expected a uint8 numpy array of shape (H, W, 3) in BGR order, got {desc}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image {i}: empty image of shape {image.shape}")


class DeployPredictor:
    """Common part: ``predictor(images) -> list[Instances]``.

    Args (of ``__call__``):
        images: a list of uint8 BGR arrays (H_i, W_i, 3) (a single array is accepted too).
    Returns:
        one ``Instances`` per image, of image size (H_i, W_i), on the CPU, with ``pred_boxes``
        (``Boxes``, XYXY absolute), ``scores`` (float32), ``pred_classes`` (int64) and, for
        mask models, ``pred_masks`` (bool, (N, H_i, W_i)).

    Attributes: ``cfg`` (frozen CfgNode), ``format`` ("eager" | "torchscript" | "onnx"),
    ``precision`` ("fp32" | "int8"), ``model_path``.
    """

    format = None
    precision = "fp32"

    def __init__(self, cfg, model_path):
        self.cfg = cfg
        self.model_path = model_path
        self.aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST)
        if cfg.INPUT.FORMAT not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT={cfg.INPUT.FORMAT!r}: expected 'RGB' or 'BGR'")
        self.input_format = cfg.INPUT.FORMAT

    def preprocess(self, image):
        """BGR uint8 (H, W, 3) -> the model's input: float32 (3, h, w) tensor, resized as
        ``DefaultPredictor`` does, in ``INPUT.FORMAT`` channel order."""
        if self.input_format == "RGB":
            image = image[:, :, ::-1]
        resized = self.aug.get_transform(image).apply_image(image)
        return torch.as_tensor(np.ascontiguousarray(resized.astype("float32").transpose(2, 0, 1)))

    def __call__(self, images):
        if isinstance(images, np.ndarray):
            images = [images]
        images = list(images)
        for i, image in enumerate(images):
            _check_image(image, i)
        with torch.no_grad():
            return self._predict(images)

    def _predict(self, images):
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}(format={self.format!r}, precision={self.precision!r}, model={self.model_path!r})"


class EagerPredictor(DeployPredictor):
    """A checkpoint + config: ``light_rcnn.build_model`` (modeling hooks applied) with the weights
    loaded strictly (:class:`StrictCheckpointer`). Images of one call with the same input size
    (after resizing) run as one batch."""

    format = "eager"

    def __init__(self, cfg, model_path, device="cpu"):
        super().__init__(cfg, model_path)
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.DEVICE = device
        cfg.freeze()
        self.cfg = cfg
        self.device = device
        self.model = build_model(cfg)
        self.model.eval()
        StrictCheckpointer(self.model).load(model_path)

    def _predict(self, images):
        inputs = [{"image": self.preprocess(im).to(self.device), "height": im.shape[0], "width": im.shape[1]}
                  for im in images]
        # One batch per input size: detectron2 pads a mixed batch to its largest image, and the
        # padded area then feeds the convolutions along the smaller images' borders.
        groups = {}
        for i, x in enumerate(inputs):
            groups.setdefault(tuple(x["image"].shape), []).append(i)
        results = [None] * len(inputs)
        for indices in groups.values():
            for i, out in zip(indices, self.model([inputs[i] for i in indices])):
                results[i] = out["instances"].to("cpu")
        return results


class _ExportedPredictor(DeployPredictor):
    """An artifact of tools/export_model.py: ``image`` (3, h, w) -> ``boxes`` (N, 4, in h x w
    coordinates), ``scores`` (N,), ``classes`` (N,), [``mask_probs`` (N, 1, 28, 28)]; detectron2's
    ``detector_postprocess`` turns them into ``Instances`` at the image size."""

    def _forward(self, tensor):
        """(3, h, w) float32 -> tuple of output tensors in :data:`OUTPUT_NAMES` order."""
        raise NotImplementedError

    def _predict(self, images):
        results = []
        for image in images:
            tensor = self.preprocess(image)
            outputs = self._forward(tensor)
            results.append(instances_from_outputs(outputs, tuple(tensor.shape[1:]), image.shape[:2]))
        return results


def instances_from_outputs(outputs, input_size, image_size):
    """The flat outputs of an exported model for one (resized) input of ``input_size`` (h, w) ->
    ``Instances`` at ``image_size`` (H, W), through detectron2's ``detector_postprocess``."""
    boxes, scores, classes = outputs[:3]
    inst = Instances(input_size)
    inst.pred_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.as_tensor(scores, dtype=torch.float32).reshape(-1)
    inst.pred_classes = torch.as_tensor(classes).reshape(-1).to(torch.int64)
    if len(outputs) > 3:
        inst.pred_masks = torch.as_tensor(outputs[3], dtype=torch.float32).reshape(-1, 1, *outputs[3].shape[-2:])
    return detector_postprocess(inst, int(image_size[0]), int(image_size[1]))


class TorchScriptPredictor(_ExportedPredictor):
    """A TorchScript file written by ``export_model(..., fmt="torchscript")``, run on the CPU."""

    format = "torchscript"

    def __init__(self, cfg, model_path):
        super().__init__(cfg, model_path)
        try:
            self.model = torch.jit.load(model_path, map_location="cpu")
        except RuntimeError as e:
            raise ValueError(f"model file {model_path!r}: not a loadable TorchScript file ({e})") from e
        self.model.eval()

    def _forward(self, tensor):
        return self.model(tensor)


def onnx_session(model_path, threads=None):
    """An ONNX Runtime ``InferenceSession`` of ``model_path`` on the CPU execution provider, with
    ``intra_op_num_threads = threads`` (None: ONNX Runtime's default, one per physical core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    # One graph at a time: inter-op parallelism would add threads beyond the requested count.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # No spin-waiting between runs: the predictor's pre/post-processing (resize, mask pasting) runs
    # in torch, whose thread pool would otherwise compete for the same cores with idle-spinning
    # ONNX Runtime threads (RESULTS.md "Deploy").
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(model_path, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... classes
        raise ValueError(f"model file {model_path!r}: ONNX Runtime cannot load it ({e})") from e


def onnx_precision(model_path):
    """``"int8"`` when the ONNX graph holds quantization ops, else ``"fp32"``."""
    import onnx

    model = onnx.load(model_path, load_external_data=False)
    return "int8" if any(n.op_type in QUANT_OPS for n in model.graph.node) else "fp32"


class ONNXPredictor(_ExportedPredictor):
    """An ONNX model written by ``export_model(..., fmt="onnx")`` (fp32) or ``quantize_onnx`` (int8),
    run by ONNX Runtime on the CPU with ``threads`` intra-op threads."""

    format = "onnx"

    def __init__(self, cfg, model_path, threads=None):
        super().__init__(cfg, model_path)
        self.session = onnx_session(model_path, threads)
        self.precision = onnx_precision(model_path)
        inputs = [i.name for i in self.session.get_inputs()]
        if inputs != [INPUT_NAME]:
            raise ValueError(f"model file {model_path!r}: inputs {inputs}, expected [{INPUT_NAME!r}] "
                             "(an ONNX model written by tools/export_model.py)")
        self.output_names = [o.name for o in self.session.get_outputs()]
        if tuple(self.output_names) not in (OUTPUT_NAMES, OUTPUT_NAMES[:3]):
            raise ValueError(f"model file {model_path!r}: outputs {self.output_names}, expected "
                             f"{list(OUTPUT_NAMES)} (an ONNX model written by tools/export_model.py)")

    def _forward(self, tensor):
        outputs = self.session.run(self.output_names, {INPUT_NAME: tensor.numpy()})
        return [torch.from_numpy(o) for o in outputs]


def load_predictor(model_path, config_file=None, opts=(), device="cpu", threads=None):
    """A predictor for any model file: ``p(images) -> list[Instances]`` (see :class:`DeployPredictor`).

    Args:
        model_path: an eager checkpoint (.pth/.pkl; needs ``config_file``), a TorchScript file or an
            ONNX model (fp32 or int8), recognised by content (:func:`detect_format`).
        config_file: the config (path or ``light_rcnn://...``); for exported files it defaults to the
            ``config.yaml`` tools/export_model.py wrote beside the artifact.
        opts: KEY VALUE overrides merged after the config (e.g. ``MODEL.ROI_HEADS.SCORE_THRESH_TEST``
            for eager; exported graphs have their thresholds baked in at export time).
        device: "cpu" or "cuda" (eager only; exported artifacts run on the CPU).
        threads: CPU threads (ONNX Runtime intra-op; ``torch.set_num_threads`` otherwise); None = default.
    Raises:
        FileNotFoundError / ValueError naming the file for a missing, foreign or mismatching model.
    """
    fmt = detect_format(model_path)
    cfg = load_artifact_config(model_path, fmt, config_file, opts)
    if fmt != "eager" and str(device) != "cpu":
        raise ValueError(f"model file {model_path!r} is a {fmt} artifact, traced for and run on the CPU; "
                         f"device={device!r} is supported for eager checkpoints only")
    if threads is not None and fmt != "onnx":
        torch.set_num_threads(int(threads))
    if fmt == "eager":
        return EagerPredictor(cfg, model_path, device=device)
    if fmt == "torchscript":
        return TorchScriptPredictor(cfg, model_path)
    return ONNXPredictor(cfg, model_path, threads=threads)
