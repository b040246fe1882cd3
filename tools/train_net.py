#!/usr/bin/env python
"""Train and evaluate light_rcnn (and detectron2) models; shaped like detectron2's tools/train_net.py.

    python tools/train_net.py --config-file light_rcnn://shapes/light_mask_rcnn_framework1_shapes.yaml
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/x/model_final.pth
    python tools/train_net.py --config-file CFG --resume            # continue from last_checkpoint
    python tools/train_net.py --config-file CFG --num-gpus 2        # 2 processes (GLOO on a CPU machine)
    # your own COCO-format data (datasets/README.md):
    python tools/train_net.py --config-file CFG \
        --register-coco my_train /data/my/train.json /data/my/images \
        --register-coco my_val /data/my/val.json /data/my/images \
        DATASETS.TRAIN '("my_train",)' DATASETS.TEST '("my_val",)' MODEL.ROI_HEADS.NUM_CLASSES 3
"""
import argparse

from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from light_rcnn.config import load_config, resolve_config_file
from light_rcnn.data import register_builtin_datasets
from light_rcnn.data.dataset_checks import register_coco_sets
from light_rcnn.engine import AtomicDetectionCheckpointer, Trainer, check_output_dir, check_weights


def argument_parser():
    parser = default_argument_parser()
    parser.add_argument(
        "--register-coco", nargs=3, action="append", default=[], metavar=("NAME", "JSON", "IMAGE_ROOT"),
        help="register a COCO-format instances set as NAME (checked loader, COCO evaluation); repeatable",
    )
    return parser


def setup(args):
    """Config from defaults + file + ``KEY VALUE`` opts; refuses to clobber checkpoints; logs;
    registers the data sets (in every process)."""
    # default_setup logs the file's contents, so it gets the resolved light_rcnn:// path.
    config_file = resolve_config_file(args.config_file, key="--config-file") if args.config_file else ""
    cfg = load_config(config_file, args.opts)
    check_output_dir(cfg.OUTPUT_DIR, resume=args.resume, eval_only=args.eval_only)
    check_weights(cfg.MODEL.WEIGHTS)
    cfg.freeze()
    default_setup(cfg, argparse.Namespace(**{**vars(args), "config_file": config_file}))
    register_builtin_datasets(cfg)
    register_coco_sets(args.register_coco)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        AtomicDetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
