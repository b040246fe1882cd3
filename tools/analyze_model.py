#!/usr/bin/env python
"""FLOPs, parameters, activations and structure of one or more configs (random weights unless
MODEL.WEIGHTS is given), like detectron2's tools/analyze_model.py; one summary line per config.
FLOPs are fvcore counts: one multiply-add = one flop, at one synthetic image of --image-size.

    python tools/analyze_model.py --tasks flop parameter \\
        --config-file light_rcnn://COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml \\
        --config-file light_rcnn://COCO-InstanceSegmentation/light_mask_rcnn_R_50_C4_framework1_1x.yaml
    python tools/analyze_model.py --tasks structure --config-file A.yaml MODEL.SLK.KERNEL_SIZE 7 -- MODEL.DEVICE cpu
"""
import argparse
import json
import sys

import light_rcnn  # noqa: F401  (registers components)
from light_rcnn.analysis.benchmark.specs import parse_image_size
from light_rcnn.analysis.model_stats import analyze_configs, format_analysis


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", nargs="+", action="append", required=True, metavar="FILE [KEY VALUE ...]",
                   help="a config, followed by its own overrides; repeatable")
    p.add_argument("--tasks", nargs="+", choices=["flop", "activation", "parameter", "structure"],
                   default=["flop", "parameter"])
    p.add_argument("--image-size", type=parse_image_size, default="800x1333", metavar="HxW")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-depth", type=int, default=3, help="depth of the parameter table")
    p.add_argument("--fixed-work", nargs=2, type=int, metavar=("PROPOSALS", "DETECTIONS"),
                   help="count FLOPs at tools/benchmark.py's fixed work (e.g. 300 100) instead of the config's "
                        "own test settings")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="after '--': KEY VALUE overrides for every config")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    results = analyze_configs(
        [e[0] for e in args.config_file], [o for o in args.opts if o != "--"], tasks=args.tasks,
        image_size=args.image_size, device=args.device, max_depth=args.max_depth,
        per_config_opts=[e[1:] for e in args.config_file], fixed_work=args.fixed_work,
    )
    print(format_analysis(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=str)
    return 0 if all(not r.get("error") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
