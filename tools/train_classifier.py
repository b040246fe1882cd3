#!/usr/bin/env python
"""Classification pre-training of a backbone; its checkpoint is a detector's MODEL.WEIGHTS.

Input convention: BGR 0-255 images normalized with PIXEL_MEAN [103.530, 116.280, 123.675] and
PIXEL_STD [57.375, 57.120, 58.395], exactly as the mobile and shapes detection configs in
configs/ do (light_rcnn/data/image_folder.py; schedules, checkpoint layout and where a ResNet
trunk loads: light_rcnn/engine/classifier.py).

    # FD-MobileNet paper's ImageNet schedule (90 epochs, batch 256, lr 0.1 /10 every 30, wd 4e-5)
    python tools/train_classifier.py --arch fd_mobilenet --width-mult 1.0 \
        --data /data/imagenet --output output/cls/fd_mobilenet_1x.pth --num-gpus 4
    # dilated-MobileNetV2 paper's Caltech protocol (2,000 random test images, 300 epochs)
    python tools/train_classifier.py --arch dilated_mobilenet_v2 \
        --data /data/caltech101/101_ObjectCategories --caltech-split 2000 \
        --output output/cls/dilated_mobilenet_v2_caltech101.pth
    # the quarter-width ResNet-50 of the shapes configs (Mask R-CNN R50-C4 and Light Mask R-CNN
    # framework 1 both load it), on crops of generated shapes scenes (the schedule measured in
    # RESULTS.md, "Framework 1 from a trunk pre-trained on shape crops"; 30 epochs at lr 0.05 did not learn)
    python -m light_rcnn.data.shapes_crops --train-scenes 400 --val-scenes 100   # prints the folder
    python tools/train_classifier.py --arch resnet \
        --config-file light_rcnn://shapes/mask_rcnn_R_50_C4_shapes.yaml \
        --data FOLDER --image-size 64 --epochs 60 --batch-size 32 --lr 0.01 --lr-steps 40 55 \
        --num-workers 0 --output output/cls/resnet50_quarter_shapes.pth
    # continue an interrupted run
    python tools/train_classifier.py ... --output output/cls/fd_mobilenet_1x.pth --resume
    # then: python tools/train_net.py --config-file CFG MODEL.WEIGHTS output/cls/fd_mobilenet_1x.pth
"""
import argparse
import logging

from detectron2.engine import launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from light_rcnn.engine.classifier import ARCH_BUILDERS, SCHEDULES, resolve_schedule, train_classifier


def argument_parser():
    p = argparse.ArgumentParser(
        description="Classification pre-training of a backbone (BGR 0-255 input, "
                    "normalized with the detection configs' PIXEL_MEAN / PIXEL_STD).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--arch", required=True, choices=sorted(ARCH_BUILDERS))
    p.add_argument("--width-mult", type=float, default=1.0,
                   help="width multiplier alpha of the mobile archs (resnet: keep 1)")
    p.add_argument("--config-file", default=None, metavar="FILE",
                   help="--arch resnet: detection config (path or light_rcnn://...) whose "
                        "MODEL.RESNETS defines the trunk (default: detectron2's ResNet-50)")
    p.add_argument("--data", required=True,
                   help="folder with train/ and val/ ImageFolder trees, or (with "
                        "--caltech-split) a single folder of class sub-folders")
    p.add_argument("--caltech-split", type=int, nargs="?", const=2000, default=None,
                   metavar="N", help="random seeded N-image test split of --data (paper: 2000)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of --caltech-split")
    p.add_argument("--schedule", choices=sorted(SCHEDULES), default=None,
                   help="preset from the papers (default: dilated_caltech with --caltech-split, "
                        "else fd_mobilenet_imagenet)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="total over all processes")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--momentum", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--lr-steps", type=int, nargs="*", default=None, help="epoch milestones")
    p.add_argument("--lr-gamma", type=float, default=None, help="lr factor at each milestone")
    p.add_argument("--min-crop-scale", type=float, default=None,
                   help="lower area bound of RandomResizedCrop")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--precise-bn-batches", type=int, default=200,
                   help="training batches on which BN statistics are re-estimated before each "
                        "evaluation and save (0: keep the running averages)")
    p.add_argument("--output", required=True, help="checkpoint path (.pth)")
    p.add_argument("--resume", action="store_true",
                   help="continue from --output if it exists (without it an existing --output "
                        "is an error)")
    p.add_argument("--num-gpus", type=int, default=1,
                   help="processes (DistributedDataParallel; GLOO on a CPU-only machine)")
    p.add_argument("--dist-url", default="auto")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--num-workers", type=int, default=4, help="data loader workers per process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-period", type=int, default=20, help="iterations between log lines")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                   help="extra backbone config options, e.g. MODEL.MOBILENET.DILATION_RATES "
                        "[1,2,3,4] or MODEL.RESNETS.WIDTH_PER_GROUP 16")
    return p


def schedule_from_args(args):
    """The preset named by ``--schedule`` (or implied by ``--caltech-split``) with every
    schedule option given on the command line."""
    return resolve_schedule(
        args.schedule, caltech=bool(args.caltech_split), epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, lr_steps=args.lr_steps, lr_gamma=args.lr_gamma,
        min_crop_scale=args.min_crop_scale,
    )


def worker(args, schedule):
    setup_logger(distributed_rank=comm.get_rank(), name="light_rcnn")
    setup_logger(distributed_rank=comm.get_rank(), name="detectron2", abbrev_name="d2")
    result = train_classifier(
        arch=args.arch, data=args.data, output=args.output, schedule=schedule,
        width_mult=args.width_mult, caltech_split=args.caltech_split, split_seed=args.split_seed,
        image_size=args.image_size, resume=args.resume, device=args.device,
        num_workers=args.num_workers, seed=args.seed, log_period=args.log_period, opts=args.opts,
        precise_bn_batches=args.precise_bn_batches, config_file=args.config_file,
    )
    if comm.is_main_process():
        top1 = result["top1"]
        logging.getLogger("light_rcnn").info(
            f"Wrote {result['output']} after epoch {result['epoch']}"
            + (f" (val top-1 {top1:.2f}%)" if top1 is not None else ""))
    return result


def main(argv=None):
    args = argument_parser().parse_args(argv)
    if args.config_file and args.arch != "resnet":
        argument_parser().error("--config-file is read with --arch resnet only")
    if args.arch == "resnet" and args.width_mult != 1.0:
        argument_parser().error("--arch resnet takes its width from MODEL.RESNETS of --config-file "
                                "(or KEY VALUE opts); leave --width-mult at 1")
    try:
        schedule = schedule_from_args(args)
    except ValueError as e:
        argument_parser().error(str(e))
    print("Command Line Args:", args)
    print("Schedule:", schedule)
    launch(worker, args.num_gpus, dist_url=args.dist_url, args=(args, schedule))


if __name__ == "__main__":
    main()
