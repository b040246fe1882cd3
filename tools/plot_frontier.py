#!/usr/bin/env python
"""Draw the speed-accuracy frontier: COCO AP (mean ± std over seeds) of every config against its
latency per image (p50), eager and the fastest exported runtime joined.

    # the seeds summaries of tools/demo.py --seeds (one per config), the latency files of
    # tools/benchmark.py (benchmark.json) and tools/benchmark_deploy.py (deploy_benchmark.json)
    python tools/plot_frontier.py \\
        --summaries output/shapes_runs/*/seeds_summary.json \\
        --latency output/bench/shapes/benchmark.json output/deploy/bench_fw1/deploy_benchmark.json \\
        --output-dir output/frontier
    # boxes only (bbox AP); latency files measured under different threads / inputs, on purpose
    python tools/plot_frontier.py --summaries A/seeds_summary.json B/ --latency bench/benchmark.json \\
        --metric bbox --allow-mixed-settings

Writes frontier.png and frontier.md to --output-dir and prints the Markdown; exits 2 naming the
file at fault when an input is missing, malformed or measured unlike the others. What is read from
each file and how configs are matched: light_rcnn.analysis.frontier.
"""
import argparse
import shlex
import sys

from light_rcnn.analysis.frontier import METRICS, FrontierInputError, plot_frontier


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--summaries", nargs="+", action="extend", required=True, metavar="JSON|DIR",
                   help="seeds_summary.json files of tools/demo.py --seeds (or their folders), one per config")
    p.add_argument("--latency", nargs="+", action="extend", default=[], metavar="JSON",
                   help="benchmark.json (tools/benchmark.py) and deploy_benchmark.json (tools/benchmark_deploy.py)")
    p.add_argument("--metric", choices=METRICS, default="segm", help="the AP plotted (default: segm)")
    p.add_argument("--output-dir", default="output/frontier", help="where frontier.png and frontier.md go")
    p.add_argument("--allow-mixed-settings", action="store_true",
                   help="plot latency files measured with different devices, threads, inputs or precisions")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    command = " ".join(shlex.quote(a) for a in ["tools/plot_frontier.py"] + list(argv if argv is not None
                                                                               else sys.argv[1:]))
    try:
        result = plot_frontier(args.summaries, args.latency, args.output_dir, metric=args.metric,
                               allow_mixed_settings=args.allow_mixed_settings, command_line=command)
    except FrontierInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for w in result["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    print(result["text"])
    print(f"wrote {result['png']} and {result['markdown']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
