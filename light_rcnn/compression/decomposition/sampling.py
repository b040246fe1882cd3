"""Response sampling of depth-wise decomposition (He et al., CVPR-W 2019, Sec. 3.1).

N output positions (paper: 10 per image from 300 images) are drawn from real network inputs; the
k x k input patch under each is recorded by a forward pre-hook (:func:`collect_conv_inputs`), so only
N x c x kh*kw numbers per layer are kept, never whole maps. :func:`collect_paired_conv_inputs`
samples the same positions in two networks (Algorithm 3's X' and X).
"""
import zlib
from contextlib import contextmanager

import torch
from torch import nn

from .modules import spatial_conv

__all__ = ["collect_conv_inputs", "collect_paired_conv_inputs", "conv_output_size", "extract_patches"]


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


def num_images_in(batch):
    if isinstance(batch, (list, tuple)):
        return len(batch)
    if torch.is_tensor(batch):
        return batch.shape[0]
    raise TypeError(f"a batch must be a list of detectron2 input dicts or a tensor, got {type(batch).__name__}")


def sample_positions(shape, num_images, patches_per_image, generator):
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
        geometry = spatial_conv(conv)
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
        positions = sample_positions((x.shape[0], h, w), num_images, self.ppi, g)
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
def eval_mode(*models):
    modes = [m.training for m in models]
    try:
        for m in models:
            m.eval()
        yield
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)


def limited_batches(batches, num_images):
    """Yield batches until ``num_images`` images have been seen (the last batch may pass it)."""
    seen = 0
    if num_images is not None and num_images <= 0:
        raise ValueError(f"num_images={num_images}: expected a positive number")
    for batch in batches:
        if num_images is not None and seen >= num_images:
            return
        yield batch
        seen += num_images_in(batch)


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
        with eval_mode(model), torch.no_grad():
            for i, batch in enumerate(limited_batches(batches, num_images)):
                for r in recorders:
                    r.arm(i, num_images_in(batch))
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
        with eval_mode(original, decomposed), torch.no_grad(), _shared_proposals(original, decomposed):
            for i, batch in enumerate(limited_batches(batches, num_images)):
                n = num_images_in(batch)
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
