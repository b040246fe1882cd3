#!/usr/bin/env python
"""Export a trained light_rcnn / detectron2 model to TorchScript or ONNX (optionally int8), with
boxes, classes, scores and masks, and check it against eager (light_rcnn/deploy/export.py).

Writes to --output: ``model.ts`` or ``model.onnx`` (+ ``model_int8.onnx`` with --int8) and the
``config.yaml`` that ``light_rcnn.deploy.load_predictor`` / tools/predict.py read beside the model.
Existing model files are never overwritten. The export-time check runs eager and the artifact on
the check images and prints the differences; the exit status is 1 when an fp32 artifact is out of
tolerance (box 0.05 px, score 1e-3, mask IoU 0.99, same detections).

    python tools/export_model.py --config-file light_rcnn://shapes/light_mask_rcnn_framework1_shapes.yaml \\
        --format onnx --int8 --output output/deploy/framework1_onnx \\
        MODEL.WEIGHTS output/shapes/light_mask_rcnn_framework1/model_final.pth
"""
import argparse
import sys

from detectron2.data.detection_utils import read_image

from light_rcnn import load_config
from light_rcnn.deploy import EXPORT_FORMATS, export_model


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE", help="config of the trained model")
    p.add_argument("--format", required=True, metavar="FORMAT",
                   help=f"one of {', '.join(sorted(EXPORT_FORMATS))}")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for the model file and config.yaml")
    p.add_argument("--int8", action="store_true",
                   help="also write model_int8.onnx (ONNX Runtime static quantization; --format onnx)")
    p.add_argument("--calibration-images", type=int, default=100, metavar="N",
                   help="--int8: training images (DATASETS.TRAIN[0]) for calibration (default: %(default)s)")
    p.add_argument("--check-image", action="append", metavar="IMAGE", dest="check_images",
                   help="an image for the export-time check; repeat for several "
                        "(default: --num-check-images images of DATASETS.TEST[0])")
    p.add_argument("--num-check-images", type=int, default=3, metavar="N", help="default: %(default)s")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads of the check")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides (MODEL.WEIGHTS path ...)")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.format not in EXPORT_FORMATS:
        raise SystemExit(f"export_model.py: --format {args.format!r} is not supported; choose one of "
                         f"{', '.join(sorted(EXPORT_FORMATS))}")
    cfg = load_config(args.config_file, args.opts)
    images = None
    if args.check_images:
        images = []
        for path in args.check_images:
            try:
                images.append(read_image(path, format="BGR"))
            except Exception as e:  # PIL's UnidentifiedImageError, OSError, FileNotFoundError
                raise SystemExit(f"export_model.py: --check-image {path!r} is not a readable image ({e})")
    artifacts = export_model(cfg, args.format, args.output, int8=args.int8, calibration_images=args.calibration_images,
                             check_images=images, num_check_images=args.num_check_images, threads=args.threads)
    failed = [a for a in artifacts if a.passed is False]
    if failed:
        print(f"export_model.py: {', '.join(a.path for a in failed)} differs from eager beyond the tolerance",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
