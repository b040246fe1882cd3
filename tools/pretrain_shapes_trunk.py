#!/usr/bin/env python
"""Build a generated pre-trained trunk that shapes configs name as MODEL.WEIGHTS
"light_rcnn_trunk://NAME.pth" (light_rcnn/engine/shapes_trunks.py): crops of generated scenes
that are neither shapes_train nor shapes_val, then a seeded classifier of the trunk, cached under
$LIGHT_RCNN_CACHE/trunks. Running it again finishes a stopped build; a finished one is kept.

    python tools/pretrain_shapes_trunk.py resnet50_quarter     # 5-6 min on 2 CPU cores
    python tools/train_net.py --config-file light_rcnn://shapes/mask_rcnn_R_50_C4_pretrained_shapes.yaml
"""
import argparse

from detectron2.utils.logger import setup_logger

from light_rcnn.engine.shapes_trunks import SHAPES_TRUNKS, build_shapes_trunk


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(SHAPES_TRUNKS), help="the trunk to build")
    args = parser.parse_args(argv)
    setup_logger(name="light_rcnn")
    print(build_shapes_trunk(args.name))


if __name__ == "__main__":
    main()
