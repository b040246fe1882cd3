#!/usr/bin/env python
"""Latency by stage, peak memory, FLOPs and size of detectors at equal work; see the package
light_rcnn.analysis.benchmark for what is measured and how.

    # Light Mask R-CNN vs. the Mask R-CNN R50-C4 baseline, CPU, fixed work (300 proposals, 100 masks)
    python tools/benchmark.py \\
        --config-file light_rcnn://COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml \\
        --config-file light_rcnn://COCO-InstanceSegmentation/light_mask_rcnn_R_50_C4_framework1_1x.yaml \\
        --device cpu --threads 8 --image-size 800x1333 --warmup 3 --iters 20 --output-dir output/bench
    # per-config overrides follow the file; global ones come after "--"
    python tools/benchmark.py --config-file A.yaml MODEL.SLK.KERNEL_SIZE 7 --config-file A.yaml \\
        --torchvision maskrcnn_resnet50_fpn --device cuda -- MODEL.RESNETS.DEPTH 101
    # bf16 autocast; a config's own PRE_NMS_TOPK_TEST and scores kept (unequal NMS work recorded, not refused)
    python tools/benchmark.py --config-file A.yaml --config-file B.yaml --precision bf16
    python tools/benchmark.py --config-file A.yaml --config-file B.yaml --rpn-pre-nms-topk config --model-scores \
        --allow-unequal-work
    # trained weights on a registered data set; training speed; data loader speed
    python tools/benchmark.py --config-file A.yaml MODEL.WEIGHTS a.pth --dataset coco_2017_val
    python tools/benchmark.py --config-file A.yaml --task train --batch-size 2
    python tools/benchmark.py --config-file A.yaml --task data --dataset shapes_train
"""
import argparse
import logging
import os
import shlex
import sys

import light_rcnn  # noqa: F401  (registers components)
from light_rcnn.analysis.benchmark import BenchmarkSettings, make_specs, run_benchmark
from light_rcnn.analysis.benchmark.specs import parse_image_size


def pre_nms_topk(text):
    if text == "config":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"--rpn-pre-nms-topk '{text}': expected a positive integer or 'config'")
    return value


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", nargs="+", action="append", default=[], metavar="FILE [KEY VALUE ...]",
                   help="a config to measure, followed by its own overrides; repeatable")
    p.add_argument("--torchvision", action="append", default=[], metavar="MODEL",
                   help="a torchvision detection model (e.g. maskrcnn_resnet50_fpn), random init; repeatable")
    p.add_argument("--torchvision-weights", action="append", default=[], metavar="[MODEL=]PATH",
                   help="local state dict for a --torchvision model")
    p.add_argument("--names", nargs="+", help="report labels, configs first then torchvision models")
    p.add_argument("--task", choices=["inference", "train", "data"], default="inference")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--image-size", type=parse_image_size, default=(800, 1333), metavar="HxW")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--threads", type=int, help="torch.set_num_threads")
    p.add_argument("--baseline", help="name of the model the ratios refer to (default: the first)")
    p.add_argument("--output-dir", default="output/benchmark")
    p.add_argument("--dataset", help="registered data set: real-data inference, or the data task")
    p.add_argument("--num-proposals", type=int, default=300, help="fixed work: proposals per image")
    p.add_argument("--num-detections", type=int, default=100, help="fixed work: boxes reaching the mask head")
    p.add_argument("--rpn-pre-nms-topk", type=pre_nms_topk, default=6000, metavar="N|config",
                   help="fixed work: boxes ranked per feature level before the RPN NMS, for every model "
                        "(PRE_NMS_TOPK_TEST; 'config': each config's own, unequal work when they differ)")
    p.add_argument("--classes-per-roi", type=int, default=12,
                   help="fixed work: classes of each ROI given a positive score, so that the final NMS "
                        "receives num-proposals x this many boxes in every model")
    p.add_argument("--model-scores", action="store_true",
                   help="fixed work: keep the models' own RPN and class scores (with random weights the "
                        "NMS inputs then differ between models: needs --allow-unequal-work)")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32",
                   help="torch.autocast dtype of inference and of the train task's forward")
    p.add_argument("--batch-size", type=int, default=2, help="train task: images per iteration")
    p.add_argument("--train-lr", type=float, default=1e-4,
                   help="train task: learning rate (random weights diverge at a config's BASE_LR)")
    p.add_argument("--memory", choices=["subprocess", "off"], default="subprocess")
    p.add_argument("--no-flops", action="store_true")
    p.add_argument("--flops-images", type=int, default=5, help="dataset mode: images averaged for FLOPs")
    p.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--allow-unequal-work", action="store_true",
                   help="record, instead of failing on, a model that misses the fixed work or feeds its "
                        "NMS a different number of boxes than the baseline")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="after '--': KEY VALUE overrides for every config")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    opts = [o for o in args.opts if o != "--"]
    if not args.config_file and not args.torchvision:
        get_parser().error("give at least one --config-file or --torchvision")
    from detectron2.utils.logger import setup_logger

    setup_logger(name="light_rcnn")
    logging.getLogger("light_rcnn").setLevel(logging.INFO)
    specs = make_specs(args.config_file, args.torchvision, args.torchvision_weights, args.names)
    settings = BenchmarkSettings(
        models=specs, global_opts=opts, task=args.task, device=args.device, image_size=args.image_size,
        warmup=args.warmup, iters=args.iters, threads=args.threads, baseline=args.baseline,
        output_dir=args.output_dir, dataset=args.dataset, num_proposals=args.num_proposals,
        num_detections=args.num_detections, rpn_pre_nms_topk=args.rpn_pre_nms_topk,
        control_scores=not args.model_scores, classes_per_roi=args.classes_per_roi, precision=args.precision,
        batch_size=args.batch_size, train_lr=args.train_lr, memory=args.memory,
        flops=not args.no_flops, flops_images=args.flops_images, cudnn_benchmark=args.cudnn_benchmark,
        tf32=args.tf32, strict_work=not args.allow_unequal_work,
        command_line=" ".join(shlex.quote(a) for a in [sys.argv[0]] + list(argv if argv is not None else sys.argv[1:])),
    )
    try:
        results = run_benchmark(settings)
    except (FileNotFoundError, ValueError) as e:  # weights that would be downloaded, bad settings
        print(f"error: {e}", file=sys.stderr)
        return 2
    with open(os.path.join(args.output_dir, "benchmark.md")) as f:
        print(f.read())
    return 0 if any(m["status"] == "ok" for m in results["models"]) else 1


if __name__ == "__main__":
    sys.exit(main())
