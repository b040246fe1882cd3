"""Multiply-adds of the mobile classifiers at 224 x 224, against the numbers their papers print.

FLOPs are counted with fvcore's :class:`fvcore.nn.FlopCountAnalysis`, which counts **one
multiply-add as one flop** and a convolution as ``N * C_out * (C_in / groups) * k_h * k_w * H_out *
W_out`` (the weight's size times the output's spatial size), so depthwise convolutions are counted
correctly. Like the papers (MobileNet Sec. 3, FD-MobileNet Table 1), only convolutions and
fully-connected layers count: the flop handles of fvcore for normalization, pooling and
upsampling are not installed here (fvcore's defaults would add 2-5% for BatchNorm and pooling).

Paper numbers (MFLOPs at 224 x 224 with a 1000-class head): FD-MobileNet 1x/0.5x/0.25x =
144/40/12 and 0.5x/0.25x/0.125x MobileNet-224 = 149/41/12 (FD-MobileNet Table 2); MobileNetV2 1.0 =
300 (Sandler et al.). The dilated MobileNetV2 paper prints no FLOPs; its pyramid block has the
cost of the MobileNetV2 block it replaces (its Table 1), so MobileNetV2's 300 is listed for it.
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
from fvcore.nn import FlopCountAnalysis, jit_handles
from torch import nn

from light_rcnn.modeling.backbone import DilatedMobileNetV2, FDMobileNet, MobileNetV1, MobileNetV2

__all__ = ["FlopsRow", "PAPER_MODELS", "count_mult_adds", "flops_table", "format_markdown"]

# fvcore's handles for the operators that are multiply-adds; every other operator (normalization,
# pooling, upsampling, element-wise) is left uncounted, as in the papers.
MULT_ADD_HANDLES = {
    "aten::_convolution": jit_handles.conv_flop_jit,
    "aten::linear": jit_handles.linear_flop_jit,
    "aten::addmm": jit_handles.addmm_flop_jit,
    "aten::matmul": jit_handles.matmul_flop_jit,
    "aten::mm": jit_handles.matmul_flop_jit,
    "aten::bmm": jit_handles.bmm_flop_jit,
    "aten::einsum": jit_handles.einsum_flop_jit,
}


@dataclass
class FlopsRow:
    """One line of the table. ``paper_mflops`` is None when the paper prints no number."""

    model: str
    measured_mflops: float
    paper_mflops: Optional[float]
    params_m: float
    source: str

    @property
    def ratio(self) -> Optional[float]:
        return None if self.paper_mflops is None else self.measured_mflops / self.paper_mflops


# (name, constructor, paper MFLOPs, where the paper number comes from)
PAPER_MODELS = (
    ("FD-MobileNet 1x", lambda: FDMobileNet(1.0, num_classes=1000), 144, "FD-MobileNet Table 2"),
    ("FD-MobileNet 0.5x", lambda: FDMobileNet(0.5, num_classes=1000), 40, "FD-MobileNet Table 2"),
    ("FD-MobileNet 0.25x", lambda: FDMobileNet(0.25, num_classes=1000), 12,
     "FD-MobileNet Table 2"),
    ("0.5x MobileNet-224", lambda: MobileNetV1(0.5, num_classes=1000), 149,
     "FD-MobileNet Table 2"),
    ("0.25x MobileNet-224", lambda: MobileNetV1(0.25, num_classes=1000), 41,
     "FD-MobileNet Table 2"),
    ("0.125x MobileNet-224", lambda: MobileNetV1(0.125, num_classes=1000), 12,
     "FD-MobileNet Table 2"),
    ("MobileNetV2 1.0", lambda: MobileNetV2(1.0, num_classes=1000), 300,
     "Sandler et al. (dilated paper Table 2 layout)"),
    ("Dilated MobileNetV2 1.0", lambda: DilatedMobileNetV2(1.0, num_classes=1000), 300,
     "same cost as MobileNetV2 (dilated paper Table 1)"),
)


def count_mult_adds(model: nn.Module, image_size: int = 224) -> float:
    """Multiply-adds (conv + fully-connected only) of ``model`` on a (1, 3, S, S) input."""
    model = model.eval()
    analysis = FlopCountAnalysis(model, torch.zeros(1, 3, image_size, image_size))
    analysis.clear_op_handles().set_op_handle(**MULT_ADD_HANDLES)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    return float(analysis.total())


def flops_table(
    models: Sequence = PAPER_MODELS, image_size: int = 224
) -> List[FlopsRow]:
    """Measure every ``(name, constructor, paper MFLOPs, source)`` of ``models``."""
    rows = []
    with torch.no_grad():
        for name, build, paper, source in models:
            model: nn.Module = build()
            rows.append(
                FlopsRow(
                    model=name,
                    measured_mflops=count_mult_adds(model, image_size) / 1e6,
                    paper_mflops=paper,
                    params_m=sum(p.numel() for p in model.parameters()) / 1e6,
                    source=source,
                )
            )
    return rows


def format_markdown(rows: Sequence[FlopsRow], image_size: int = 224) -> str:
    """The table as Markdown."""
    lines = [
        f"| model ({image_size}x{image_size}, 1000 classes) | measured MFLOPs | paper MFLOPs "
        f"| measured / paper | params (M) | paper number from |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        paper = "-" if r.paper_mflops is None else f"{r.paper_mflops:g}"
        ratio = "-" if r.ratio is None else f"{r.ratio:.3f}"
        lines.append(
            f"| {r.model} | {r.measured_mflops:.1f} | {paper} | {ratio} | {r.params_m:.3f} "
            f"| {r.source} |"
        )
    return "\n".join(lines)
