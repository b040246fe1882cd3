"""Model compression: depth-wise decomposition of regular convs (He et al., CVPR-W 2019) and its
channel-decomposition baseline, and distillation; importing this module registers
``DecomposedGeneralizedRCNN`` and ``DistillationRCNN``.

* :mod:`.depthwise_decomposition` -- the replacement modules, response sampling and Algorithms 1-3.
* :mod:`.decomposed_model` -- :func:`apply_decomposition` (config-driven swap) and the meta-arch.
* :mod:`.distillation` -- student-teacher training, ``DistillationRCNN`` (registered on import).
"""
from . import decomposed_model as _decomposed_model
from . import depthwise_decomposition as _depthwise_decomposition
from .decomposed_model import *  # noqa: F401,F403  (its __all__)
from .depthwise_decomposition import *  # noqa: F401,F403  (its __all__)
from . import distillation as _distillation  # noqa: F401,E402  (registers DistillationRCNN)

# (the star import rebinds the name ``depthwise_decomposition`` to the function of that name)
__all__ = sorted(_decomposed_model.__all__ + _depthwise_decomposition.__all__)
