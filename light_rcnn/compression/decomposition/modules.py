"""The modules that replace a regular k x k conv (He, Qian and Wang, "Depth-wise Decomposition for
Accelerating Separable Convolutions in Efficient Convolutional Neural Networks", CVPR-W 2019):
:class:`DepthwiseSeparableConv` (Sec. 3.3-3.4) and the channel-decomposition baseline
:class:`ChannelDecomposedConv` (Sec. 3.2), and :func:`replace_module`, which swaps one into a model.
"""
import torch
from torch import nn

__all__ = [
    "ChannelDecomposedConv",
    "DECOMPOSED_TYPES",
    "DepthwiseSeparableConv",
    "METHODS",
    "channel_rank",
    "is_decomposable_conv",
    "macs_per_position",
    "make_decomposed_conv",
    "replace_module",
    "spatial_conv",
]

# MODEL.DECOMPOSE.METHOD values.
METHODS = ("depthwise", "channel")


def norm_and_activation(conv):
    """detectron2's ``layers.Conv2d`` applies ``.norm`` then ``.activation`` after the conv."""
    return getattr(conv, "norm", None), getattr(conv, "activation", None)


class _DecomposedConvBase(nn.Module):
    """A k x k conv, then a 1 x 1 conv with bias, then the replaced conv's norm and activation (same
    attribute names as detectron2's ``Conv2d``, so a checkpoint's ``<name>.norm.*`` keys keep
    loading). Subclasses name the two convs (their checkpoint keys) and return them from
    :meth:`parts`."""

    def __init__(self, norm=None, activation=None):
        super().__init__()
        self.norm = norm
        self.activation = activation

    def parts(self):
        """(the k x k conv, the 1 x 1 conv)."""
        raise NotImplementedError

    def decomposed_conv(self, x):
        """The k x k conv then the 1 x 1 conv, without norm and activation (what :meth:`parts`
        returns, applied; a separate method because TorchScript cannot call a method that returns
        modules)."""
        raise NotImplementedError

    @staticmethod
    def _replaced_conv_kwargs(conv):
        """Geometry, norm and activation of ``conv`` (an ``nn.Conv2d``), as constructor kwargs."""
        norm, activation = norm_and_activation(conv)
        return dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                    padding_mode=conv.padding_mode, norm=norm, activation=activation)

    def reset_parameters(self):
        """He init that keeps the output variance of the replaced conv: the k x k conv is linear
        with its weight's fan-in (k_h k_w when depthwise, C_in k_h k_w otherwise), the 1 x 1 conv
        has ReLU gain; zero bias."""
        spatial, pointwise = self.parts()
        nn.init.kaiming_normal_(spatial.weight, mode="fan_in", nonlinearity="linear")
        nn.init.kaiming_normal_(pointwise.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(pointwise.bias)

    # Build-time metadata, not part of a scripted model (TorchScript would compile a property).
    @property
    @torch.jit.unused
    def in_channels(self):
        return self.parts()[0].in_channels

    @property
    @torch.jit.unused
    def out_channels(self):
        return self.parts()[1].out_channels

    def forward(self, x):
        x = self.decomposed_conv(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


class DepthwiseSeparableConv(_DecomposedConvBase):
    """A regular k x k conv expanded into a depthwise-separable pair (paper Sec. 3.3-3.4, Fig. 2).

    ``depthwise``: k x k conv, C_in -> C_in, ``groups=C_in``, no bias, with the replaced conv's
    stride, padding and dilation; ``pointwise``: 1 x 1 conv C_in -> C_out with bias; then the
    replaced conv's ``norm`` and ``activation`` when it was a detectron2 ``Conv2d`` that had them.

    Input (B, C_in, H, W) -> output (B, C_out, H_out, W_out), H_out / W_out exactly those of the
    replaced conv. Multiply-adds per output position: C_in k_h k_w + C_in C_out instead of
    C_in C_out k_h k_w (8-9x fewer for 3 x 3 and C_out >> 9).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 padding_mode="zeros", norm=None, activation=None):
        super().__init__(norm, activation)
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size, stride=stride, padding=padding,
                                   dilation=dilation, groups=in_channels, bias=False, padding_mode=padding_mode)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=True)
        self.reset_parameters()

    @classmethod
    def from_conv(cls, conv):
        """Same geometry, norm and activation as ``conv`` (an ``nn.Conv2d``); fresh weights."""
        return cls(conv.in_channels, conv.out_channels, conv.kernel_size, **cls._replaced_conv_kwargs(conv))

    def parts(self):
        return self.depthwise, self.pointwise

    def decomposed_conv(self, x):
        return self.pointwise(self.depthwise(x))


class ChannelDecomposedConv(_DecomposedConvBase):
    """Channel decomposition [Zhang et al. 2016] of a k x k conv, the paper's baseline (Sec. 3.2,
    Fig. 1e).

    ``reduce``: k x k conv C_in -> r (the replaced conv's stride, padding, dilation), no bias;
    ``expand``: 1 x 1 conv r -> C_out with bias; then the replaced conv's norm and activation.
    Input (B, C_in, H, W) -> output (B, C_out, H_out, W_out). Multiply-adds per output position:
    r (C_in k_h k_w + C_out).
    """

    def __init__(self, in_channels, out_channels, rank, kernel_size, stride=1, padding=0, dilation=1,
                 padding_mode="zeros", norm=None, activation=None):
        super().__init__(norm, activation)
        if rank < 1:
            raise ValueError(f"rank={rank}: expected a positive width of the reduced k x k conv")
        self.reduce = nn.Conv2d(in_channels, rank, kernel_size, stride=stride, padding=padding,
                                dilation=dilation, bias=False, padding_mode=padding_mode)
        self.expand = nn.Conv2d(rank, out_channels, 1, bias=True)
        self.reset_parameters()

    @classmethod
    def from_conv(cls, conv, rank):
        """Same geometry, norm and activation as ``conv`` (an ``nn.Conv2d``); fresh weights."""
        return cls(conv.in_channels, conv.out_channels, rank, conv.kernel_size, **cls._replaced_conv_kwargs(conv))

    def parts(self):
        return self.reduce, self.expand

    def decomposed_conv(self, x):
        return self.expand(self.reduce(x))

    @property
    @torch.jit.unused
    def rank(self):
        return self.reduce.out_channels


DECOMPOSED_TYPES = (DepthwiseSeparableConv, ChannelDecomposedConv)


def is_decomposable_conv(module):
    """A regular (``groups == 1``) ``nn.Conv2d`` with a kernel larger than 1 x 1 and zero padding."""
    return (
        isinstance(module, nn.Conv2d)
        and module.groups == 1
        and any(k > 1 for k in module.kernel_size)
        and module.padding_mode == "zeros"
    )


def channel_rank(conv, ratio):
    """Width r = max(1, round(ratio * C_out)) of a channel decomposition, at most C_out."""
    if not ratio > 0:
        raise ValueError(f"channel rank ratio {ratio!r}: expected a number > 0")
    return int(min(conv.out_channels, max(1, round(ratio * conv.out_channels))))


def make_decomposed_conv(conv, method="depthwise", rank_ratio=0.25):
    """Freshly initialized replacement of ``conv`` on its device and dtype."""
    if method == "depthwise":
        new = DepthwiseSeparableConv.from_conv(conv)
    elif method == "channel":
        new = ChannelDecomposedConv.from_conv(conv, channel_rank(conv, rank_ratio))
    else:
        raise ValueError(f"decomposition method {method!r}: expected one of {METHODS}")
    return new.to(device=conv.weight.device, dtype=conv.weight.dtype)


def macs_per_position(module):
    """Multiply-adds per output position of a conv or of a decomposed replacement."""
    def conv_macs(c):
        return c.in_channels // c.groups * c.out_channels * c.kernel_size[0] * c.kernel_size[1]

    if isinstance(module, _DecomposedConvBase):
        return sum(conv_macs(c) for c in module.parts())
    return conv_macs(module)


def replace_module(root, name, new):
    """Set submodule ``name`` (qualified, e.g. ``roi_heads.subnet.conv1``) of ``root`` to ``new``.

    Some modules also keep their children in plain Python lists (LightRCNNSubnetHead.convs,
    detectron2's FPN lateral_convs); every list or tuple attribute of every module of ``root`` that
    holds the old module is updated too, or their forward would keep calling the old conv.
    Returns the old module.
    """
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    old = getattr(parent, child)
    setattr(parent, child, new)
    for module in root.modules():
        for key, value in list(vars(module).items()):
            if key in ("_modules", "_parameters", "_buffers"):
                continue
            if isinstance(value, list) and any(v is old for v in value):
                value[:] = [new if v is old else v for v in value]
            elif isinstance(value, tuple) and any(v is old for v in value):
                object.__setattr__(module, key, tuple(new if v is old else v for v in value))
    return old


def spatial_conv(module):
    """The k x k conv that reads ``module``'s input: ``module`` itself for an ``nn.Conv2d``, the first
    (k x k) conv of a decomposed replacement."""
    return module.parts()[0] if isinstance(module, _DecomposedConvBase) else module
