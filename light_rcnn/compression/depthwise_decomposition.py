"""Depth-wise decomposition of regular convolutions (He, Qian and Wang, "Depth-wise Decomposition
for Accelerating Separable Convolutions in Efficient Convolutional Neural Networks", CVPR-W 2019).

A regular k x k conv with weights W (n x c x kh x kw) is replaced by a depthwise k x k conv
(one kh x kw filter D_i per input channel) followed by a 1 x 1 conv (P, n x c), fitted to sampled
responses of the trained network instead of being trained from scratch:

* Sec. 3.1 -- response sampling: N output positions (paper: 10 per image from 300 images) are drawn
  from real network inputs; the k x k input patch under each is recorded by a forward pre-hook
  (:func:`collect_conv_inputs`), so only N x c x kh*kw numbers per layer are kept, never whole maps.
  X_i (N x kh*kw) is channel i of the patches, W_i (kh*kw x n) the weights reading it, and the
  layer's response is Y = sum_i X_i W_i.
* Sec. 3.2 -- channel decomposition [Zhang et al., TPAMI 2016], the baseline: the top r right
  singular vectors P of the (centered) responses give a k x k conv to r channels (W P) and a 1 x 1
  conv back to n (P^T) -- :class:`ChannelDecomposedConv`, :func:`channel_decomposition`.
* Sec. 3.3-3.4, Algorithm 1 -- per channel, SVD of Y_i = X_i W_i; with V_0 its first right
  singular vector, D_i = W_i V_0 and P_i = V_0 (the best rank-1 approximation of Y_i, Eckart-Young).
* Sec. 3.5, Algorithm 2 -- inter-channel error compensation: channels are processed in order and
  channel i approximates Y_i + E, E being the sum of the errors left by channels 0..i-1, so a later
  channel can absorb what earlier ones missed. See :func:`depthwise_decomposition` for how the
  paper's GSVD step is solved here.
* Sec. 3.6, Algorithm 3 -- multi-layer: layers are decomposed in execution order; the targets
  Y'_i = X'_i W_i come from the undecomposed network (X') while the regressors X_i come from the
  network whose earlier layers are already decomposed (:func:`decompose_layers`).
* Sec. 4.1 -- the random-data check: :func:`random_data_experiment`.

Two additions to the paper, both exact least-squares steps that never increase the sampled error:
the 1 x 1 conv's bias is set to the mean residual (the mean correction of channel decomposition
[Zhang et al.]), and rank-deficient patches (zero padding, dead ReLU channels) are handled with a
pseudo-inverse.
"""
import copy
import logging
import zlib
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = [
    "ChannelDecomposedConv",
    "DepthwiseSeparableConv",
    "LayerReport",
    "PAPER_RANDOM_DATA_ERRORS",
    "channel_decomposition",
    "channel_rank",
    "collect_conv_inputs",
    "collect_paired_conv_inputs",
    "decompose_conv",
    "decompose_layers",
    "depthwise_decomposition",
    "extract_patches",
    "format_random_data_experiment",
    "is_decomposable_conv",
    "make_decomposed_conv",
    "random_data_experiment",
    "replace_module",
]

logger = logging.getLogger(__name__)

METHODS = ("depthwise", "channel")


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------
def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _norm_and_activation(conv):
    """detectron2's ``layers.Conv2d`` applies ``.norm`` then ``.activation`` after the conv."""
    return getattr(conv, "norm", None), getattr(conv, "activation", None)


class _DecomposedConvBase(nn.Module):
    """A k x k conv, then a 1 x 1 conv with bias, then the replaced conv's norm and activation (same
    attribute names as detectron2's ``Conv2d``, so a checkpoint's ``<name>.norm.*`` keys keep
    loading). Subclasses name the two convs (their checkpoint keys) and return them from
    :meth:`_parts`."""

    def __init__(self, norm=None, activation=None):
        super().__init__()
        self.norm = norm
        self.activation = activation

    def _parts(self):
        """(the k x k conv, the 1 x 1 conv)."""
        raise NotImplementedError

    @staticmethod
    def _replaced_conv_kwargs(conv):
        """Geometry, norm and activation of ``conv`` (an ``nn.Conv2d``), as constructor kwargs."""
        norm, activation = _norm_and_activation(conv)
        return dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                    padding_mode=conv.padding_mode, norm=norm, activation=activation)

    def reset_parameters(self):
        """He init that keeps the output variance of the replaced conv: the k x k conv is linear
        with its weight's fan-in (k_h k_w when depthwise, C_in k_h k_w otherwise), the 1 x 1 conv
        has ReLU gain; zero bias."""
        spatial, pointwise = self._parts()
        nn.init.kaiming_normal_(spatial.weight, mode="fan_in", nonlinearity="linear")
        nn.init.kaiming_normal_(pointwise.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(pointwise.bias)

    @property
    def in_channels(self):
        return self._parts()[0].in_channels

    @property
    def out_channels(self):
        return self._parts()[1].out_channels

    def forward(self, x):
        spatial, pointwise = self._parts()
        x = pointwise(spatial(x))
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

    def _parts(self):
        return self.depthwise, self.pointwise


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

    def _parts(self):
        return self.reduce, self.expand

    @property
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
        return sum(conv_macs(c) for c in module._parts())
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


# ---------------------------------------------------------------------------------------------
# Response sampling (Sec. 3.1)
# ---------------------------------------------------------------------------------------------
def _geometry(conv):
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    dh, dw = conv.dilation
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            ph = pw = 0
        else:  # "same" (stride 1): PyTorch pads total // 2 before, the rest after
            ph, pw = dh * (kh - 1) // 2, dw * (kw - 1) // 2
    else:
        ph, pw = conv.padding
    return (kh, kw), (sh, sw), (ph, pw), (dh, dw)


def conv_output_size(conv, height, width):
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = _geometry(conv)
    if isinstance(conv.padding, str) and conv.padding == "same":
        return height, width
    return (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1


def extract_patches(x, conv, batch_index, out_y, out_x):
    """The k x k input patches under given output positions of ``conv``.

    Args:
        x: the conv's input (B, C, H, W).
        conv: an ``nn.Conv2d`` (its kernel, stride, padding and dilation are used; zero padding).
        batch_index, out_y, out_x: (N,) long tensors, positions in the output (B, H_out, W_out).
    Returns:
        (N, C, k_h * k_w) tensor, channel-major like ``conv.weight``'s last three axes, so that
        ``patches.flatten(1) @ conv.weight.flatten(1).T`` is the conv's output there (bias excluded).
    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = _geometry(conv)
    dev = x.device
    iy = out_y.to(dev)[:, None] * sh + torch.arange(kh, device=dev) * dh - ph  # (N, kh)
    ix = out_x.to(dev)[:, None] * sw + torch.arange(kw, device=dev) * dw - pw  # (N, kw)
    valid = ((iy >= 0) & (iy < x.shape[2]))[:, :, None] & ((ix >= 0) & (ix < x.shape[3]))[:, None, :]
    b = batch_index.to(dev)[:, None, None]
    patches = x[b, :, iy.clamp(0, x.shape[2] - 1)[:, :, None], ix.clamp(0, x.shape[3] - 1)[:, None, :]]
    patches = patches * valid[..., None].to(patches.dtype)  # (N, kh, kw, C); zero padding outside
    return patches.permute(0, 3, 1, 2).reshape(len(batch_index), x.shape[1], kh * kw)


def _num_images(batch):
    if isinstance(batch, (list, tuple)):
        return len(batch)
    if torch.is_tensor(batch):
        return batch.shape[0]
    raise TypeError(f"a batch must be a list of detectron2 input dicts or a tensor, got {type(batch).__name__}")


def _sample_positions(shape, num_images, patches_per_image, generator):
    """``patches_per_image`` positions per image when the batch axis holds images; otherwise (e.g.
    ROI features, whose batch axis holds boxes) the same total drawn over all of (B, H_out, W_out)."""
    b, h, w = shape
    total = num_images * patches_per_image
    if b == num_images:
        batch_index = torch.arange(b).repeat_interleave(patches_per_image)
    else:
        batch_index = torch.randint(b, (total,), generator=generator)
    return batch_index, torch.randint(h, (total,), generator=generator), torch.randint(w, (total,), generator=generator)


class _PatchRecorder:
    """Forward pre-hook on one conv: at the first call after :meth:`arm`, keeps the input patches at
    positions drawn from a generator seeded by (seed, batch, layer name), so two networks that see
    the same batch sample the same positions."""

    def __init__(self, name, conv, patches_per_image, seed):
        # a replacement reads its input with its first (k x k) conv's geometry
        geometry = conv._parts()[0] if isinstance(conv, _DecomposedConvBase) else conv
        self.name, self.conv, self.ppi, self.seed = name, geometry, patches_per_image, seed
        self.chunks, self.shapes = [], []
        self._armed = None
        self._handle = conv.register_forward_pre_hook(self._hook)

    def arm(self, batch_index, num_images):
        self._armed = (batch_index, num_images)

    def _hook(self, module, args):
        if self._armed is None:
            return None
        batch_index, num_images = self._armed
        self._armed = None
        x = args[0]
        h, w = conv_output_size(self.conv, x.shape[2], x.shape[3])
        g = torch.Generator().manual_seed((self.seed * 1000003 + batch_index * 7919 + zlib.crc32(self.name.encode()))
                                          % (2 ** 63))
        positions = _sample_positions((x.shape[0], h, w), num_images, self.ppi, g)
        self.shapes.append(tuple(x.shape))
        self.chunks.append(extract_patches(x.detach(), self.conv, *positions).float().cpu())
        return None

    def result(self):
        if not self.chunks:
            raise RuntimeError(f"layer '{self.name}' was never called by the model on the sampled inputs")
        return torch.cat(self.chunks)

    def remove(self):
        self._handle.remove()


@contextmanager
def _eval_mode(*models):
    modes = [m.training for m in models]
    try:
        for m in models:
            m.eval()
        yield
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)


def _limited(batches, num_images):
    """Yield batches until ``num_images`` images have been seen (the last batch may pass it)."""
    seen = 0
    if num_images is not None and num_images <= 0:
        raise ValueError(f"num_images={num_images}: expected a positive number")
    for batch in batches:
        if num_images is not None and seen >= num_images:
            return
        yield batch
        seen += _num_images(batch)


def collect_conv_inputs(model, names, batches, num_images=None, patches_per_image=10, seed=0):
    """Sample input patches of the named convs while ``model`` runs (eval mode, no grad) on batches.

    Args:
        model: any ``nn.Module`` called as ``model(batch)`` (a detectron2 meta-arch takes a list of
            input dicts; a plain network a (B, C, H, W) tensor).
        names: qualified names of ``nn.Conv2d`` submodules (or of their decomposed replacements,
            sampled with the geometry of their k x k conv).
        batches: iterable of batches, e.g. a detectron2 data loader.
        num_images: stop after this many images (None: the whole iterable).
        patches_per_image: output positions sampled per image and layer (paper: 10); only the first
            call of a layer per batch is sampled (a ROI head runs once more on the final boxes).
    Returns:
        dict name -> (N, C_in, k_h * k_w) float32 CPU tensor, N = images * patches_per_image.
    """
    recorders = [_PatchRecorder(n, model.get_submodule(n), patches_per_image, seed) for n in names]
    try:
        with _eval_mode(model), torch.no_grad():
            for i, batch in enumerate(_limited(batches, num_images)):
                for r in recorders:
                    r.arm(i, _num_images(batch))
                model(batch)
        return {r.name: r.result() for r in recorders}
    finally:
        for r in recorders:
            r.remove()


@contextmanager
def _shared_proposals(source, target):
    """While active, ``target.proposal_generator`` returns what ``source.proposal_generator`` returned
    last, so both networks' ROI heads see the same boxes (needs ``source`` to run first)."""
    src, dst = getattr(source, "proposal_generator", None), getattr(target, "proposal_generator", None)
    if not isinstance(src, nn.Module) or not isinstance(dst, nn.Module):
        yield
        return
    store = {}
    handles = [
        src.register_forward_hook(lambda m, args, out: store.__setitem__("out", out)),
        dst.register_forward_hook(lambda m, args, out: store.pop("out")),
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def collect_paired_conv_inputs(original, decomposed, name, batches, num_images=None, patches_per_image=10, seed=0):
    """Patches of layer ``name`` at the same positions in two networks fed the same batches
    (Algorithm 3's X', from ``original``, and X, from the partly decomposed ``decomposed``).

    For a detectron2 meta-arch the decomposed network's proposal generator is made to return the
    original's proposals, so ROI-head layers see the same boxes in both (their inputs would
    otherwise not correspond). Returns (X', X), each (N, C_in, k_h * k_w).
    """
    rec_o = _PatchRecorder(name, original.get_submodule(name), patches_per_image, seed)
    rec_d = _PatchRecorder(name, decomposed.get_submodule(name), patches_per_image, seed)
    try:
        with _eval_mode(original, decomposed), torch.no_grad(), _shared_proposals(original, decomposed):
            for i, batch in enumerate(_limited(batches, num_images)):
                n = _num_images(batch)
                rec_o.arm(i, n)
                original(batch)
                rec_d.arm(i, n)
                decomposed(batch)
                if rec_o.shapes[-1:] != rec_d.shapes[-1:]:
                    raise RuntimeError(
                        f"layer '{name}' got inputs of shape {rec_o.shapes[-1:]} in the original network and "
                        f"{rec_d.shapes[-1:]} in the decomposed one; Algorithm 3 needs matching positions"
                    )
        return rec_o.result(), rec_d.result()
    finally:
        rec_o.remove()
        rec_d.remove()


# ---------------------------------------------------------------------------------------------
# Algorithms 1-3 and channel decomposition (Sec. 3.2-3.6)
# ---------------------------------------------------------------------------------------------
def _relative_error(target, approx):
    denom = torch.linalg.norm(target)
    return float(torch.linalg.norm(target - approx) / denom) if denom > 0 else float(torch.linalg.norm(approx))


def depthwise_decomposition(weight, inputs, target_inputs=None, compensate=True, fit_bias=True):
    """Fit a depthwise kernel D and a pointwise matrix P to sampled responses (Algorithms 1-3).

    Channel i's contribution Y_i = X_i W_i (N x n, rank <= k_h k_w) is replaced by X_i D_i P_i^T.

    * ``compensate=False`` and no ``target_inputs``: Algorithm 1 as written. V_0 = first right
      singular vector of Y_i, D_i = W_i V_0, P_i = V_0 (computed from the k_h k_w x n matrix
      Lambda^(1/2) Q^T W_i, where X_i^T X_i = Q Lambda Q^T, which has the same right singular
      vectors as Y_i -- the N x n SVD is never formed).
    * ``compensate=True``: Algorithm 2. Channel i approximates T_i = Y_i + E, E = sum_{k<i} E_k,
      E_k = Y_k - X_k D_k P_k^T (the signed residual: the paper's |.| in Eq. 8 would make the
      errors add up instead of cancel, so we read it as a typo), i.e. it solves
          min_{D_i, P_i} || T_i - X_i D_i P_i^T ||_F.
      The paper calls this GSVD(T_i, Y_i) and cites Takane & Hwang's redundancy analysis [59];
      it is a rank-1 reduced-rank regression of T_i on X_i, whose exact solution is used here
      instead of a GSVD routine (none ships with torch, and the closed form is cheaper):
      with B = X_i^+ T_i (least squares), the fitted part X_i B = P_X T_i is split off
      (||T - X B'||^2 = ||T - P_X T||^2 + ||P_X T - X B'||^2 for every B'), so the optimum is the
      best rank-1 approximation of P_X T_i: P_i = its first right singular vector v (the first
      right singular vector of Lambda^(-1/2) Q^T X_i^T T_i) and D_i = B v.
    * ``target_inputs`` given: Algorithm 3. Targets use the undecomposed network's inputs,
      T_i = X'_i W_i (+ E), regressors the decomposed network's X_i; E starts at zero in each layer
      because the previous layers' error is already the difference between X and X' (the paper's
      E^(l-1) is N x n_(l-1) and cannot be added to an N x n_l matrix as written).

    Args:
        weight: (n, c, k_h, k_w) conv weight.
        inputs: (N, c, k_h k_w) sampled input patches X (from :func:`collect_conv_inputs`).
        target_inputs: (N, c, k_h k_w) patches X' of the undecomposed network, or None (= inputs).
        compensate: Algorithm 2/3's inter-channel error compensation.
        fit_bias: return the least-squares bias correction (mean residual); zeros otherwise.
    Returns:
        dict with ``depthwise`` (c, 1, k_h, k_w), ``pointwise`` (n, c, 1, 1), ``bias_delta`` (n,)
        (to add to the original bias) and ``relative_error`` ||Y' - Y_hat||_F / ||Y'||_F on the samples.
    """
    n, c, kh, kw = weight.shape
    k2 = kh * kw
    if inputs.shape[1:] != (c, k2):
        raise ValueError(f"inputs of shape {tuple(inputs.shape)} do not match a weight of shape {tuple(weight.shape)}")
    paper_alg1 = target_inputs is None and not compensate
    targets = inputs if target_inputs is None else target_inputs
    w = weight.detach().to("cpu", torch.float64).reshape(n, c, k2)
    num = inputs.shape[0]
    depthwise = torch.zeros(c, k2, dtype=torch.float64)
    pointwise = torch.zeros(n, c, dtype=torch.float64)
    z = torch.zeros(num, c, dtype=torch.float64)  # depthwise outputs X_i D_i
    y_target = torch.zeros(num, n, dtype=torch.float64)
    err = torch.zeros(num, n, dtype=torch.float64)
    for i in range(c):
        x_i = inputs[:, i].to(torch.float64)
        w_i = w[:, i].T  # (k2, n)
        y_i = (targets[:, i].to(torch.float64) @ w_i) if target_inputs is not None else x_i @ w_i
        y_target += y_i
        t_i = y_i + err if compensate else y_i
        lam, q = torch.linalg.eigh(x_i.T @ x_i)
        keep = lam > lam.max() * 1e-12
        if lam.max() <= 0 or not keep.any():
            if compensate:
                err = t_i  # this channel contributes nothing; its whole target carries over
            continue
        q, lam = q[:, keep], lam[keep]
        xt_t = x_i.T @ t_i  # (k2, n)
        qt_xt_t = q.T @ xt_t
        m = qt_xt_t / lam.sqrt()[:, None]
        v = torch.linalg.svd(m, full_matrices=False).Vh[0]  # (n,)
        d = w_i @ v if paper_alg1 else q @ ((qt_xt_t @ v) / lam)
        depthwise[i], pointwise[:, i] = d, v
        z[:, i] = x_i @ d
        if compensate:
            err = t_i - torch.outer(z[:, i], v)
    approx = z @ pointwise.T
    bias_delta = (y_target - approx).mean(0) if fit_bias else torch.zeros(n, dtype=torch.float64)
    return {
        "depthwise": depthwise.reshape(c, 1, kh, kw),
        "pointwise": pointwise.reshape(n, c, 1, 1),
        "bias_delta": bias_delta,
        "relative_error": _relative_error(y_target, approx + bias_delta),
    }


def _flat_responses(patches, weight_2d, chunk=4096):
    """patches (N, c, k2) @ weight_2d.T (c k2 -> n), in float32 chunks, returned in float64."""
    w = weight_2d.to(torch.float32)
    return torch.cat([(p.flatten(1).to(torch.float32) @ w.T).double() for p in patches.split(chunk)])


def channel_decomposition(weight, inputs, rank, target_inputs=None, fit_bias=True):
    """Channel decomposition [Zhang et al. 2016] from the SVD of the responses (paper Sec. 3.2).

    With Y = X W the (N x n) responses, y_bar their mean and P (n x r) the first r right singular
    vectors of Y - y_bar (Eq. 2-3), the k x k conv becomes W_1 = W P (to r channels, Eq. 4) followed
    by W_2 = P^T (1 x 1, back to n) with bias y_bar (I - P P^T) (the mean correction of [73]), i.e.
    Y_hat = Y P P^T + y_bar (I - P P^T). With ``target_inputs`` (multi-layer), P still comes from
    the decomposed network's own responses and only the bias is fitted to the original's targets
    (the asymmetric solver of [73] is not implemented).

    Args:
        weight: (n, c, k_h, k_w); inputs / target_inputs: (N, c, k_h k_w); rank: r <= n.
    Returns:
        dict with ``reduce`` (r, c, k_h, k_w), ``expand`` (n, r, 1, 1), ``bias_delta`` (n,),
        ``relative_error`` on the samples.
    """
    n, c, kh, kw = weight.shape
    if not 1 <= rank <= n:
        raise ValueError(f"rank={rank}: expected 1 <= rank <= C_out={n}")
    w2 = weight.detach().to("cpu", torch.float64).reshape(n, -1)
    y = _flat_responses(inputs, w2)
    y_target = y if target_inputs is None else _flat_responses(target_inputs, w2)
    centered = y - y.mean(0)
    lam, vecs = torch.linalg.eigh(centered.T @ centered)
    p = vecs[:, torch.argsort(lam, descending=True)[:rank]]  # (n, r)
    approx = y @ p @ p.T
    bias_delta = (y_target - approx).mean(0) if fit_bias else torch.zeros(n, dtype=torch.float64)
    return {
        "reduce": (p.T @ w2).reshape(rank, c, kh, kw),
        "expand": p.reshape(n, rank, 1, 1),
        "bias_delta": bias_delta,
        "relative_error": _relative_error(y_target, approx + bias_delta),
    }


def decompose_conv(conv, inputs, target_inputs=None, method="depthwise", compensate=True, rank=None,
                   fit_bias=True):
    """Replacement of ``conv`` fitted to sampled patches; returns (module, relative_error).

    ``method`` "depthwise" -> :class:`DepthwiseSeparableConv` (:func:`depthwise_decomposition`),
    "channel" -> :class:`ChannelDecomposedConv` of width ``rank`` (:func:`channel_decomposition`).
    The module takes ``conv``'s norm and activation, device and dtype.
    """
    if not is_decomposable_conv(conv):
        raise ValueError(f"{conv}: expected an nn.Conv2d with groups == 1, a kernel > 1 and zero padding")
    bias = conv.bias.detach().to("cpu", torch.float64) if conv.bias is not None else 0.0
    if method == "depthwise":
        fit = depthwise_decomposition(conv.weight, inputs, target_inputs, compensate=compensate, fit_bias=fit_bias)
        new = DepthwiseSeparableConv.from_conv(conv)
        fitted = fit["depthwise"], fit["pointwise"]
    elif method == "channel":
        if rank is None:
            raise ValueError("method 'channel' needs a rank")
        fit = channel_decomposition(conv.weight, inputs, rank, target_inputs, fit_bias=fit_bias)
        new = ChannelDecomposedConv.from_conv(conv, rank)
        fitted = fit["reduce"], fit["expand"]
    else:
        raise ValueError(f"decomposition method {method!r}: expected one of {METHODS}")
    new = new.to(device=conv.weight.device, dtype=conv.weight.dtype)
    spatial, pointwise = new._parts()
    with torch.no_grad():
        spatial.weight.copy_(fitted[0])
        pointwise.weight.copy_(fitted[1])
        pointwise.bias.copy_(fit["bias_delta"] + bias)
    return new, fit["relative_error"]


@dataclass
class LayerReport:
    """One decomposed layer: what replaced it and the relative error on its sampled responses."""

    name: str
    method: str
    in_channels: int
    out_channels: int
    kernel_size: tuple
    macs_before: int
    macs_after: int
    relative_error: float
    num_samples: int

    @property
    def speedup(self):
        return self.macs_before / self.macs_after

    def as_dict(self):
        return asdict(self)


def _reiterable(batches, num_images):
    """A one-shot iterator is read once (up to ``num_images`` images) into a list; a re-iterable
    (list, DataLoader) is used as is."""
    if iter(batches) is batches:
        return list(_limited(batches, num_images))
    return batches


def _execution_order(model, names, batches):
    order = []
    handles = [model.get_submodule(n).register_forward_pre_hook(
        lambda m, a, n=n: order.append(n) if n not in order else None) for n in names]
    try:
        with _eval_mode(model), torch.no_grad():
            model(next(iter(batches)))
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in names if n not in order]
    if missing:
        raise ValueError(f"layers {missing} are never called by the model in inference; they cannot be sampled")
    return order


def decompose_layers(model, names, batches, method="depthwise", compensate=True, multi_layer=True,
                     rank_ratio=0.25, num_images=300, patches_per_image=10, seed=0, fit_bias=True):
    """Replace the named convs of ``model`` in place by decompositions fitted to sampled responses.

    Layers are processed in execution order (found by one forward pass). With ``multi_layer`` and
    more than one layer this is Algorithm 3: the regressors X of layer l are sampled from ``model``
    whose earlier layers are already decomposed, the targets X' from an untouched copy, on the same
    batches and positions (:func:`collect_paired_conv_inputs`). Without it every layer is fitted to
    the original network's inputs (Algorithm 1 or 2 per layer, independently).

    Args:
        model: network called as ``model(batch)``; ``names``: qualified names of its convs.
        batches: iterable of batches (re-iterated once per layer; a one-shot iterator is cached).
        method / compensate / rank_ratio: see :func:`decompose_conv` and :func:`channel_rank`.
        num_images / patches_per_image / seed: response sampling (Sec. 3.1: 300, 10).
    Returns:
        list of :class:`LayerReport`, in execution order.
    """
    if method not in METHODS:
        raise ValueError(f"decomposition method {method!r}: expected one of {METHODS}")
    if not names:
        return []
    for n in names:
        if not is_decomposable_conv(model.get_submodule(n)):
            raise ValueError(f"'{n}' is not an nn.Conv2d with groups == 1, a kernel > 1 and zero padding")
    batches = _reiterable(batches, num_images)
    order = _execution_order(model, names, batches)
    original = copy.deepcopy(model) if len(order) > 1 else model
    sample = dict(num_images=num_images, patches_per_image=patches_per_image, seed=seed)
    reports = []
    for index, name in enumerate(order):
        conv = original.get_submodule(name)
        if multi_layer and index > 0:
            targets, inputs = collect_paired_conv_inputs(original, model, name, batches, **sample)
        else:
            inputs, targets = collect_conv_inputs(original, [name], batches, **sample)[name], None
        rank = channel_rank(conv, rank_ratio) if method == "channel" else None
        new, error = decompose_conv(conv, inputs, targets, method=method, compensate=compensate, rank=rank,
                                    fit_bias=fit_bias)
        if original is not model:
            # the replacement owns its norm/activation: take the ones of the network being modified
            new.norm, new.activation = _norm_and_activation(model.get_submodule(name))
        replace_module(model, name, new)
        report = LayerReport(name, method, conv.in_channels, conv.out_channels, tuple(conv.kernel_size),
                             macs_per_position(conv), macs_per_position(new), error, inputs.shape[0])
        logger.info("decomposed %s (%s, %.1fx fewer multiply-adds): relative error %.4f",
                    name, method, report.speedup, error)
        reports.append(report)
    return reports


# ---------------------------------------------------------------------------------------------
# Sec. 4.1: random data
# ---------------------------------------------------------------------------------------------
PAPER_RANDOM_DATA_ERRORS = {
    "channel decomposition": 0.887,
    "depth-wise decomposition": 0.914,
    "depth-wise decomposition with compensation": 0.906,
}


def random_data_experiment(channels=256, kernel_size=3, num_images=300, patches_per_image=10, feature_size=14,
                           trials=3, seed=0):
    """Sec. 4.1's "single layer 9x acceleration with random data" experiment.

    A c -> c k x k conv with i.i.d. N(0, 1) weights reads i.i.d. N(0, 1) feature maps (``num_images``
    maps of ``feature_size`` squared, zero padding); ``patches_per_image`` positions per map are
    sampled exactly as for a real network (N = 3000 by default). It is replaced by (a) a depthwise
    separable conv with Algorithm 1, (b) the same with Algorithm 2, and (c) a channel decomposition
    whose width r is the largest with no more multiply-adds than (a) (c = 256, k = 3: a 8.7x, c r = 26,
    8.9x fewer). Reported: mean and std over ``trials`` draws of ||Y - Y_hat||_F / ||Y||_F on the N
    fitted samples (what the algorithms minimize, as in the paper) and on N fresh held-out samples.

    Interpretation: random responses have no redundancy to exploit. Y_i = X_i W_i has k^2 almost
    equally strong directions (a 9 x n Gaussian matrix), so any rank-1 D_i P_i^T keeps only the top
    singular value's share of the energy, ~16% for n = 256, and the error is ~sqrt(1 - 0.16) ~ 0.92;
    channel decomposition keeps r of n directions of an almost isotropic Y, with the same kind of
    result. All errors therefore sit near 0.9, as the paper's 0.887 / 0.914 / 0.906 do: the check is
    that the implementation reaches the level the dimensions allow, not a statement about real
    networks (whose responses are redundant; the paper's ImageNet results). The paper gives neither
    c, n nor N, and the figures depend on them.
    On the fitted samples compensation lowers the error (here 0.921 -> 0.894 at c = n = 256,
    N = 3000; paper 0.914 -> 0.906), but on held-out samples it raises it (0.923 -> 0.949):
    with independent channels the residual of the other channels is uncorrelated with X_i, so what
    channel i fits of it is the sampling noise of a finite N (k^2 regressors per channel, c of them).
    The same happens, less, to channel decomposition (0.900 fitted, 0.925 held-out). On real
    networks, whose channels are correlated, compensation has real signal to fit; use enough
    samples (N >> c k^2 / n) and judge a decomposition on held-out data or by fine-tuned accuracy.

    Returns:
        dict method -> (mean, std) on the fitted samples, keys as :data:`PAPER_RANDOM_DATA_ERRORS`;
        ``"held_out"``: the same dict on held-out samples; ``"settings"``.
    """
    g = torch.Generator().manual_seed(seed)
    k2 = kernel_size * kernel_size
    dw_macs = channels * k2 + channels * channels
    rank = dw_macs // (channels * k2 + channels)
    errors = {key: [] for key in PAPER_RANDOM_DATA_ERRORS}
    held_out = {key: [] for key in PAPER_RANDOM_DATA_ERRORS}
    for _ in range(trials):
        conv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, bias=False)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
        fit_x, test_x = [], []
        for out in (fit_x, test_x):
            maps = torch.randn(num_images, channels, feature_size, feature_size, generator=g)
            positions = _sample_positions((num_images, feature_size, feature_size), num_images, patches_per_image, g)
            out.append(extract_patches(maps, conv, *positions))
            del maps
        x, x_test = fit_x[0], test_x[0]
        w2 = conv.weight.detach().double().reshape(channels, -1)
        y_test = _flat_responses(x_test, w2)
        fits = {
            "channel decomposition": channel_decomposition(conv.weight, x, rank),
            "depth-wise decomposition": depthwise_decomposition(conv.weight, x, compensate=False),
            "depth-wise decomposition with compensation": depthwise_decomposition(conv.weight, x, compensate=True),
        }
        for key, fit in fits.items():
            errors[key].append(fit["relative_error"])
            if "reduce" in fit:
                approx = _flat_responses(x_test, fit["expand"].flatten(1) @ fit["reduce"].flatten(1))
            else:
                approx = _flat_responses(x_test, (fit["pointwise"].flatten(1)[:, :, None]
                                                  * fit["depthwise"].flatten(1)[None]).flatten(1))
            held_out[key].append(_relative_error(y_test, approx + fit["bias_delta"]))

    def mean_std(values):
        t = torch.tensor(values, dtype=torch.float64)
        return float(t.mean()), float(t.std()) if len(values) > 1 else 0.0

    result = {key: mean_std(values) for key, values in errors.items()}
    result["held_out"] = {key: mean_std(values) for key, values in held_out.items()}
    result["settings"] = {
        "channels": channels, "kernel_size": kernel_size, "num_samples": num_images * patches_per_image,
        "trials": trials, "channel_rank": rank,
        "depthwise_speedup": channels * channels * k2 / dw_macs,
        "channel_speedup": channels * channels * k2 / (rank * (channels * k2 + channels)),
    }
    return result


def format_random_data_experiment(result):
    """Our figures next to the paper's, one line per method."""
    s = result["settings"]
    lines = [
        f"Random data, one {s['channels']} -> {s['channels']} {s['kernel_size']}x{s['kernel_size']} conv, "
        f"N = {s['num_samples']} samples, {s['trials']} trials; depth-wise {s['depthwise_speedup']:.2f}x, "
        f"channel (r = {s['channel_rank']}) {s['channel_speedup']:.2f}x fewer multiply-adds",
        f"{'relative error':<46}{'ours, fitted':>20}{'ours, held-out':>20}{'paper':>8}",
    ]
    for key, paper in PAPER_RANDOM_DATA_ERRORS.items():
        (mean, std), (h_mean, h_std) = result[key], result["held_out"][key]
        lines.append(f"{key:<46}{mean:>11.4f} +- {std:.0e}{h_mean:>11.4f} +- {h_std:.0e}{paper:>8.3f}")
    return "\n".join(lines)
