"""Config-driven decomposition of a built detector (He et al., CVPR-W 2019, Sec. 3.2-3.4).

:class:`DecompositionHook` (``MODEL.MODELING_HOOKS: ["DecompositionHook"]``) swaps, in place, every
regular k x k conv named by ``MODEL.DECOMPOSE.LAYERS`` for a freshly initialized
:class:`DepthwiseSeparableConv` or :class:`ChannelDecomposedConv`; META_ARCHITECTURE
"DecomposedGeneralizedRCNN" is detectron2's GeneralizedRCNN with that hook applied. The swap is a
pure function of the config, so the module names -- ``<name>.depthwise`` / ``<name>.pointwise``
(``<name>.reduce`` / ``<name>.expand``) and the kept ``<name>.norm`` -- are the same in every model
built from it, and a checkpoint written after decomposition (tools/decompose_net.py) reloads into a
model built from the config with no missing keys.
"""
import re

from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN

from ..modeling_hooks import MODELING_HOOK_REGISTRY, ModelingHook, apply_modeling_hooks
from .modules import DECOMPOSED_TYPES, METHODS, is_decomposable_conv, make_decomposed_conv, replace_module

__all__ = ["DecomposedGeneralizedRCNN", "DecompositionHook", "apply_decomposition", "find_decomposable_convs"]

LAYERS_KEY = "MODEL.DECOMPOSE.LAYERS"


def find_decomposable_convs(model, patterns, key=LAYERS_KEY):
    """Qualified names (module order) of the regular convs of ``model`` that a pattern matches.

    A conv qualifies when it is an ``nn.Conv2d`` with ``groups == 1``, a kernel larger than 1 x 1
    and zero padding, and is not already part of a decomposed replacement. Each pattern is applied
    with ``re.fullmatch`` to the qualified name (``backbone.bottom_up.res2.0.conv2``), so
    ``.*\\.conv2`` is needed where ``conv2`` alone matches nothing.

    Raises:
        ValueError naming ``key`` and the pattern: an invalid regex, or one that matches no conv.
    """
    compiled = []
    for pattern in patterns:
        try:
            compiled.append((pattern, re.compile(pattern)))
        except re.error as e:
            raise ValueError(f"{key}: pattern {pattern!r} is not a valid regular expression ({e})") from e
    inside = [name for name, m in model.named_modules() if isinstance(m, DECOMPOSED_TYPES)]
    candidates = [
        name for name, m in model.named_modules()
        if is_decomposable_conv(m) and not any(name.startswith(p + ".") for p in inside)
    ]
    selected = set()
    for pattern, rx in compiled:
        hits = [n for n in candidates if rx.fullmatch(n)]
        if not hits:
            shown = ", ".join(candidates[:6]) + (", ..." if len(candidates) > 6 else "")
            raise ValueError(
                f"{key}: pattern {pattern!r} matches no regular conv of the model (nn.Conv2d, groups == 1, "
                f"kernel > 1, zero padding; re.fullmatch on the qualified name). Candidates: {shown or 'none'}"
            )
        selected.update(hits)
    return [n for n in candidates if n in selected]


def apply_decomposition(model, cfg):
    """Replace, in place, the convs named by ``cfg.MODEL.DECOMPOSE.LAYERS`` (no-op when empty).

    METHOD "depthwise" -> :class:`DepthwiseSeparableConv`; "channel" -> :class:`ChannelDecomposedConv`
    of width ``round(CHANNEL_RANK_RATIO * C_out)``. Replacements are freshly initialized (weights
    come from a checkpoint, e.g. tools/decompose_net.py's, or from training), keep the replaced
    conv's norm and activation, and are trainable even inside stages that ``FREEZE_AT`` froze: their
    weights are new, or a decomposition that fine-tuning is meant to correct (paper Sec. 3.7).

    Returns:
        list of the replaced modules' qualified names (module order).
    """
    d = cfg.MODEL.DECOMPOSE
    if not d.LAYERS:
        return []
    if d.METHOD not in METHODS:
        raise ValueError(f"MODEL.DECOMPOSE.METHOD={d.METHOD!r}: expected one of {METHODS}")
    names = find_decomposable_convs(model, list(d.LAYERS))
    for name in names:
        replace_module(model, name, make_decomposed_conv(model.get_submodule(name), d.METHOD, d.CHANNEL_RANK_RATIO))
    return names


@MODELING_HOOK_REGISTRY.register()
class DecompositionHook(ModelingHook):
    """Modeling hook replacing the convs named by ``MODEL.DECOMPOSE.LAYERS`` (see
    :func:`apply_decomposition`; a no-op when the list is empty). After :meth:`apply`,
    ``decomposed_layers`` holds the replaced modules' qualified names. :meth:`unapply` keeps the
    replacements: their weights are the model's (fitted or trained), there is nothing to restore."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.decomposed_layers = []

    def apply(self, model):
        self.decomposed_layers = apply_decomposition(model, self.cfg)
        return model

    def unapply(self, model):
        return model


@META_ARCH_REGISTRY.register()
class DecomposedGeneralizedRCNN(GeneralizedRCNN):
    """META_ARCHITECTURE form of ``MODEL.MODELING_HOOKS: ["DecompositionHook"]``: detectron2's
    GeneralizedRCNN whose convs named by ``MODEL.DECOMPOSE.LAYERS`` are replaced by
    depthwise-separable convs (paper Sec. 3.4) or channel decompositions (Sec. 3.2). Inputs and
    outputs are GeneralizedRCNN's (a list of dicts with "image" (C, H, W) -> a list of dicts with
    "instances"). Kept so that configs naming it build with detectron2's own ``build_model``
    (DefaultTrainer, DefaultPredictor).
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        hook = DecompositionHook(cfg)
        apply_modeling_hooks(self, [hook])
        self.decomposed_layers = hook.decomposed_layers
