"""Export a trained model to TorchScript or ONNX with boxes, classes, scores and masks, checked
against eager at export time (``tools/export_model.py``).

As detectron2's ``tools/deploy/export_model.py --export-method tracing``: the model is wrapped in
``detectron2.export.TracingAdapter`` around ``model.inference(..., do_postprocess=False)`` and
traced on the CPU at batch 1. The artifact maps one image (``image``: float32 (3, h, w), already
resized, in ``INPUT.FORMAT`` order) to ``boxes`` (N, 4; XYXY in h x w coordinates), ``scores`` (N,),
``classes`` (N,, int64) and, for mask models, ``mask_probs`` (N, 1, 28, 28; per-box mask
probabilities of the predicted class). Pasting masks into the image and scaling boxes happen
outside the graph, in detectron2's ``detector_postprocess`` (:mod:`.runtimes`). Test-time
thresholds (``MODEL.ROI_HEADS.SCORE_THRESH_TEST``, ``NMS_THRESH_TEST``, ``TEST.DETECTIONS_PER_IMAGE``,
RPN top-k) are baked into the graph. ONNX: the TorchScript-based exporter (``dynamo=False``,
opset 17) with dynamic height, width and number of detections.

Parity (:func:`compare_predictions`): eager and the artifact, both through :func:`load_predictor`,
run the same images (the config's ``DATASETS.TEST`` images or given ones, each also cropped to
another aspect ratio so the dynamic height/width are exercised, and a blank image). Detections are
matched one to one (same class, highest box IoU); tolerances (:data:`FP32_TOLERANCES`):
same number of detections, every one matched, box coordinates within 0.05 px, scores within 1e-3,
IoU of the pasted masks (pooled over matched pairs) >= 0.99. int8 is reported, not held to these
(its accuracy is measured as AP by the benchmark).
"""
import contextlib
import dataclasses
import logging
import os
import warnings
from typing import Dict, List, Optional

import numpy as np
import torch
from detectron2.export import TracingAdapter
from detectron2.structures import pairwise_iou

from .artifacts import CONFIG_NAME
from .datasets import load_dataset_images
from .runtimes import INPUT_NAME, OUTPUT_NAMES, EagerPredictor, load_predictor

__all__ = [
    "EXPORT_FORMATS",
    "FP32_TOLERANCES",
    "ExportedArtifact",
    "compare_predictions",
    "export_model",
    "export_onnx",
    "export_torchscript",
    "parity_images",
]

logger = logging.getLogger(__name__)

EXPORT_FORMATS = {"torchscript": "model.ts", "onnx": "model.onnx"}
INT8_NAME = "model_int8.onnx"
ONNX_OPSET = 17
# Export-time check of an fp32 artifact against eager (see the module docstring).
FP32_TOLERANCES = {"box_px": 0.05, "score": 1e-3, "mask_iou": 0.99}


@dataclasses.dataclass
class ExportedArtifact:
    """One written model file and how it compared with eager on the check images.

    ``parity``: see :func:`compare_predictions`; ``passed``: None when no tolerance applies (int8).
    """

    path: str
    format: str
    precision: str
    size_bytes: int
    parity: Dict[str, float]
    passed: Optional[bool]

    def summary(self):
        p = self.parity
        verdict = {True: "within tolerance", False: "OUT OF TOLERANCE", None: "reported only"}[self.passed]
        return (f"{self.format} {self.precision} {self.path} ({self.size_bytes / 1e6:.2f} MB): "
                f"{p['detections_eager']} eager / {p['detections_artifact']} artifact detections, "
                f"{p['unmatched']} unmatched, max |d box| {p['box_px']:.2e} px, max |d score| "
                f"{p['score']:.2e}, mask IoU {p['mask_iou']:.4f} -> {verdict}")


def _outputs_of(model, inputs):
    """The inference function traced: one image's detections as a tuple of tensors."""
    inst = model.inference(inputs, do_postprocess=False)[0]
    outputs = (inst.pred_boxes.tensor, inst.scores, inst.pred_classes)
    if inst.has("pred_masks"):
        outputs = outputs + (inst.pred_masks,)
    return outputs


def _adapter(model, image):
    adapter = TracingAdapter(model, [{INPUT_NAME: image}], inference_func=_outputs_of)
    adapter.eval()
    return adapter


def _check_traceable(model):
    if not hasattr(model, "inference"):
        raise ValueError(f"{type(model).__name__} has no inference(); export supports GeneralizedRCNN-style "
                         "models (MODEL.META_ARCHITECTURE GeneralizedRCNN or a hooked form of it)")


@contextlib.contextmanager
def _quiet_tracing():
    """Tracing warns at every Python branch on a tensor (detectron2 has many); they are expected."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


def export_torchscript(model, image, path):
    """Trace ``model`` (eval, CPU) on ``image`` ((3, h, w) float32, pre-processed) and save the
    TorchScript module to ``path``."""
    _check_traceable(model)
    with _quiet_tracing(), torch.no_grad():
        traced = torch.jit.trace(_adapter(model, image), (image,), check_trace=False)
    tmp = path + ".tmp"
    traced.save(tmp)
    os.replace(tmp, path)
    return path


def export_onnx(model, image, path, opset=ONNX_OPSET):
    """Export ``model`` (eval, CPU) traced on ``image`` to an ONNX file at ``path`` with dynamic
    height/width (input) and number of detections (outputs); checked with ``onnx.checker``."""
    import onnx

    _check_traceable(model)
    adapter = _adapter(model, image)
    with torch.no_grad():
        num_outputs = len(adapter(image))
    names = list(OUTPUT_NAMES[:num_outputs])
    dynamic = {INPUT_NAME: {1: "height", 2: "width"}}
    dynamic.update({n: {0: "detections"} for n in names})
    tmp = path + ".tmp"
    with _quiet_tracing(), torch.no_grad():
        torch.onnx.export(adapter, (image,), tmp, input_names=[INPUT_NAME], output_names=names,
                          dynamic_axes=dynamic, opset_version=opset, dynamo=False, do_constant_folding=True)
    onnx.checker.check_model(tmp)
    os.replace(tmp, path)
    return path


def compare_predictions(reference, other):
    """Compare two lists of ``Instances`` (one per image, same images) detection by detection.

    Detections are matched greedily one to one within the same class by box IoU (so equal-score
    reorderings do not count as errors). Returns a dict: ``detections_eager`` / ``detections_artifact``
    (totals), ``unmatched`` (detections of either side without a partner), ``box_px`` (max absolute
    coordinate difference of matched boxes), ``score`` (max absolute score difference),
    ``mask_iou`` (IoU of the matched pasted masks taken together: pixels both set / pixels either
    sets, over all pairs; 1.0 without masks or pairs; pooled so that one flipped pixel of a tiny
    mask is not read as a mismatch).
    """
    stats = {"detections_eager": 0, "detections_artifact": 0, "unmatched": 0, "box_px": 0.0, "score": 0.0,
             "mask_iou": 1.0}
    inter = union = 0
    for ref, out in zip(reference, other):
        stats["detections_eager"] += len(ref)
        stats["detections_artifact"] += len(out)
        if ref.image_size != out.image_size:
            raise ValueError(f"image sizes differ: {ref.image_size} vs {out.image_size}")
        pairs = _match(ref, out)
        stats["unmatched"] += len(ref) + len(out) - 2 * len(pairs)
        for i, j in pairs:
            d_box = (ref.pred_boxes.tensor[i] - out.pred_boxes.tensor[j]).abs().max().item()
            stats["box_px"] = max(stats["box_px"], d_box)
            stats["score"] = max(stats["score"], abs(ref.scores[i].item() - out.scores[j].item()))
            if ref.has("pred_masks") and out.has("pred_masks"):
                a, b = ref.pred_masks[i].bool(), out.pred_masks[j].bool()
                inter += (a & b).sum().item()
                union += (a | b).sum().item()
    if union:
        stats["mask_iou"] = inter / union
    return stats


def _match(ref, out):
    if len(ref) == 0 or len(out) == 0:
        return []
    iou = pairwise_iou(ref.pred_boxes, out.pred_boxes)
    iou[ref.pred_classes[:, None] != out.pred_classes[None, :]] = -1.0
    pairs, used = [], set()
    # Highest-IoU pairs first: each detection gets at most one partner.
    order = torch.argsort(iou.flatten(), descending=True)
    n_out = iou.shape[1]
    for k in order.tolist():
        i, j = divmod(k, n_out)
        if iou[i, j] < 0.5:
            break
        if i in used or ("o", j) in used:
            continue
        used.add(i)
        used.add(("o", j))
        pairs.append((i, j))
    return pairs


def within_tolerance(parity, tolerances=FP32_TOLERANCES):
    """True when ``parity`` (from :func:`compare_predictions`) meets ``tolerances``."""
    return (parity["unmatched"] == 0 and parity["detections_eager"] == parity["detections_artifact"]
            and parity["box_px"] <= tolerances["box_px"] and parity["score"] <= tolerances["score"]
            and parity["mask_iou"] >= tolerances["mask_iou"])


def parity_images(images):
    """The export-time check set: each image, the same image cropped to 3/4 of its width (another
    aspect ratio, so a dynamic-shape error shows), and a blank grey image (few or no detections)."""
    out = []
    for im in images:
        out.append(im)
        out.append(np.ascontiguousarray(im[:, : max(8, im.shape[1] * 3 // 4)]))
    h, w = images[0].shape[:2] if images else (128, 160)
    out.append(np.full((h, w, 3), 128, dtype=np.uint8))
    return out


def _targets(output_dir, fmt, int8):
    paths = [os.path.join(output_dir, EXPORT_FORMATS[fmt])]
    if int8:
        paths.append(os.path.join(output_dir, INT8_NAME))
    return paths


def _config_to_write(cfg, output_dir):
    """``(path, text)`` of ``config.yaml``, or ``(path, None)`` when an identical one is there already;
    ``FileExistsError`` when another config is there."""
    path = os.path.join(output_dir, CONFIG_NAME)
    text = cfg.dump()
    if os.path.exists(path):
        with open(path) as f:
            if f.read() == text:
                return path, None
        raise FileExistsError(f"{path} exists and holds another config; nothing is overwritten, choose another "
                              "--output folder")
    return path, text


def export_model(cfg, fmt, output_dir, *, int8=False, calibration_images=100, check_images=None,
                 num_check_images=3, threads=None, log=print) -> List[ExportedArtifact]:
    """Export the model of ``cfg`` (weights ``cfg.MODEL.WEIGHTS``) to ``output_dir`` and check it.

    Args:
        cfg: a light_rcnn config (``load_config``); exported on the CPU.
        fmt: "torchscript" (``model.ts``) or "onnx" (``model.onnx``).
        output_dir: created if needed; existing model files are refused, ``config.yaml`` is kept
            when identical.
        int8: also write ``model_int8.onnx`` (:func:`light_rcnn.deploy.quantize.quantize_onnx`,
            calibrated on ``calibration_images`` images of ``cfg.DATASETS.TRAIN[0]``); ONNX only.
        check_images: BGR uint8 images for the parity check; default: ``num_check_images`` images of
            ``cfg.DATASETS.TEST[0]``. The first traced example is the check image with most detections.
        threads: ONNX Runtime threads of the checks.
        log: called with each printed line (``print`` by default).
    Returns:
        the written artifacts with their parity against eager (fp32 first).
    Raises:
        ValueError (unsupported format, int8 with TorchScript, no weights), FileExistsError.
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"--format {fmt!r} is not supported; choose one of {sorted(EXPORT_FORMATS)}")
    if int8 and fmt != "onnx":
        raise ValueError("--int8 quantizes an ONNX model (ONNX Runtime static quantization); use --format onnx")
    if not cfg.MODEL.WEIGHTS:
        raise ValueError("MODEL.WEIGHTS is empty: pass the trained checkpoint "
                         "(KEY VALUE: MODEL.WEIGHTS path/model.pth)")
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    targets = _targets(output_dir, fmt, int8)
    existing = [p for p in targets if os.path.exists(p)]
    if existing:
        raise FileExistsError(f"{', '.join(existing)} already exist(s); nothing is overwritten, "
                              "choose another --output")
    config_path, config_text = _config_to_write(cfg, output_dir)

    eager = EagerPredictor(cfg, cfg.MODEL.WEIGHTS)
    if check_images is None:
        if not len(cfg.DATASETS.TEST):
            raise ValueError("DATASETS.TEST is empty: give images for the export-time check")
        check_images = load_dataset_images(cfg, cfg.DATASETS.TEST[0], num_check_images)
    images = parity_images(list(check_images))
    reference = [eager([im])[0] for im in images]
    example = images[int(np.argmax([len(r) for r in reference]))]
    tensor = eager.preprocess(example)

    os.makedirs(output_dir, exist_ok=True)
    if config_text is not None:
        with open(config_path, "w") as f:
            f.write(config_text)
    path = targets[0]
    log(f"Exporting {cfg.MODEL.META_ARCHITECTURE} ({cfg.MODEL.WEIGHTS}) to {path} (traced on a "
        f"{tuple(tensor.shape[1:])} input)")
    if fmt == "torchscript":
        export_torchscript(eager.model, tensor, path)
    else:
        export_onnx(eager.model, tensor, path)
    artifacts = [_checked(path, config_path, images, reference, threads, log, tolerances=FP32_TOLERANCES)]
    if int8:
        from .quantize import calibration_inputs, quantize_onnx

        inputs = calibration_inputs(cfg, calibration_images)
        log(f"Quantizing to int8 (ONNX Runtime static, QDQ, per-channel; {len(inputs)} calibration images of "
            f"{cfg.DATASETS.TRAIN[0]})")
        quantize_onnx(path, targets[1], inputs)
        artifacts.append(_checked(targets[1], config_path, images, reference, threads, log, tolerances=None))
    log(f"Config {'written to' if config_text is not None else 'already at'} {config_path}")
    return artifacts


def _checked(path, config_path, images, reference, threads, log, tolerances):
    predictor = load_predictor(path, config_path, threads=threads)
    parity = compare_predictions(reference, [predictor([im])[0] for im in images])
    passed = None if tolerances is None else within_tolerance(parity, tolerances)
    artifact = ExportedArtifact(path, predictor.format, predictor.precision, os.path.getsize(path), parity, passed)
    if tolerances is not None:
        log(f"Check against eager on {len(images)} images (tolerances: box {tolerances['box_px']} px, score "
            f"{tolerances['score']}, mask IoU >= {tolerances['mask_iou']}, same detections):")
    else:
        log(f"Check against eager on {len(images)} images (int8: differences reported, accuracy is "
            "measured as AP):")
    log("  " + artifact.summary())
    return artifact
