"""Model components; importing this module registers them into detectron2's registries."""
from . import backbone, large_kernel_neck, light_roi_heads  # noqa: F401
from . import iou_mask_head  # noqa: F401
