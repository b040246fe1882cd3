#!/usr/bin/env python
"""Depth-wise decomposition of a trained detector's regular convs (He et al., CVPR-W 2019, Sec. 3);
see light_rcnn/compression/depthwise_decomposition.py for the algorithms.

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

    python tools/decompose_net.py --config-file configs/shapes/light_mask_rcnn_framework1_shapes.yaml \\
        --weights output/shapes/light_mask_rcnn_framework1/model_final.pth --output-dir output/decomposed
    python tools/decompose_net.py ... --layers 'roi_heads\\.subnet\\.conv\\d+' '.*res4\\.\\d+\\.conv2' \\
        --num-images 300 MODEL.DEVICE cuda
    python tools/decompose_net.py --sanity-check          # Sec. 4.1, random data, vs. the paper's figures
"""
import argparse
import logging
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from light_rcnn import load_config  # noqa: E402
from light_rcnn.engine import AtomicFile  # noqa: E402
from light_rcnn.compression import (  # noqa: E402
    build_decomposition_loader,
    decompose_layers,
    find_decomposable_convs,
    format_random_data_experiment,
    random_data_experiment,
)

# The redesigned R-CNN subnet's 3x3 convs (LightRCNNSubnetHead.conv1, conv2, ...).
DEFAULT_LAYERS = [r"roi_heads\.subnet\.conv\d+"]
OUTPUT_FILES = ("model_decomposed.pth", "config.yaml")
DECOMPOSABLE_META_ARCHS = ("GeneralizedRCNN", "DecomposedGeneralizedRCNN")

logger = logging.getLogger("light_rcnn.decompose_net")


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


def sanity_check(channels=256, trials=3):
    result = random_data_experiment(channels=channels, trials=trials)
    print(format_random_data_experiment(result))
    return result


def _decomposed_config(cfg, args, output_dir):
    out = cfg.clone()
    out.defrost()
    if out.MODEL.META_ARCHITECTURE in DECOMPOSABLE_META_ARCHS:
        out.MODEL.META_ARCHITECTURE = "DecomposedGeneralizedRCNN"
    out.MODEL.DECOMPOSE.LAYERS = list(args.layers)
    out.MODEL.WEIGHTS = os.path.abspath(os.path.join(output_dir, OUTPUT_FILES[0]))
    out.OUTPUT_DIR = os.path.join(os.path.abspath(output_dir), "finetune")
    return out


def _check_rebuilds(cfg_out, model):
    """The written config must build a model with exactly the decomposed model's parameter names."""
    from detectron2.modeling import build_model

    probe = cfg_out.clone()
    probe.MODEL.DEVICE = "cpu"
    rebuilt = set(build_model(probe).state_dict())
    have = set(model.state_dict())
    if rebuilt != have:
        raise RuntimeError(
            f"META_ARCHITECTURE {cfg_out.MODEL.META_ARCHITECTURE!r} does not rebuild the decomposed model "
            f"(keys only in the rebuilt one: {sorted(rebuilt - have)[:5]}, only in the decomposed one: "
            f"{sorted(have - rebuilt)[:5]}); its __init__ must call light_rcnn.compression.apply_decomposition"
        )


def format_reports(reports):
    lines = [f"{'layer':<44}{'kernel':>8}{'C_in->C_out':>14}{'MACs/pos':>20}{'speed-up':>9}{'rel. error':>11}"]
    for r in reports:
        kernel = "x".join(map(str, r.kernel_size))
        lines.append(f"{r.name:<44}{kernel:>8}{f'{r.in_channels}->{r.out_channels}':>14}"
                     f"{f'{r.macs_before}->{r.macs_after}':>20}{r.speedup:>8.1f}x{r.relative_error:>11.4f}")
    return "\n".join(lines)


_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


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


def _load_weights(model, path):
    """Load ``path`` into ``model``; refuse weights that leave parameters missing or mis-shaped
    (decomposing partly random layers would silently produce garbage)."""
    from light_rcnn.engine import AtomicDetectionCheckpointer

    class Checkpointer(AtomicDetectionCheckpointer):
        def _load_model(self, checkpoint):
            self.incompatible = super()._load_model(checkpoint)
            return self.incompatible

    checkpointer = Checkpointer(model)
    checkpointer.load(path)
    incompatible = checkpointer.incompatible
    bad = [f"missing {k}" for k in incompatible.missing_keys]
    bad += [f"{k}: {tuple(a)} in the file, {tuple(b)} in the model" for k, a, b in incompatible.incorrect_shapes]
    if bad:
        raise ValueError(
            f"--weights '{path}' does not fit the model of --config-file (and its overrides): "
            f"{'; '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}"
        )


def main(argv=None):
    args = parse_args(argv)
    if args.sanity_check:
        return sanity_check(args.sanity_channels, args.sanity_trials)
    missing = [f for f, v in (("--config-file", args.config_file), ("--weights", args.weights),
                              ("--output-dir", args.output_dir)) if not v]
    if missing:
        get_parser().error(f"{', '.join(missing)} required (or --sanity-check)")
    if not os.path.isfile(args.weights):
        raise FileNotFoundError(f"--weights '{args.weights}' does not exist or is not a file")
    existing = [f for f in OUTPUT_FILES if os.path.exists(os.path.join(args.output_dir, f))]
    if existing:
        raise FileExistsError(
            f"--output-dir '{args.output_dir}' already holds {', '.join(existing)}; refusing to overwrite. "
            "Choose another --output-dir or remove them."
        )

    from detectron2.modeling import build_model
    from detectron2.utils.logger import setup_logger

    from light_rcnn.data import register_shapes_datasets

    setup_logger(name="light_rcnn")
    cfg = load_config(args.config_file, args.opts)
    if cfg.MODEL.DECOMPOSE.LAYERS:
        raise ValueError(
            f"{args.config_file} already decomposes MODEL.DECOMPOSE.LAYERS={list(cfg.MODEL.DECOMPOSE.LAYERS)}; "
            "give the config of the undecomposed model whose --weights these are"
        )
    d = cfg.MODEL.DECOMPOSE
    d.METHOD = args.method or d.METHOD
    for key, value in (("NUM_IMAGES", args.num_images), ("PATCHES_PER_IMAGE", args.patches_per_image),
                       ("COMPENSATE", args.compensate), ("MULTI_LAYER", args.multi_layer)):
        if value is not None:
            d[key] = value
    cfg.MODEL.WEIGHTS = args.weights
    register_shapes_datasets(cfg)

    model = build_model(cfg)
    _load_weights(model, args.weights)
    names = find_decomposable_convs(model, args.layers, key="--layers")
    logger.info("decomposing %d layers with %s, %d images x %d patches", len(names), d.METHOD, d.NUM_IMAGES,
                d.PATCHES_PER_IMAGE)
    reports = decompose_layers(
        model, names, build_decomposition_loader(cfg), method=d.METHOD, compensate=d.COMPENSATE,
        multi_layer=d.MULTI_LAYER, rank_ratio=d.CHANNEL_RANK_RATIO, num_images=d.NUM_IMAGES,
        patches_per_image=d.PATCHES_PER_IMAGE, seed=d.SEED,
    )
    cfg_out = _decomposed_config(cfg, args, args.output_dir)
    _check_rebuilds(cfg_out, model)

    os.makedirs(args.output_dir, exist_ok=True)
    ckpt_path, cfg_path = (os.path.join(args.output_dir, f) for f in OUTPUT_FILES)
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
