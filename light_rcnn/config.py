"""Config keys of light_rcnn.

:func:`add_light_rcnn_config` adds new nodes to a detectron2 ``CfgNode`` (a copy obtained with
``detectron2.config.get_cfg()``); it never touches detectron2's global defaults. Every key has a
one-line comment above it.

Pretrained trunks need no key: when ``MODEL.WEIGHTS`` is a classifier checkpoint of
tools/train_classifier.py (it has an ``"arch"`` entry), light_rcnn's checkpointer
(:class:`light_rcnn.engine.checkpoint.AtomicDetectionCheckpointer`) always checks it against the
detector's trunk and raises ``ValueError`` naming missing and unused keys
(:func:`light_rcnn.engine.checkpoint.check_pretrained_backbone`). Always, because such a file
exists only to initialize that trunk: a partial load is a mistake (wrong width, wrong config),
never a wish, and a key to switch the check off would let it pass silently again. Detection
checkpoints (resume, fine-tuning from ``model_final.pth``) are not checked.
"""
import os

from detectron2.config import CfgNode, get_cfg

CN = CfgNode

# `_BASE_: "detectron2://<path>"` names a config shipped inside the installed detectron2.
MODEL_ZOO_PREFIX = "detectron2://"
# `light_rcnn://<path under configs/>` names a config shipped with the installed light_rcnn.
LIGHT_RCNN_PREFIX = "light_rcnn://"


def add_light_rcnn_config(cfg):
    """Declare every light_rcnn key on ``cfg`` (in place) with its default value."""
    _C = cfg
    # New nodes take the type of ``cfg`` (e.g. LightRCNNCfgNode), or merging a YAML into them
    # fails with "Type mismatch".
    CN = type(cfg)

    # ---------------------------------------------------------------------------------------
    # Separated large-kernel neck (Light Mask R-CNN, Sec. III-B, Fig. 1)
    # ---------------------------------------------------------------------------------------
    _C.MODEL.SLK = CN()
    # Name of the registered BACKBONE builder used as the bottom-up network the neck wraps.
    _C.MODEL.SLK.BOTTOM_UP = "build_resnet_backbone"
    # Feature of the bottom-up backbone that the neck reads (res4 = ResNet C4, stride 16).
    _C.MODEL.SLK.IN_FEATURE = "res4"
    # Kernel length k of the k x 1 / 1 x k convolutions; odd and >= 3 (paper: 15).
    _C.MODEL.SLK.KERNEL_SIZE = 15
    # Channels between the first and second conv of each branch (paper Table II: 64/128/256).
    _C.MODEL.SLK.MID_CHANNELS = 256
    # Channels of the thin feature map fed to both the RPN and ROIAlign (paper: 256).
    _C.MODEL.SLK.OUT_CHANNELS = 256
    # Normalization after each branch conv ("" = none, as in Light-Head R-CNN; "BN", "GN", ...).
    _C.MODEL.SLK.NORM = ""
    # Name of the thin feature map in the neck's output dict (use it in RPN/ROI_HEADS.IN_FEATURES).
    _C.MODEL.SLK.OUT_FEATURE = "thin"

    # ---------------------------------------------------------------------------------------
    # Redesigned R-CNN subnet (Light Mask R-CNN, Sec. III-C)
    # ---------------------------------------------------------------------------------------
    _C.MODEL.LIGHT_HEAD = CN()
    # Output channels of the 3x3 convs applied to every 14x14 ROI (paper: [256, 512]; last = C_out).
    _C.MODEL.LIGHT_HEAD.CONV_DIMS = [256, 512]
    # Normalization after each 3x3 conv ("" = none, "BN", "GN", "SyncBN", ...).
    _C.MODEL.LIGHT_HEAD.NORM = ""
    # Average-pooling window (= stride) of the box branch: 7 -> 2x2xC_out vector, 14 -> 1x1xC_out.
    _C.MODEL.LIGHT_HEAD.BOX_POOL_SIZE = 7
    # Train with ROIAlign computed as two matrix products (modeling/separable_roi_align.py): same
    # values as torchvision's kernel, but its backward runs on every CPU core instead of one
    # scalar loop. Inference and export always use torchvision's ROIAlign. Memory grows with
    # ROIs x 14 x C x W per image, so it is on for the CPU/shapes configs only. Read by
    # LightRCNNROIHeads and ThinRes5ROIHeads (not by detectron2's own ROI heads).
    _C.MODEL.LIGHT_HEAD.SEPARABLE_ROI_ALIGN = False
    # The res5 subnet of ThinRes5ROIHeads (Table II's "C5" on the thin map), made cheaper per ROI:
    # number of bottleneck blocks (the first one strided, 14x14 -> 7x7; detectron2's res5: 3),
    # their 3x3 width (0 = ResNet's: RESNETS.NUM_GROUPS * WIDTH_PER_GROUP * 8, 512 in ResNet-50)
    # and their output channels (0 = ResNet's: RESNETS.RES2_OUT_CHANNELS * 8, 2048 in ResNet-50).
    # Read only by ThinRes5ROIHeads; the defaults build detectron2's res5 on the thin map.
    _C.MODEL.LIGHT_HEAD.RES5_NUM_BLOCKS = 3
    _C.MODEL.LIGHT_HEAD.RES5_BOTTLENECK_CHANNELS = 0
    _C.MODEL.LIGHT_HEAD.RES5_OUT_CHANNELS = 0
    # Normalization in those blocks ("" = RESNETS.NORM, as detectron2's res5 head). A res5 that
    # is not loaded from ImageNet weights needs a trainable one ("BN", "GN", "SyncBN"): FrozenBN
    # at its initial statistics is no normalization at all.
    _C.MODEL.LIGHT_HEAD.RES5_NORM = ""

    # ---------------------------------------------------------------------------------------
    # Optimizer choice (light_rcnn.engine.Trainer.build_optimizer)
    # ---------------------------------------------------------------------------------------
    # "SGD" (detectron2's, uses SOLVER.MOMENTUM/NESTEROV) or "ADAMW" (used by the from-scratch CPU configs).
    _C.SOLVER.OPTIMIZER = "SGD"
    # AdamW's (beta1, beta2); read only when SOLVER.OPTIMIZER is "ADAMW".
    _C.SOLVER.ADAM_BETAS = (0.9, 0.999)

    # ---------------------------------------------------------------------------------------
    # Embedded "shapes" instance-segmentation data set (light_rcnn/data/shapes.py)
    # ---------------------------------------------------------------------------------------
    _C.DATASETS.SHAPES = CN()
    # Cache directory for the generated images/JSON ("" = $LIGHT_RCNN_CACHE or ~/.cache/light_rcnn).
    _C.DATASETS.SHAPES.ROOT = ""
    # Side length in pixels of the generated square images.
    _C.DATASETS.SHAPES.IMAGE_SIZE = 192
    # Number of images in shapes_train.
    _C.DATASETS.SHAPES.NUM_TRAIN = 400
    # Number of images in shapes_val.
    _C.DATASETS.SHAPES.NUM_VAL = 60
    # Random seed of the generator (train uses SEED, val uses SEED + 1).
    _C.DATASETS.SHAPES.SEED = 0

    # ---------------------------------------------------------------------------------------
    # Mobile backbones (FD-MobileNet, MobileNet v1/v2, pyramid depthwise-dilated MobileNetV2)
    # ---------------------------------------------------------------------------------------
    # (read by the builders in light_rcnn/modeling/backbone; the builder name picks the network)
    # Node of cfg's own class: yacs refuses to merge a YAML's LightRCNNCfgNode into a plain CfgNode.
    _C.MODEL.MOBILENET = CN()
    # Width multiplier alpha of every layer incl. the first (FD: 1/0.5/0.25; v1: 0.5/0.25/0.125).
    _C.MODEL.MOBILENET.WIDTH_MULT = 1.0
    # Normalization after every conv: "BN", "SyncBN", "FrozenBN", "GN" (detectron2 get_norm).
    _C.MODEL.MOBILENET.NORM = "BN"
    # Returned features: "stem", "stage2".."stage5" (strides 2..32); "linear" with a classifier.
    _C.MODEL.MOBILENET.OUT_FEATURES = ["stage4"]
    # 0 = backbone only; > 0 adds global pooling + a NUM_CLASSES-way fc (feature "linear").
    _C.MODEL.MOBILENET.NUM_CLASSES = 0
    # Dilation of stage5: 1 (stride 32, as the papers) or 2 (stage5 kept at stride 16).
    _C.MODEL.MOBILENET.STAGE5_DILATION = 1
    # Dilation rates of the parallel depthwise branches of each pyramid block (dilated MobileNetV2).
    _C.MODEL.MOBILENET.DILATION_RATES = [1, 2, 3, 4]
    # Rates are capped to 2r+1 <= this size / block stride (224: stride-32 rates <= 3); 0 = off.
    _C.MODEL.MOBILENET.DILATION_CAP_INPUT_SIZE = 224
    # Add branch i-1's output to branch i before concatenation (ESPNet-style); paper: False.
    _C.MODEL.MOBILENET.HIERARCHICAL_FUSION = False

    # ---------------------------------------------------------------------------------------
    # Modeling hooks (D2Go-style; light_rcnn/compression/modeling_hooks.py)
    # ---------------------------------------------------------------------------------------
    # Names in MODELING_HOOK_REGISTRY applied in order by light_rcnn.build_model after the
    # META_ARCHITECTURE is built, e.g. ["DecompositionHook", "DistillationHook"]; [] = none.
    _C.MODEL.MODELING_HOOKS = []

    # ---------------------------------------------------------------------------------------
    # Exponential moving average of the weights (light_rcnn.engine.ema.ModelEMAHook)
    # ---------------------------------------------------------------------------------------
    _C.MODEL_EMA = CN()
    # Keep an EMA of the weights (and BN buffers); it replaces the trained weights after the last
    # iteration, so model_final.pth and the final evaluation are the averaged model's.
    _C.MODEL_EMA.ENABLED = False
    # W_ema <- DECAY * W_ema + (1 - DECAY) * W after each step; the average spans ~1/(1-DECAY) iterations.
    _C.MODEL_EMA.DECAY = 0.999
    # Fraction of SOLVER.MAX_ITER after which averaging starts, in [0, 1) (early weights only drag it).
    _C.MODEL_EMA.START_FRACTION = 0.0

    # ---------------------------------------------------------------------------------------
    # Student-teacher distillation (thesis Sec. 2.1.3; "DistillationHook" or META_ARCHITECTURE
    # "DistillationRCNN")
    # ---------------------------------------------------------------------------------------
    _C.MODEL.DISTILL = CN()
    # Config file of the teacher: a path (relative to the cwd), light_rcnn://<path> or detectron2://<path>.
    _C.MODEL.DISTILL.TEACHER_CONFIG = ""
    # KEY VALUE overrides merged into the teacher's config after its file (e.g. tiny test sizes).
    _C.MODEL.DISTILL.TEACHER_OPTS = []
    # Trained teacher checkpoint (DetectionCheckpointer format); required, give it on the command line.
    _C.MODEL.DISTILL.TEACHER_WEIGHTS = ""
    # Softmax temperature T of the class distillation (Hinton et al.); the loss is scaled by T^2.
    _C.MODEL.DISTILL.TEMPERATURE = 2.0
    # Weight of loss_distill_cls = T^2 KL(softmax(t/T) || softmax(s/T)) on the sampled ROIs' classes.
    _C.MODEL.DISTILL.CLS_WEIGHT = 1.0
    # Weight of loss_hint (FitNets hint: MSE through a learned 1x1 conv adapter); 0 = no hint, no adapter.
    _C.MODEL.DISTILL.HINT_WEIGHT = 0.0
    # Student backbone output regressed onto the teacher's (the FitNets "guided" layer).
    _C.MODEL.DISTILL.HINT_STUDENT_FEATURE = "thin"
    # Teacher backbone output the guided feature is regressed onto (the FitNets "hint" layer).
    _C.MODEL.DISTILL.HINT_TEACHER_FEATURE = "thin"

    # ---------------------------------------------------------------------------------------
    # Mask loss of ROI_MASK_HEAD.NAME "IoUMaskRCNNConvUpsampleHead" (thesis Sec. 3.3.1-3.3.2)
    # ---------------------------------------------------------------------------------------
    _C.MODEL.MASK_LOSS = CN()
    # "BCE" (Mask R-CNN's per-pixel cross-entropy), "IOU" (soft IoU 1 - I/U) or "BCE+IOU".
    _C.MODEL.MASK_LOSS.TYPE = "BCE"
    # Weight of the binary cross-entropy term (loss_mask).
    _C.MODEL.MASK_LOSS.BCE_WEIGHT = 1.0
    # Weight of the soft IoU term (loss_mask_iou).
    _C.MODEL.MASK_LOSS.IOU_WEIGHT = 1.0

    # ---------------------------------------------------------------------------------------
    # Depth-wise decomposition of regular convs (He et al., "Depth-wise Decomposition", Sec. 3)
    # ---------------------------------------------------------------------------------------
    # (read by light_rcnn/compression: "DecompositionHook" / DecomposedGeneralizedRCNN and
    # tools/decompose_net.py)
    _C.MODEL.DECOMPOSE = CN()
    # Regexes, each re.fullmatch-ed against qualified module names, of the k x k convs to replace; [] = none.
    _C.MODEL.DECOMPOSE.LAYERS = []
    # "depthwise" (k x k depthwise + 1x1 pointwise, Sec. 3.4) or "channel" (k x k to r + 1x1, Sec. 3.2).
    _C.MODEL.DECOMPOSE.METHOD = "depthwise"
    # METHOD "channel": reduced width r = max(1, round(ratio * C_out)) of the k x k conv.
    _C.MODEL.DECOMPOSE.CHANNEL_RANK_RATIO = 0.25
    # tools/decompose_net.py: training images whose responses are sampled (paper Sec. 3.1: 300).
    _C.MODEL.DECOMPOSE.NUM_IMAGES = 300
    # tools/decompose_net.py: output positions sampled per image and layer (paper: 10, so N = 3000).
    _C.MODEL.DECOMPOSE.PATCHES_PER_IMAGE = 10
    # Inter-channel error compensation (Algorithm 2) instead of independent per-channel SVDs (Algorithm 1).
    _C.MODEL.DECOMPOSE.COMPENSATE = True
    # Multi-layer decomposition (Algorithm 3): inputs from the decomposed net, targets from the original.
    _C.MODEL.DECOMPOSE.MULTI_LAYER = True
    # Seed of the image and patch sampling.
    _C.MODEL.DECOMPOSE.SEED = 0

    return cfg



def model_zoo_config_file(name, key="config"):
    """The file of ``detectron2://<path>`` (anything before the prefix is ignored) inside the
    installed detectron2's model zoo; ``FileNotFoundError`` naming ``key`` if it has no such config."""
    from detectron2 import model_zoo

    zoo_path = name.split(MODEL_ZOO_PREFIX, 1)[1]
    try:
        return model_zoo.get_config_file(zoo_path)
    except RuntimeError as e:
        raise FileNotFoundError(
            f"{key} '{MODEL_ZOO_PREFIX}{zoo_path}' is not a config of the installed detectron2's model zoo ({e})"
        ) from e


def packaged_configs_dir():
    """The folder of configs shipped inside the installed package (``light_rcnn/configs``: in a
    checkout a symlink to the top-level ``configs/``, in a wheel a copy of it)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def light_rcnn_config_file(name, key="config"):
    """The file of ``light_rcnn://<path under configs/>`` (anything before the prefix is ignored)
    inside the installed package; ``FileNotFoundError`` naming ``key`` if there is no such config."""
    rel = name.split(LIGHT_RCNN_PREFIX, 1)[1].lstrip("/")
    path = os.path.join(packaged_configs_dir(), rel)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{key} '{LIGHT_RCNN_PREFIX}{rel}' is not a config shipped with light_rcnn "
            f"(looked for {path})"
        )
    return path


def resolve_config_file(name, key="config"):
    """A config path as a user may write it: ``light_rcnn://<path>`` (a config shipped with the
    package), ``detectron2://<path>`` (detectron2's model zoo) or a file path.

    Returns a path that exists; raises ``FileNotFoundError`` naming ``key`` otherwise."""
    if LIGHT_RCNN_PREFIX in name:
        return light_rcnn_config_file(name, key=key)
    if MODEL_ZOO_PREFIX in name:
        return model_zoo_config_file(name, key=key)
    if not os.path.isfile(name):
        raise FileNotFoundError(
            f"{key} {name!r}: no such file (relative to {os.getcwd()}); name a YAML file, "
            f"'{LIGHT_RCNN_PREFIX}<path under configs/>' or '{MODEL_ZOO_PREFIX}<path>'"
        )
    return name


class LightRCNNCfgNode(CfgNode):
    """detectron2's ``CfgNode`` whose ``_BASE_`` (and ``merge_from_file``) may name a config of
    light_rcnn or of detectron2's model zoo by prefix.

    ``light_rcnn://shapes/light_mask_rcnn_framework1_shapes.yaml`` resolves to the config shipped
    with the installed package; ``detectron2://COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml``
    to the file inside the installed detectron2 (``detectron2.model_zoo.get_config_file``), so our
    YAML files inherit detectron2's own instead of copying them. fvcore joins a relative ``_BASE_``
    to the including file's folder before calling this method, so the prefix is looked for
    anywhere in the path. Every other ``_BASE_`` behaves as in detectron2.
    """

    @classmethod
    def load_yaml_with_base(cls, filename, allow_unsafe=False):
        if isinstance(filename, str) and (LIGHT_RCNN_PREFIX in filename or MODEL_ZOO_PREFIX in filename):
            filename = resolve_config_file(filename, key="_BASE_")
        return super().load_yaml_with_base(filename, allow_unsafe=allow_unsafe)

    def merge_from_file(self, cfg_filename, allow_unsafe=True):
        # detectron2 asserts the file exists before reading _BASE_; resolve the prefixes first.
        return super().merge_from_file(resolve_config_file(cfg_filename), allow_unsafe=allow_unsafe)


def get_light_rcnn_cfg():
    """detectron2's default config plus every light_rcnn key, as a :class:`LightRCNNCfgNode`."""
    cfg = LightRCNNCfgNode(get_cfg())
    return add_light_rcnn_config(cfg)


def load_config(config_file=None, opts=()):
    """Build a config the way ``tools/train_net.py`` does: defaults, then a YAML file, then
    ``KEY VALUE`` overrides. Returns an unfrozen config."""
    cfg = get_light_rcnn_cfg()
    if config_file:
        cfg.merge_from_file(resolve_config_file(config_file, key="--config-file"))
    if opts:
        cfg.merge_from_list(list(opts))
    return cfg


def flatten_config(node, prefix=""):
    """A nested config (a CfgNode, or the dict YAML loads) as ``{"MODEL.SLK.OUT_CHANNELS": value, ...}``."""
    out = {}
    for key, value in node.items():
        out.update(flatten_config(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out
