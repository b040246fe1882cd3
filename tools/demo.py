#!/usr/bin/env python
"""`make demo`: generate the shapes data set, train the demo model on the CPU, evaluate it with
COCOEvaluator, draw predicted masks on validation images and print a summary.

    python tools/demo.py                                  # the default demo (FD-MobileNet + IoU loss, shapes)
    python tools/demo.py --config-file CFG [KEY VALUE ...]
    python tools/demo.py --seeds 0 1 2                    # one run per seed, then mean +- std, min
    python tools/demo.py --seeds 0 1 2 --output-dir D --resume   # continue runs a stop cut off
"""
import argparse
import os
import time

from light_rcnn.demo import DEFAULT_DEMO_CONFIG, run_demo, run_demo_seeds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=DEFAULT_DEMO_CONFIG, help="YAML config to train")
    parser.add_argument(
        "--output-dir",
        default=os.path.join("output", time.strftime("demo-%Y%m%d-%H%M%S")),
        help="new folder for checkpoints, evaluation and the PNG (never an existing run's, unless --resume)",
    )
    parser.add_argument(
        "--resume", action="store_true",
        help="continue the run(s) in --output-dir from their last checkpoint (same config and overrides "
        "required); with --seeds, a seed that finished is read back from its results.json",
    )
    parser.add_argument("--num-images", type=int, default=6, help="validation images to draw")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None,
        help="train once per seed (SEED override, outputs in <output-dir>/seed<s>) and report "
        "mean +- std and min of each AP; default: one run with the config's SEED",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()
    if args.seeds:
        run_demo_seeds(args.config_file, args.output_dir, args.seeds, args.opts, num_images=args.num_images,
                       resume=args.resume)
    else:
        run_demo(args.config_file, args.output_dir, args.opts, num_images=args.num_images, resume=args.resume)


if __name__ == "__main__":
    main()
