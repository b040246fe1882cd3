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
"""
import argparse
import os

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
    p.add_argument("--confidence-threshold", type=float, default=0.5,
                   help="drop detections scoring lower, from the overlays and the JSON (0 keeps all, e.g. for AP)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p


def main(argv=None):
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
    )
    overlays = written["overlays"]
    what = overlays[0] if source.kind == "video" else f"{len(overlays)} PNG file(s) in {os.path.abspath(args.output)}"
    print(f"{written['frames']} frame(s) predicted with {args.model}")
    print(f"overlays: {what}")
    print(f"results:  {os.path.abspath(written['results'])} (COCO results, image ids in {written['images']})")
    return written


if __name__ == "__main__":
    main()
