"""The solvers of depth-wise decomposition (He et al., CVPR-W 2019, Sec. 3.2-3.6).

* Sec. 3.2 -- channel decomposition [Zhang et al., TPAMI 2016], the baseline: the top r right
  singular vectors P of the (centered) responses give a k x k conv to r channels (W P) and a 1 x 1
  conv back to n (P^T) -- :func:`channel_decomposition`.
* Sec. 3.3-3.4, Algorithm 1 -- per channel, SVD of Y_i = X_i W_i (X_i: N x kh*kw, channel i of the
  sampled patches; W_i: kh*kw x n, the weights reading it); with V_0 its first right singular
  vector, D_i = W_i V_0 and P_i = V_0 (the best rank-1 approximation of Y_i, Eckart-Young).
* Sec. 3.5, Algorithm 2 -- inter-channel error compensation: channels are processed in order and
  channel i approximates Y_i + E, E being the sum of the errors left by channels 0..i-1. See
  :func:`depthwise_decomposition` for how the paper's GSVD step is solved here.
* Sec. 3.6, Algorithm 3 -- multi-layer: layers are decomposed in execution order; the targets
  Y'_i = X'_i W_i come from the undecomposed network (X') while the regressors X_i come from the
  network whose earlier layers are already decomposed (:func:`decompose_layers`).

Two additions to the paper, both exact least-squares steps that never increase the sampled error:
the 1 x 1 conv's bias is set to the mean residual (the mean correction of channel decomposition
[Zhang et al.]), and rank-deficient patches (zero padding, dead ReLU channels) are handled with a
pseudo-inverse.
"""
import copy
import logging
from dataclasses import asdict, dataclass

import torch

from .modules import (
    METHODS,
    ChannelDecomposedConv,
    DepthwiseSeparableConv,
    channel_rank,
    is_decomposable_conv,
    macs_per_position,
    norm_and_activation,
    replace_module,
)
from .sampling import collect_conv_inputs, collect_paired_conv_inputs, eval_mode, limited_batches

__all__ = [
    "LayerReport",
    "channel_decomposition",
    "decompose_conv",
    "decompose_layers",
    "depthwise_decomposition",
]

logger = logging.getLogger(__name__)


def relative_error(target, approx):
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
        "relative_error": relative_error(y_target, approx + bias_delta),
    }


def flat_responses(patches, weight_2d, chunk=4096):
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
    y = flat_responses(inputs, w2)
    y_target = y if target_inputs is None else flat_responses(target_inputs, w2)
    centered = y - y.mean(0)
    lam, vecs = torch.linalg.eigh(centered.T @ centered)
    p = vecs[:, torch.argsort(lam, descending=True)[:rank]]  # (n, r)
    approx = y @ p @ p.T
    bias_delta = (y_target - approx).mean(0) if fit_bias else torch.zeros(n, dtype=torch.float64)
    return {
        "reduce": (p.T @ w2).reshape(rank, c, kh, kw),
        "expand": p.reshape(n, rank, 1, 1),
        "bias_delta": bias_delta,
        "relative_error": relative_error(y_target, approx + bias_delta),
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
    spatial, pointwise = new.parts()
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
        return list(limited_batches(batches, num_images))
    return batches


def _execution_order(model, names, batches):
    order = []
    handles = [model.get_submodule(n).register_forward_pre_hook(
        lambda m, a, n=n: order.append(n) if n not in order else None) for n in names]
    try:
        with eval_mode(model), torch.no_grad():
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
            new.norm, new.activation = norm_and_activation(model.get_submodule(name))
        replace_module(model, name, new)
        report = LayerReport(name, method, conv.in_channels, conv.out_channels, tuple(conv.kernel_size),
                             macs_per_position(conv), macs_per_position(new), error, inputs.shape[0])
        logger.info("decomposed %s (%s, %.1fx fewer multiply-adds): relative error %.4f",
                    name, method, report.speedup, error)
        reports.append(report)
    return reports
