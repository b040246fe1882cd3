"""What a model file is (eager checkpoint, TorchScript, ONNX) and which config goes with it,
for :func:`load_predictor` and ``tools/predict.py``.

A format is recognised from the file's content, not only its extension (``.pt`` is used for both
checkpoints and TorchScript): a zip archive holding ``code/`` is TorchScript, another zip archive or
a pickle is an eager checkpoint, a protobuf that parses as an ONNX model with a graph is ONNX.
Anything else is refused as foreign, naming the file.
"""
import os
import pickle
import zipfile

__all__ = ["CONFIG_NAME", "FORMATS", "artifact_config_file", "detect_format", "load_artifact_config"]

# The config file tools/export_model.py writes beside an exported artifact.
CONFIG_NAME = "config.yaml"
FORMATS = ("eager", "torchscript", "onnx")
# First bytes of a pickle written with protocol >= 2 (torch.save's legacy format, detectron2's .pkl).
_PICKLE_MAGIC = b"\x80"
# Config keys fixed in an exported graph (architecture, thresholds, detections per image).
BAKED_KEYS = ("MODEL.", "TEST.DETECTIONS_PER_IMAGE")


def _zip_format(path):
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    # Archives written by torch.save / torch.jit.save hold "<archive>/<entry>".
    entries = {n.split("/", 1)[1] if "/" in n else n for n in names}
    if any(e.startswith("code/") for e in entries) or "constants.pkl" in entries:
        return "torchscript"
    if "data.pkl" in entries:
        return "eager"
    return None


def _is_onnx(path):
    try:
        import onnx
    except ImportError as e:  # pragma: no cover - onnx is in the pinned set
        raise ImportError(f"reading {path!r} needs the 'onnx' package (pinned in constraints.txt)") from e
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception:  # protobuf's DecodeError and friends: not an ONNX file
        return False
    return model.ir_version > 0 and len(model.graph.node) > 0


def detect_format(path):
    """``"eager"``, ``"torchscript"`` or ``"onnx"`` for the model file ``path``.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: ``path`` is none of the three (a "foreign" file), naming it.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file {path!r}: no such file")
    if zipfile.is_zipfile(path):
        fmt = _zip_format(path)
        if fmt is not None:
            return fmt
    else:
        with open(path, "rb") as f:
            head = f.read(2)
        if head[:1] == _PICKLE_MAGIC and len(head) == 2 and 2 <= head[1] <= pickle.HIGHEST_PROTOCOL:
            return "eager"
        if _is_onnx(path):
            return "onnx"
    raise ValueError(
        f"model file {path!r} is not a model light_rcnn can load: expected a detectron2 checkpoint "
        "(.pth/.pkl), a TorchScript file (.ts/.pt from tools/export_model.py --format torchscript) or an "
        "ONNX model (.onnx from tools/export_model.py --format onnx)"
    )


def artifact_config_file(model_path, config_file=None):
    """The config of an exported artifact: ``config_file`` if given, else the ``config.yaml`` that
    tools/export_model.py wrote beside ``model_path``; ``FileNotFoundError`` naming both otherwise."""
    if config_file:
        return config_file
    beside = os.path.join(os.path.dirname(os.path.abspath(model_path)), CONFIG_NAME)
    if not os.path.isfile(beside):
        raise FileNotFoundError(
            f"model file {model_path!r} has no {CONFIG_NAME} beside it ({beside}); pass the config it was "
            "exported with (config_file= / --config-file)"
        )
    return beside


def load_artifact_config(model_path, fmt, config_file=None, opts=()):
    """The detectron2 config (a frozen ``CfgNode``) of the model file ``model_path`` of format ``fmt``.

    An eager checkpoint needs ``config_file`` (a ``ValueError`` says so); its ``MODEL.WEIGHTS`` is set
    to ``model_path``. ``opts`` are KEY VALUE overrides merged after the file; for an exported
    graph :data:`BAKED_KEYS` are refused (thresholds and architecture are baked into the graph), while
    ``INPUT.*`` (pre-processing) and ``DATASETS.*`` (metadata) apply.
    """
    from ..config import load_config

    if fmt == "eager":
        if not config_file:
            raise ValueError(
                f"model file {model_path!r} is an eager checkpoint: pass the config it was trained with "
                "(config_file= / --config-file)"
            )
        cfg = load_config(config_file, opts)
        cfg.MODEL.WEIGHTS = model_path
    else:
        baked = [str(k) for k in list(opts)[::2] if str(k).startswith(BAKED_KEYS)]
        if baked:
            raise ValueError(
                f"model file {model_path!r} is an exported {fmt} graph: {', '.join(baked)} is baked into it at "
                "export time and cannot be overridden; re-export with the value you want"
            )
        cfg = load_config(artifact_config_file(model_path, config_file), opts)
    cfg.freeze()
    return cfg
