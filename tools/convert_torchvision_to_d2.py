#!/usr/bin/env python
"""Convert a torchvision ResNet checkpoint (a .pth you supply; nothing is downloaded) to
detectron2's ResNet naming, loadable as MODEL.WEIGHTS.

    python tools/convert_torchvision_to_d2.py resnet50.pth R-50-torchvision.pkl

The converted weights expect torchvision's input convention; the config must say so:

    INPUT.FORMAT "RGB"  MODEL.PIXEL_MEAN [123.675, 116.280, 103.530]
    MODEL.PIXEL_STD [58.395, 57.120, 57.375]  MODEL.RESNETS.STRIDE_IN_1X1 False

(the tool prints the exact YAML; see light_rcnn/checkpoint_convert.py).
"""
import argparse
import os

from light_rcnn.checkpoint_convert import convert_file, detectron2_config_changes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="torchvision ResNet state dict (.pth)")
    parser.add_argument("output", help="converted checkpoint (.pkl: numpy pickle; else .pth)")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.input):
        parser.error(f"input '{args.input}' does not exist")
    try:
        out = convert_file(args.input, args.output)
    except ValueError as e:
        parser.exit(2, f"error: {args.input}: {e}\n")
    depth = out["depth"]
    print(f"Wrote {len(out['model'])} tensors of a torchvision ResNet"
          f"{'-' + str(depth) if depth else ''} to {args.output}")
    print("Use it with these config changes (torchvision's RGB input and normalization):\n")
    print(detectron2_config_changes(depth, args.output))
    return out


if __name__ == "__main__":
    main()
