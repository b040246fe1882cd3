"""Model compression: depth-wise decomposition of regular convs (He et al., CVPR-W 2019) and its
channel-decomposition baseline, and distillation; importing this module registers
``DecomposedGeneralizedRCNN`` and ``DistillationRCNN``.

* :mod:`.depthwise_decomposition` -- the replacement modules, response sampling and Algorithms 1-3.
* :mod:`.decomposed_model` -- :func:`apply_decomposition` (config-driven swap) and the meta-arch.
* :mod:`.distillation` -- student-teacher training, ``DistillationRCNN`` (registered on import).
"""
from .decomposed_model import (
    DecomposedGeneralizedRCNN,
    apply_decomposition,
    build_decomposition_loader,
    find_decomposable_convs,
)
from .depthwise_decomposition import (
    PAPER_RANDOM_DATA_ERRORS,
    ChannelDecomposedConv,
    DepthwiseSeparableConv,
    LayerReport,
    channel_decomposition,
    channel_rank,
    collect_conv_inputs,
    collect_paired_conv_inputs,
    decompose_conv,
    decompose_layers,
    depthwise_decomposition,
    extract_patches,
    format_random_data_experiment,
    random_data_experiment,
    replace_module,
)
from . import distillation as _distillation  # noqa: F401,E402  (registers DistillationRCNN)

__all__ = [
    "PAPER_RANDOM_DATA_ERRORS",
    "ChannelDecomposedConv",
    "DecomposedGeneralizedRCNN",
    "DepthwiseSeparableConv",
    "LayerReport",
    "apply_decomposition",
    "build_decomposition_loader",
    "channel_decomposition",
    "channel_rank",
    "collect_conv_inputs",
    "collect_paired_conv_inputs",
    "decompose_conv",
    "decompose_layers",
    "depthwise_decomposition",
    "extract_patches",
    "find_decomposable_convs",
    "format_random_data_experiment",
    "random_data_experiment",
    "replace_module",
]
