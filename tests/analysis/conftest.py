"""Fixtures of the analysis tests: two tiny detectron2 configs of different structure, and the
command-line tools loaded as modules."""

import pytest

TINY = """
MODEL:
  DEVICE: cpu
  RESNETS: {WIDTH_PER_GROUP: 4, RES2_OUT_CHANNELS: 16, STEM_OUT_CHANNELS: 8}
  ROI_HEADS: {NUM_CLASSES: 5}
"""


@pytest.fixture(scope="session")
def tiny_d2_configs(tmp_path_factory):
    """``(c4, fpn)``: paths of two tiny detectron2 zoo configs, the C4 baseline (shared res5, no
    neck) and FPN (a neck), named ``tiny_c4`` and ``tiny_fpn`` in reports."""
    folder = tmp_path_factory.mktemp("cfg")
    c4, fpn = str(folder / "tiny_c4.yaml"), str(folder / "tiny_fpn.yaml")
    with open(c4, "w") as f:
        f.write('_BASE_: "detectron2://COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml"\n' + TINY)
    with open(fpn, "w") as f:
        f.write('_BASE_: "detectron2://COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"\n' + TINY
                + "  FPN: {OUT_CHANNELS: 16}\n  ROI_BOX_HEAD: {FC_DIM: 32}\n  ROI_MASK_HEAD: {CONV_DIM: 8}\n")
    return c4, fpn
