#!/usr/bin/env python
"""Print the multiply-adds of the mobile classifiers against their papers (Markdown table).

    python tools/flops_table.py [--image-size 224]

See :mod:`light_rcnn.analysis.flops_table` for what is counted (fvcore; one multiply-add = one
flop; convolutions and fully-connected layers only).
"""
import argparse

from light_rcnn.analysis.flops_table import flops_table, format_markdown


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224,
                        help="side of the square input (the papers' numbers are for 224)")
    args = parser.parse_args(argv)
    print(format_markdown(flops_table(image_size=args.image_size), args.image_size))


if __name__ == "__main__":
    main()
