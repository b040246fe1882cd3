#!/usr/bin/env python
"""Classification pre-training of a mobile backbone; its checkpoint is a detector's MODEL.WEIGHTS.

Input convention: BGR 0-255 images normalized with PIXEL_MEAN [103.530, 116.280, 123.675] and
PIXEL_STD [57.375, 57.120, 58.395], exactly as the mobile detection configs in configs/ do
(see light_rcnn/engine/classifier.py for the schedules and the checkpoint layout).

    # FD-MobileNet paper's ImageNet schedule (90 epochs, batch 256, lr 0.1 /10 every 30, wd 4e-5)
    python tools/train_classifier.py --arch fd_mobilenet --width-mult 1.0 \
        --data /data/imagenet --output output/cls/fd_mobilenet_1x.pth --num-gpus 4
    # dilated-MobileNetV2 paper's Caltech protocol (2,000 random test images, 300 epochs)
    python tools/train_classifier.py --arch dilated_mobilenet_v2 \
        --data /data/caltech101/101_ObjectCategories --caltech-split 2000 \
        --output output/cls/dilated_mobilenet_v2_caltech101.pth
    # continue an interrupted run
    python tools/train_classifier.py ... --output output/cls/fd_mobilenet_1x.pth --resume
    # then: python tools/train_net.py --config-file CFG MODEL.WEIGHTS output/cls/fd_mobilenet_1x.pth
"""
import logging
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from detectron2.engine import launch  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from light_rcnn.engine.classifier import build_arg_parser, resolve_schedule, train  # noqa: E402


def _worker(args):
    setup_logger(distributed_rank=comm.get_rank(), name="light_rcnn")
    setup_logger(distributed_rank=comm.get_rank(), name="detectron2", abbrev_name="d2")
    result = train(args)
    if comm.is_main_process():
        top1 = result["top1"]
        logging.getLogger("light_rcnn").info(
            f"Wrote {result['output']} after epoch {result['epoch']}"
            + (f" (val top-1 {top1:.2f}%)" if top1 is not None else ""))


def main():
    args = build_arg_parser().parse_args()
    resolve_schedule(args)
    print("Command Line Args:", args)
    launch(_worker, args.num_gpus, dist_url=args.dist_url, args=(args,))


if __name__ == "__main__":
    main()
