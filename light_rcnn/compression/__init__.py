"""Model compression as modeling hooks applied to any built model (``MODEL.MODELING_HOOKS``):
depth-wise decomposition of regular convs (He et al., CVPR-W 2019) with its channel-decomposition
baseline, and student-teacher distillation (thesis Sec. 2.1.3). Importing this package registers
the hooks "DecompositionHook" and "DistillationHook" and their META_ARCHITECTURE forms
``DecomposedGeneralizedRCNN`` and ``DistillationRCNN``.

* :mod:`.modeling_hooks` -- the hook registry and :func:`build_model` (detectron2's, then the hooks);
* :mod:`.decomposition` -- replacement modules, response sampling, solvers, the Sec. 4.1 experiment,
  the hook and the trained-model pipeline of ``tools/decompose_net.py``;
* :mod:`.distillation` -- the distillation losses, the teacher and the hook.
"""
from . import decomposition, distillation, modeling_hooks
from .decomposition import *  # noqa: F401,F403
from .distillation import DistillationHook, DistillationRCNN
from .modeling_hooks import *  # noqa: F401,F403

__all__ = sorted(decomposition.__all__ + modeling_hooks.__all__ + ["DistillationHook", "DistillationRCNN"])
