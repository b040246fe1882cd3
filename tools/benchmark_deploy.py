#!/usr/bin/env python
"""Export one trained model to every runtime and measure them side by side on the same images with
the same weights: latency p50/p90 per image, COCO bbox/segm AP, box differences to eager, file
size, and the deploy benchmark's targets met / missed (light_rcnn/deploy/benchmark.py,
light_rcnn/deploy/benchmark_report.py).

    python tools/benchmark_deploy.py \\
        --config-file light_rcnn://shapes/light_mask_rcnn_framework1_shapes.yaml \\
        --weights output/shapes/light_mask_rcnn_framework1/model_final.pth \\
        --dataset shapes_val --runtimes eager torchscript onnx onnx-int8 --threads 2 \\
        --output-dir output/deploy_benchmark/framework1

Writes to --output-dir: model.ts, model.onnx, model_int8.onnx, config.yaml, deploy_benchmark.json
and deploy_benchmark.md; refuses to start if any of them exists.
"""
import argparse

from light_rcnn.deploy.benchmark import ORDERS, RUNTIMES, DeployBenchmarkSettings, check_runtimes, run_deploy_benchmark
from light_rcnn.deploy.benchmark_report import markdown_report


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE", help="config the checkpoint was trained with")
    p.add_argument("--weights", required=True, metavar="FILE", help="eager checkpoint (.pth/.pkl)")
    p.add_argument("--dataset", default=None, help="registered data set (default: the config's DATASETS.TEST[0])")
    p.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), metavar="NAME",
                   help=f"from {', '.join(RUNTIMES)} (default: all; eager is required, it is the reference)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of every runtime (default: %(default)s)")
    p.add_argument("--calibration-images", type=int, default=100, metavar="N",
                   help="training images calibrating int8 (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=5, metavar="N",
                   help="untimed images per runtime (default: %(default)s)")
    p.add_argument("--max-images", type=int, default=None, metavar="N", help="the data set's first N images only")
    p.add_argument("--order", choices=ORDERS, default="blocked",
                   help="blocked: one runtime after the other (default); interleaved: every runtime per image, rotating order")
    p.add_argument("--rounds", type=int, default=3, metavar="N",
                   help="blocked order: timed passes per runtime, the first runtime rotating (default: %(default)s)")
    p.add_argument("--output-dir", required=True, metavar="DIR", help="folder for the models and the reports")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    try:
        runtimes = check_runtimes(args.runtimes)
    except ValueError as e:
        raise SystemExit(f"benchmark_deploy.py: --runtimes: {e}")
    settings = DeployBenchmarkSettings(
        runtimes=runtimes, dataset=args.dataset, threads=args.threads, warmup=args.warmup,
        max_images=args.max_images, calibration_images=args.calibration_images, order=args.order,
        rounds=args.rounds, progress=not args.no_progress)
    record = run_deploy_benchmark(args.config_file, args.weights, args.output_dir, args.opts, settings)
    print(markdown_report(record))
    return record


if __name__ == "__main__":
    main()
