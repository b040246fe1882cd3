"""Building blocks shared by the mobile backbones, and their common ``Backbone`` base class.

* :class:`ConvNormAct` - a k x k (optionally grouped / dilated) conv + norm + activation: the
  standard conv of every network's first layer and the 1x1 "last conv" of MobileNetV2.
* :class:`DepthwiseSeparable` - MobileNet v1 / FD-MobileNet unit: 3x3 depthwise conv + BN + ReLU,
  1x1 pointwise conv + BN + ReLU (MobileNet Fig. 3; FD-MobileNet Sec. 2 "Overall Architecture").
* :class:`InvertedResidual` - MobileNetV2 unit (dilated-MobileNetV2 paper Sec. 2.2, Fig. 3):
  1x1 expansion + BN + ReLU6, 3x3 depthwise + BN + ReLU6, 1x1 linear projection + BN, residual
  when the input and output shapes agree.
* :class:`PyramidDilatedInvertedResidual` - the "pyramid depth-wise dilated separable convolution"
  (dilated-MobileNetV2 paper Sec. 2.3, Fig. 5).
* :class:`MobileNetBackbone` - stem + named stages + optional classifier head, with detectron2's
  ``FREEZE_AT`` semantics (as ``detectron2.modeling.backbone.ResNet``).

Every block is a :class:`detectron2.layers.CNNBlockBase`, so ``block.freeze()`` sets
``requires_grad=False`` and converts its BatchNorms to ``FrozenBatchNorm2d``.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from fvcore.nn import weight_init
from torch import nn

from detectron2.layers import CNNBlockBase, Conv2d, ShapeSpec, get_norm
from detectron2.modeling import Backbone

__all__ = [
    "make_activation",
    "scale_channels",
    "make_divisible",
    "ConvNormAct",
    "DepthwiseSeparable",
    "InvertedResidual",
    "PyramidDilatedInvertedResidual",
    "MobileNetBackbone",
    "STAGE_NAMES",
]

# Feature names and the strides they are at (FD-MobileNet / MobileNet v1 / v2 / dilated v2 alike).
STAGE_NAMES = ("stem", "stage2", "stage3", "stage4", "stage5")


def make_activation(name: str, channels: int) -> nn.Module:
    """``"relu"``, ``"relu6"`` or ``"prelu"`` (channel-wise PReLU, one slope per channel)."""
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "relu6":
        return nn.ReLU6(inplace=True)
    if name == "prelu":
        return nn.PReLU(channels)
    raise ValueError(f"Unknown activation '{name}' (expected relu, relu6 or prelu)")


def scale_channels(channels: int, width_mult: float) -> int:
    """``channels * width_mult`` rounded to the nearest integer (at least 1).

    MobileNet v1 and FD-MobileNet scale every layer, the first conv included, by the width
    multiplier alpha; the papers' widths (0.5x, 0.25x, 0.125x) give integers for every layer.
    """
    if width_mult <= 0:
        raise ValueError(f"width multiplier must be positive, got {width_mult}")
    return max(1, int(channels * width_mult + 0.5))


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` without losing more than 10%.

    The channel rounding of the MobileNetV2 reference implementation: every width is a multiple
    of 8, and rounding never removes more than 10% of the requested channels.
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _init_conv(conv: nn.Conv2d) -> None:
    # He (MSRA) init, fan-out, as the MobileNet reference implementations.
    weight_init.c2_msra_fill(conv)


class ConvNormAct(CNNBlockBase):
    """``k x k`` conv (no bias) -> norm -> activation (``activation=None``: none)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        *,
        dilation: int = 1,
        groups: int = 1,
        norm: str = "BN",
        activation: Optional[str] = "relu",
    ):
        super().__init__(in_channels, out_channels, stride)
        self.conv = Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=dilation * (kernel_size - 1) // 2,
            dilation=dilation,
            groups=groups,
            bias=False,
            norm=get_norm(norm, out_channels),
            activation=make_activation(activation, out_channels) if activation else None,
        )
        _init_conv(self.conv)

    def forward(self, x):
        return self.conv(x)


class DepthwiseSeparable(CNNBlockBase):
    """3x3 depthwise conv + norm + act, then 1x1 pointwise conv + norm + act (one "DS conv").

    Args:
        in_channels, out_channels (int): channels of the input / of the pointwise conv.
        stride (int): stride of the depthwise conv (1 or 2).
        dilation (int): dilation of the depthwise conv (used to keep stage5 at stride 16).
        norm (str): detectron2 norm name ("BN", "SyncBN", "FrozenBN", "GN", "").
        activation (str): activation after both convs (ReLU in MobileNet v1 / FD-MobileNet).
    """

    def __init__(self, in_channels, out_channels, stride=1, *, dilation=1, norm="BN",
                 activation="relu"):
        super().__init__(in_channels, out_channels, stride)
        self.depthwise = ConvNormAct(in_channels, in_channels, 3, stride, dilation=dilation,
                                     groups=in_channels, norm=norm, activation=activation)
        self.pointwise = ConvNormAct(in_channels, out_channels, 1, norm=norm,
                                     activation=activation)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


class InvertedResidual(CNNBlockBase):
    """MobileNetV2 inverted residual with linear bottleneck (Table 2 row with factor t).

    Args:
        expand_ratio (int): t; ``t == 1`` has no expansion conv (Table 2, layer 1).
        dilation (int): dilation of the depthwise conv.
        activation (str): after the expansion and depthwise convs, never after the projection.
    """

    def __init__(self, in_channels, out_channels, stride=1, *, expand_ratio=6, dilation=1,
                 norm="BN", activation="relu6"):
        super().__init__(in_channels, out_channels, stride)
        hidden = in_channels * expand_ratio
        self.expand = (
            ConvNormAct(in_channels, hidden, 1, norm=norm, activation=activation)
            if expand_ratio != 1
            else None
        )
        self.depthwise = ConvNormAct(hidden, hidden, 3, stride, dilation=dilation, groups=hidden,
                                     norm=norm, activation=activation)
        self.project = ConvNormAct(hidden, out_channels, 1, norm=norm, activation=None)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x):
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return x + y if self.use_residual else y


def split_channels(channels: int, num_splits: int) -> List[int]:
    """Split ``channels`` into ``num_splits`` near-equal parts, the first ones taking the rest."""
    if num_splits < 1 or num_splits > channels:
        raise ValueError(f"cannot split {channels} channels into {num_splits} branches")
    base, rest = divmod(channels, num_splits)
    return [base + (1 if i < rest else 0) for i in range(num_splits)]


class PyramidDilatedInvertedResidual(CNNBlockBase):
    """Pyramid depth-wise dilated separable convolution (dilated-MobileNetV2 paper Sec. 2.3).

    1x1 expansion (factor t) + norm + PReLU; the expanded channels are split into
    ``len(dilation_rates)`` groups, group i filtered by a 3x3 depthwise conv with dilation
    ``dilation_rates[i]`` (+ norm + PReLU); the branch outputs are concatenated (optionally after
    hierarchical fusion, see below) and projected by a 1x1 conv + norm without activation.
    Residual when stride is 1 and the input and output channels agree (as MobileNetV2).

    Depthwise FLOPs and parameters equal those of one 3x3 depthwise conv on all channels (Table 1
    of the paper): the pyramid changes the receptive field only.

    Args:
        dilation_rates (sequence[int]): one rate per branch, e.g. ``(1, 2, 3, 4)``.
        hierarchical_fusion (bool): if True, branch i's output is added to the (fused) output of
            branch i-1 before concatenation (ESPNet's hierarchical feature fusion, against
            gridding artifacts). Only possible when all branches have the same width; the paper
            describes plain concatenation, which is the default (False).
        activation (str): "prelu" (the paper) after every conv except the projection.
    """

    def __init__(self, in_channels, out_channels, stride=1, *, expand_ratio=6,
                 dilation_rates: Sequence[int] = (1, 2, 3, 4), hierarchical_fusion=False,
                 norm="BN", activation="prelu"):
        super().__init__(in_channels, out_channels, stride)
        hidden = in_channels * expand_ratio
        self.expand = (
            ConvNormAct(in_channels, hidden, 1, norm=norm, activation=activation)
            if expand_ratio != 1
            else None
        )
        self.dilation_rates = tuple(int(r) for r in dilation_rates)
        self.splits = split_channels(hidden, len(self.dilation_rates))
        if hierarchical_fusion and len(set(self.splits)) != 1:
            raise ValueError(
                f"hierarchical fusion needs equal branch widths; {hidden} channels do not split "
                f"evenly into {len(self.dilation_rates)} branches"
            )
        self.hierarchical_fusion = hierarchical_fusion
        self.branches = nn.ModuleList(
            ConvNormAct(c, c, 3, stride, dilation=r, groups=c, norm=norm, activation=activation)
            for c, r in zip(self.splits, self.dilation_rates)
        )
        self.project = ConvNormAct(hidden, out_channels, 1, norm=norm, activation=None)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x):
        y = self.expand(x) if self.expand is not None else x
        # Branch i filters split i (indexed, not zipped: TorchScript cannot zip a ModuleList).
        parts = torch.split(y, self.splits, 1)
        outs: List[torch.Tensor] = []
        for i, branch in enumerate(self.branches):
            outs.append(branch(parts[i]))
        if self.hierarchical_fusion:
            for i in range(1, len(outs)):
                outs[i] = outs[i] + outs[i - 1]
        y = self.project(torch.cat(outs, dim=1))
        return x + y if self.use_residual else y


class MobileNetBackbone(Backbone):
    """A stem and four stages of :class:`CNNBlockBase` blocks, optionally a classifier head.

    Feature names and strides: ``stem`` (2), ``stage2`` (4), ``stage3`` (8), ``stage4`` (16),
    ``stage5`` (32; 16 when built with stage5 dilation 2); "linear" is the classifier output.
    Stages after the last requested feature are not built (unless there is a classifier).

    Args:
        stages (list[(str, list[CNNBlockBase])]): ``("stem", blocks), ("stage2", blocks), ...``.
        head (nn.Module or None): applied to stage5's output before global average pooling
            (MobileNetV2's 1x1 conv to 1280 channels); None for none.
        head_channels (int): channels after ``head`` (stage5's channels if ``head`` is None).
        num_classes (int or None): if given, global average pooling + a fully-connected layer
            to ``num_classes`` outputs, returned as feature "linear".
        out_features (list[str] or None): features to return; default ``["linear"]`` with a
            classifier, else the last stage.
        freeze_at (int): 0 trains everything; 1 freezes the stem; k >= 2 also freezes stage2 ...
            stage k (as ``MODEL.BACKBONE.FREEZE_AT`` for detectron2's ResNet).
    """

    def __init__(self, stages: List[Tuple[str, List[CNNBlockBase]]], *, head=None,
                 head_channels=None, num_classes=None, out_features=None, freeze_at=0):
        super().__init__()
        names = [name for name, _ in stages]
        if names != list(STAGE_NAMES[: len(names)]):
            raise ValueError(f"stages must be named {STAGE_NAMES}, got {names}")
        # None without a classifier (a None attribute lets TorchScript drop the classifier branch).
        self.num_classes = num_classes or None
        if out_features is None:
            out_features = ["linear"] if num_classes else [names[-1]]
        unknown = [f for f in out_features if f not in names and f != "linear"]
        if unknown or ("linear" in out_features and not num_classes):
            raise ValueError(f"out_features {out_features} not among {names} (+ 'linear' with a "
                             f"classifier)")
        last = len(names) - 1 if num_classes else max(names.index(f) for f in out_features)

        self._out_features = list(out_features)
        self._out_feature_strides: Dict[str, int] = {}
        self._out_feature_channels: Dict[str, int] = {}
        self.stage_names: List[str] = []
        stride = 1
        channels = None
        for name, blocks in stages[: last + 1]:
            for block in blocks:
                stride *= block.stride
                channels = block.out_channels
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
            self._out_feature_strides[name] = stride
            self._out_feature_channels[name] = channels

        if num_classes:
            self.head = head
            in_fc = head_channels if head is not None else channels
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.linear = nn.Linear(in_fc, num_classes)
            nn.init.normal_(self.linear.weight, std=0.01)
            nn.init.zeros_(self.linear.bias)
            self._out_feature_channels["linear"] = num_classes
        self.freeze(freeze_at)

    def forward(self, x) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: (N, 3, H, W) normalized images.
        Returns:
            dict[str, Tensor]: ``out_features`` -> (N, C, ceil(H / stride), ceil(W / stride))
            maps, and "linear" -> (N, num_classes) logits.
        """
        if x.dim() != 4:
            raise ValueError(f"expected a (N, C, H, W) tensor, got shape {list(x.shape)}")
        outputs: Dict[str, torch.Tensor] = {}
        # The stages in registration order (TorchScript has no getattr by a variable name).
        for name, stage in self.named_children():
            if name in self.stage_names:
                x = stage(x)
                if name in self._out_features:
                    outputs[name] = x
        if self.num_classes is not None:
            if self.head is not None:
                x = self.head(x)
            x = torch.flatten(self.avgpool(x), 1)
            x = self.linear(x)
            if "linear" in self._out_features:
                outputs["linear"] = x
        return outputs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name],
                            stride=self._out_feature_strides.get(name))
            for name in self._out_features
        }

    def freeze(self, freeze_at: int = 0):
        """Freeze the stem (``freeze_at >= 1``) and stages 2..``freeze_at``: parameters get
        ``requires_grad=False`` and BatchNorms become ``FrozenBatchNorm2d``. Returns self."""
        for idx, name in enumerate(self.stage_names, start=1):
            if freeze_at >= idx:
                for block in getattr(self, name):
                    block.freeze()
        return self


def stage5_dilation_args(stage5_dilation: int) -> Tuple[int, int]:
    """(stride of stage5's first block, dilation of stage5's depthwise convs) for a stage5
    dilation of 1 (stride 32) or 2 (stage5 kept at stride 16, as ``RES5_DILATION`` in ResNet)."""
    if stage5_dilation not in (1, 2):
        raise ValueError(f"stage5 dilation must be 1 or 2, got {stage5_dilation}")
    return (2, 1) if stage5_dilation == 1 else (1, 2)


def common_backbone_kwargs(cfg, input_shape) -> Dict:
    """Constructor arguments shared by every mobile backbone builder, from ``cfg.MODEL.MOBILENET``
    (WIDTH_MULT, NORM, STAGE5_DILATION, NUM_CLASSES, OUT_FEATURES) and ``MODEL.BACKBONE.FREEZE_AT``."""
    m = cfg.MODEL.MOBILENET
    return dict(
        width_mult=m.WIDTH_MULT,
        norm=m.NORM,
        in_channels=input_shape.channels,
        stage5_dilation=m.STAGE5_DILATION,
        num_classes=m.NUM_CLASSES or None,
        out_features=m.OUT_FEATURES,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
    )


def depthwise_separable_stages(stage_table, in_channels, width_mult, norm, stage5_dilation, first_blocks=None):
    """Stages of (name, [DepthwiseSeparable, ...]) from a table of (name, ((out, stride), ...)) rows,
    channels scaled by ``width_mult``; ``stage5_dilation`` 2 keeps stage5 at stride 16 (dilated).
    ``first_blocks`` maps a stage name to blocks placed before its table units (e.g. the stem conv).
    Returns the stages and the last channel count."""
    s5_stride, s5_dilation = stage5_dilation_args(stage5_dilation)
    first_blocks = first_blocks or {}
    c = in_channels
    stages = []
    for name, units in stage_table:
        blocks = list(first_blocks.get(name, []))
        for out, stride in units:
            dilation = 1
            if name == "stage5":
                stride = s5_stride if stride == 2 else stride
                dilation = s5_dilation
            out = scale_channels(out, width_mult)
            blocks.append(DepthwiseSeparable(c, out, stride, dilation=dilation, norm=norm, activation="relu"))
            c = out
        stages.append((name, blocks))
    return stages, c
