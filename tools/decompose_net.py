#!/usr/bin/env python
"""Depth-wise decomposition of a trained detector's regular convs (He et al., CVPR-W 2019, Sec. 3);
the algorithms are in light_rcnn/compression/decomposition/.

Samples PATCHES_PER_IMAGE responses per image from NUM_IMAGES images of the config's DATASETS.TRAIN,
replaces every conv matched by --layers (re.fullmatch on qualified module names) with a depthwise
separable conv fitted by Algorithm 1 (--no-compensate) or 2, layer after layer with Algorithm 3
when several layers are given (unless --no-multi-layer), and writes to --output-dir:

* ``model_decomposed.pth`` -- detectron2 checkpoint ({"model": state_dict, "decomposition": [...]});
* ``config.yaml`` -- the input config with META_ARCHITECTURE DecomposedGeneralizedRCNN and the
  MODEL.DECOMPOSE keys, so that

      python tools/train_net.py --config-file OUT/config.yaml MODEL.WEIGHTS OUT/model_decomposed.pth \\
          SOLVER.BASE_LR 0.0001                        # fine-tune (paper Sec. 3.7: small LR)
      python tools/train_net.py --config-file OUT/config.yaml --eval-only MODEL.WEIGHTS OUT/model_decomposed.pth

Existing files are never overwritten. Examples:

    python tools/decompose_net.py --config-file light_rcnn://shapes/light_mask_rcnn_framework1_shapes.yaml \\
        --weights output/shapes/light_mask_rcnn_framework1/model_final.pth --output-dir output/decomposed
    python tools/decompose_net.py ... --layers 'roi_heads\\.subnet\\.conv\\d+' '.*res4\\.\\d+\\.conv2' \\
        --num-images 300 MODEL.DEVICE cuda
    python tools/decompose_net.py --sanity-check          # Sec. 4.1, random data, vs. the paper's figures
"""
import argparse
import os
import re
import sys

import torch
from detectron2.utils.logger import setup_logger

from light_rcnn import load_config
from light_rcnn.compression import (
    check_rebuilds,
    decompose_trained_model,
    decomposed_config,
    format_random_data_experiment,
    format_reports,
    random_data_experiment,
)
from light_rcnn.data import register_shapes_datasets
from light_rcnn.engine import AtomicFile

# The redesigned R-CNN subnet's 3x3 convs (LightRCNNSubnetHead.conv1, conv2, ...).
DEFAULT_LAYERS = [r"roi_heads\.subnet\.conv\d+"]
OUTPUT_FILES = ("model_decomposed.pth", "config.yaml")
_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", metavar="FILE", help="config of the trained (undecomposed) model")
    p.add_argument("--weights", metavar="FILE", help="trained checkpoint of that model")
    p.add_argument("--layers", nargs="+", default=DEFAULT_LAYERS, metavar="REGEX",
                   help="regexes fullmatch-ed against qualified conv names (default: %(default)s)")
    p.add_argument("--method", choices=["depthwise", "channel"], default=None,
                   help="default: the config's MODEL.DECOMPOSE.METHOD")
    p.add_argument("--num-images", type=int, help="default: MODEL.DECOMPOSE.NUM_IMAGES (paper: 300)")
    p.add_argument("--patches-per-image", type=int, help="default: MODEL.DECOMPOSE.PATCHES_PER_IMAGE (paper: 10)")
    p.add_argument("--compensate", action=argparse.BooleanOptionalAction, default=None,
                   help="Algorithm 2's inter-channel error compensation (default: MODEL.DECOMPOSE.COMPENSATE)")
    p.add_argument("--multi-layer", action=argparse.BooleanOptionalAction, default=None,
                   help="Algorithm 3 across layers (default: MODEL.DECOMPOSE.MULTI_LAYER)")
    p.add_argument("--output-dir", metavar="DIR", help="where model_decomposed.pth and config.yaml go")
    p.add_argument("--sanity-check", action="store_true",
                   help="run the paper's Sec. 4.1 random-data experiment instead and print it next to the paper")
    p.add_argument("--sanity-channels", type=int, default=256, help="--sanity-check: c = n of the random conv")
    p.add_argument("--sanity-trials", type=int, default=3, help="--sanity-check: random draws averaged")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p


def parse_args(argv=None):
    """argparse, with the trailing ``KEY VALUE`` overrides split off first (after ``--`` or from
    the first config key such as ``MODEL.DEVICE``), so ``--layers A B MODEL.DEVICE cpu`` does not
    take ``MODEL.DEVICE`` for a layer pattern."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        cut = argv.index("--")
        argv, opts = argv[:cut], argv[cut + 1:]
    else:
        cut = next((i for i, a in enumerate(argv) if _CONFIG_KEY.match(a)), len(argv))
        argv, opts = argv[:cut], argv[cut:]
    args = get_parser().parse_args(argv)
    args.opts = list(args.opts) + opts
    return args


def setup(args):
    """The config of the trained model, with the command line's MODEL.DECOMPOSE settings."""
    cfg = load_config(args.config_file, args.opts)
    d = cfg.MODEL.DECOMPOSE
    d.METHOD = args.method or d.METHOD
    for key, value in (("NUM_IMAGES", args.num_images), ("PATCHES_PER_IMAGE", args.patches_per_image),
                       ("COMPENSATE", args.compensate), ("MULTI_LAYER", args.multi_layer)):
        if value is not None:
            d[key] = value
    cfg.MODEL.WEIGHTS = args.weights
    register_shapes_datasets(cfg)
    return cfg


def main(argv=None):
    args = parse_args(argv)
    if args.sanity_check:
        result = random_data_experiment(channels=args.sanity_channels, trials=args.sanity_trials)
        print(format_random_data_experiment(result))
        return result
    missing = [f for f, v in (("--config-file", args.config_file), ("--weights", args.weights),
                              ("--output-dir", args.output_dir)) if not v]
    if missing:
        get_parser().error(f"{', '.join(missing)} required (or --sanity-check)")
    if not os.path.isfile(args.weights):
        raise FileNotFoundError(f"--weights '{args.weights}' does not exist or is not a file")
    ckpt_path, cfg_path = (os.path.join(args.output_dir, f) for f in OUTPUT_FILES)
    existing = [f for f in OUTPUT_FILES if os.path.exists(os.path.join(args.output_dir, f))]
    if existing:
        raise FileExistsError(
            f"--output-dir '{args.output_dir}' already holds {', '.join(existing)}; refusing to overwrite. "
            "Choose another --output-dir or remove them."
        )

    setup_logger(name="light_rcnn")
    cfg = setup(args)
    model, reports = decompose_trained_model(
        cfg, args.weights, args.layers, layers_key="--layers", weights_key="--weights",
        what="the model of --config-file (and its overrides)",
    )
    cfg_out = decomposed_config(cfg, args.layers, ckpt_path, args.output_dir)
    check_rebuilds(cfg_out, model)

    os.makedirs(args.output_dir, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with AtomicFile(ckpt_path, "wb") as f:
        torch.save({"model": state, "decomposition": [r.as_dict() for r in reports]}, f)
    with AtomicFile(cfg_path, "w") as f:
        f.write(cfg_out.dump())
    print(format_reports(reports))
    print(f"Wrote {ckpt_path} and {cfg_path}")
    return reports


if __name__ == "__main__":
    main()
