#!/usr/bin/env python
"""Predict with any light_rcnn model file (eager checkpoint, TorchScript, ONNX) on images or a
video; write overlays (PNG per image, MP4 for a video) and a COCO results JSON (RLE masks).

    # eager checkpoint + its config, a folder of images
    python tools/predict.py --model output/demo/model_final.pth \\
        --config-file light_rcnn://shapes/light_mask_rcnn_framework1_shapes.yaml \\
        --input path/to/images/ --output output/predict
    # an exported model (config.yaml beside it), a glob, 2 threads, every detection kept
    python tools/predict.py --model export/model.onnx --input "data/**/*.jpg" --output out \\
        --threads 2 --confidence-threshold 0
    # a video, batches of 4 frames on the GPU (eager only)
    python tools/predict.py --model m.pth --config-file CFG --input clip.mp4 --output out \\
        --batch-size 4 --device cuda

Writes ``<output>/<name>.png`` per image (or ``<output>/<video name>.mp4``), ``results.json``
(``image_id`` = index in input order / frame number) and ``images.json`` (``image_id`` -> file,
categories); refuses to overwrite any of them. See :mod:`light_rcnn.deploy.outputs`.

Unreadable inputs (an image file that does not decode, e.g. truncated or a text file named .jpg;
a video frame that fails while the video's frame count says more follow) are skipped: a warning
names each file (and frame) with the reason, ``images.json["skipped"]`` lists them (``id``,
``file``, ``reason``), the summary counts them, and everything else is written as usual. The
other inputs keep ``image_id`` = index in input order (a skipped image leaves a gap), so ids stay
the same whichever files could be read. Files in a folder without an image extension are not
inputs at all and are ignored, as before. ``--strict`` stops at the first unreadable input with
an error naming it instead (no JSON written then).

Exit status: 0 when every input was predicted; 3 when some were skipped (all outputs of the
others written); 2 for a bad command line; 1 for other errors (missing input, an existing output
file, ``--strict`` and an unreadable input, ...).
"""
import argparse
import math
import os
import sys

import torch

import light_rcnn  # noqa: F401  (registers components and data sets)
from light_rcnn.data import register_builtin_datasets
from light_rcnn.deploy import load_predictor
from light_rcnn.deploy.inputs import open_input
from light_rcnn.deploy.outputs import check_new_files, metadata_from_cfg, output_files, predict_to_folder


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"'{text}': expected a positive integer")
    return value


# Exit status when some inputs were skipped as unreadable and the rest were written.
EXIT_SKIPPED = 3
# Skipped inputs listed one by one at the end of a run (all are in images.json).
MAX_LISTED_SKIPS = 20


def probability(text):
    """A float in [0, 1] (NaN refused), for ``--confidence-threshold``."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:  # also False for NaN
        raise argparse.ArgumentTypeError(f"'{text}': expected a number in [0, 1]")
    return value


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="eager checkpoint (.pth), TorchScript (.ts/.pt) or ONNX (.onnx)")
    p.add_argument("--config-file", help="config of the model (required for a checkpoint; default for exported "
                   "files: config.yaml beside them)")
    p.add_argument("--input", required=True, help="an image, a folder of images, a glob pattern or a video")
    p.add_argument("--output", required=True, help="output folder (created; existing files are never overwritten)")
    p.add_argument("--batch-size", type=positive_int, default=1, help="frames per predictor call")
    p.add_argument("--threads", type=positive_int, help="CPU threads (torch.set_num_threads; ONNX Runtime intra-op)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: eager checkpoints only")
    p.add_argument("--confidence-threshold", type=probability, default=0.5,
                   help="drop detections scoring lower, from the overlays and the JSON; in [0, 1] "
                   "(0 keeps all, e.g. for AP)")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first unreadable image or video frame with an error naming it "
                   f"(default: skip it with a warning, list it in images.json, exit status {EXIT_SKIPPED})")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p


def main(argv=None):
    """Run the tool on ``argv`` (default: ``sys.argv[1:]``).

    Returns:
        dict: the written paths, ``"frames"`` (predicted) and ``"skipped"`` (empty), when every
        input was predicted.

    Raises:
        SystemExit: with :data:`EXIT_SKIPPED` after writing every output when some inputs were
            skipped as unreadable (``images.json["skipped"]`` lists them); with 2 for a bad
            command line (argparse).
    """
    args = get_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    # Input and output files are checked before the model is loaded, so mistakes fail fast.
    source = open_input(args.input)
    paths = output_files(source, args.output)
    check_new_files(paths["overlays"] + [paths["results"], paths["images"]])
    predictor = load_predictor(args.model, config_file=args.config_file, opts=args.opts,
                               device=args.device, threads=args.threads)
    register_builtin_datasets(predictor.cfg)  # metadata (class names) of the config's data sets
    written = predict_to_folder(
        predictor, source, args.output, metadata_from_cfg(predictor.cfg), batch_size=args.batch_size,
        confidence_threshold=args.confidence_threshold, progress=not args.no_progress,
        skip_unreadable=not args.strict,
    )
    overlays = written["overlays"]
    skipped = written["skipped"]
    # No overlay is written for a skipped image: one PNG per predicted frame.
    if source.kind == "video":
        what = overlays[0]
    else:
        what = f"{written['frames']} PNG file(s) in {os.path.abspath(args.output)}"
    print(f"{written['frames']} frame(s) predicted, {len(skipped)} skipped (unreadable); model: {args.model}")
    print(f"overlays: {what}")
    print(f"results:  {os.path.abspath(written['results'])} (COCO results, image ids in {written['images']})")
    if skipped:
        for entry in skipped[:MAX_LISTED_SKIPS]:
            frame = f" frame {entry['frame_index']}" if "frame_index" in entry else ""
            print(f"warning: skipped {entry['file']}{frame}: {entry['reason']}", file=sys.stderr)
        more = f" ({len(skipped) - MAX_LISTED_SKIPS} more not shown)" if len(skipped) > MAX_LISTED_SKIPS else ""
        print(f"warning: {len(skipped)} unreadable input(s) skipped{more}, listed with their reasons in "
              f"{written['images']}; exit status {EXIT_SKIPPED}", file=sys.stderr)
        raise SystemExit(EXIT_SKIPPED)
    return written


if __name__ == "__main__":
    main()
