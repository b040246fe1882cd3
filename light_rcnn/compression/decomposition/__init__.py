"""Depth-wise decomposition of regular convs (He, Qian and Wang, "Depth-wise Decomposition for
Accelerating Separable Convolutions in Efficient Convolutional Neural Networks", CVPR-W 2019) and its
channel-decomposition baseline.

* :mod:`.modules` -- the replacement modules and :func:`replace_module` (Sec. 3.2-3.4);
* :mod:`.sampling` -- response sampling (Sec. 3.1);
* :mod:`.solvers` -- Algorithms 1-3 and channel decomposition (Sec. 3.2-3.6);
* :mod:`.random_data` -- the random-data check (Sec. 4.1);
* :mod:`.hook` -- ``DecompositionHook`` and META_ARCHITECTURE ``DecomposedGeneralizedRCNN``;
* :mod:`.pipeline` -- decomposing a trained detector from its config (``tools/decompose_net.py``).
"""
from .hook import *  # noqa: F401,F403
from .modules import *  # noqa: F401,F403
from .pipeline import *  # noqa: F401,F403
from .random_data import *  # noqa: F401,F403
from .sampling import *  # noqa: F401,F403
from .solvers import *  # noqa: F401,F403
from . import hook, modules, pipeline, random_data, sampling, solvers

__all__ = sorted(
    hook.__all__ + modules.__all__ + pipeline.__all__ + random_data.__all__ + sampling.__all__ + solvers.__all__
)
