"""light_rcnn: fast two-stage detection and instance segmentation on detectron2.

``import light_rcnn`` registers every component (backbones, necks, ROI heads, data sets)
into detectron2's registries; :func:`add_light_rcnn_config` declares the config keys.
"""
from .config import add_light_rcnn_config, get_light_rcnn_cfg, load_config
from . import data as _data  # noqa: F401  (registers shapes_train / shapes_val)
from . import modeling as _modeling  # noqa: F401  (registers backbones and heads)
from .compression import build_model  # registers the modeling hooks and their meta-archs
from .engine import shapes_trunks as _shapes_trunks  # noqa: F401  (registers light_rcnn_trunk://)

__version__ = "0.1.0"
__all__ = ["add_light_rcnn_config", "build_model", "get_light_rcnn_cfg", "load_config"]
