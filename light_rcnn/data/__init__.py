"""Data sets; importing this module registers them into detectron2's catalogs."""
