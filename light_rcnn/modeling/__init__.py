"""Model components; importing this module registers them into detectron2's registries."""
