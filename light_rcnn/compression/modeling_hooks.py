"""Modeling hooks: features that change an already built model, listed in ``MODEL.MODELING_HOOKS``
(D2Go's ``d2go/modeling/modeling_hook.py``).

:func:`build_model` is detectron2's ``build_model(cfg)`` (META_ARCHITECTURE, moved to
``MODEL.DEVICE``) followed by the hooks named in ``cfg.MODEL.MODELING_HOOKS``, each
``MODELING_HOOK_REGISTRY.get(name)(cfg).apply(model)`` in order, so features compose by config
(e.g. ``["DecompositionHook", "DistillationHook"]`` distills a decomposed student).
"""
import logging
from typing import List

from detectron2.modeling import build_model as build_meta_arch
from detectron2.utils.registry import Registry
from torch import nn

__all__ = ["MODELING_HOOK_REGISTRY", "ModelingHook", "apply_modeling_hooks", "build_model",
           "unapply_modeling_hooks"]

logger = logging.getLogger(__name__)

MODELING_HOOK_REGISTRY = Registry("MODELING_HOOK")
MODELING_HOOK_REGISTRY.__doc__ = """
Registry for modeling hooks: classes called as ``hook = Hook(cfg)``; ``hook.apply(model)`` returns
the changed model and ``hook.unapply(model)`` undoes what can be undone. Listed by name in
``cfg.MODEL.MODELING_HOOKS`` and applied by :func:`light_rcnn.build_model`.
"""

KEY = "MODEL.MODELING_HOOKS"


class ModelingHook:
    """A change to a built model (D2Go's ``ModelingHook``). ``__init__(cfg)`` reads the config and
    builds what the change needs; :meth:`apply` modifies the model (in place or by returning a new
    one); :meth:`unapply` reverses it where that makes sense, or returns the model unchanged."""

    def __init__(self, cfg):
        self.cfg = cfg

    def apply(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def unapply(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError


def _hook_name(hook):
    return type(hook).__name__


def apply_modeling_hooks(model: nn.Module, hooks: List[ModelingHook]) -> nn.Module:
    """Apply ``hooks`` in order and record them in ``model.modeling_hooks`` (a plain list, not part
    of the module tree). Raises ValueError when a hook of the same class was already applied."""
    if not hooks:
        return model
    applied = list(getattr(model, "modeling_hooks", []))
    for hook in hooks:
        if any(_hook_name(h) == _hook_name(hook) for h in applied):
            raise ValueError(
                f"{KEY}: {_hook_name(hook)} is already applied to this {type(model).__name__} (its "
                f"META_ARCHITECTURE applies it, or the list names it twice)"
            )
        model = hook.apply(model)
        applied.append(hook)
        logger.info(f"Applied modeling hook {_hook_name(hook)}")
    model.modeling_hooks = applied
    return model


def unapply_modeling_hooks(model: nn.Module) -> nn.Module:
    """Undo ``model.modeling_hooks`` in reverse order (each hook's :meth:`ModelingHook.unapply`)."""
    for hook in reversed(list(getattr(model, "modeling_hooks", []))):
        model = hook.unapply(model)
    model.modeling_hooks = []
    return model


def build_hooks(cfg) -> List[ModelingHook]:
    """The hooks named in ``cfg.MODEL.MODELING_HOOKS``, built from ``cfg`` (not yet applied)."""
    hooks = []
    for name in getattr(cfg.MODEL, "MODELING_HOOKS", ()):  # absent from a plain detectron2 config
        try:
            hook_class = MODELING_HOOK_REGISTRY.get(name)
        except KeyError as e:
            raise KeyError(
                f"{KEY}: no modeling hook named {name!r}; registered: {sorted(n for n, _ in MODELING_HOOK_REGISTRY)}"
            ) from e
        hooks.append(hook_class(cfg))
    return hooks


def build_model(cfg) -> nn.Module:
    """detectron2's ``build_model(cfg)`` (the META_ARCHITECTURE on ``MODEL.DEVICE``), then the hooks
    of ``cfg.MODEL.MODELING_HOOKS`` built from ``cfg`` and applied in order (all are built before
    the first is applied, as in D2Go). Returns the model."""
    model = build_meta_arch(cfg)
    return apply_modeling_hooks(model, build_hooks(cfg))
