"""Model components; importing this module registers them into detectron2's registries."""
from . import backbone  # noqa: F401
