#!/usr/bin/env python
"""Train and evaluate light_rcnn (and detectron2) models; shaped like detectron2's tools/train_net.py.

    python tools/train_net.py --config-file configs/shapes/light_mask_rcnn_framework1_shapes.yaml
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/x/model_final.pth
    python tools/train_net.py --config-file CFG --resume            # continue from last_checkpoint
    python tools/train_net.py --config-file CFG --num-gpus 2        # 2 processes (GLOO on a CPU machine)
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from detectron2.engine import default_argument_parser, default_setup, launch  # noqa: E402
from detectron2.utils import comm  # noqa: E402

from light_rcnn import load_config  # noqa: E402
from light_rcnn.data import register_shapes_datasets  # noqa: E402
from light_rcnn.engine import AtomicDetectionCheckpointer, Trainer, check_output_dir, check_weights  # noqa: E402


def setup(args):
    """Config from defaults + file + ``KEY VALUE`` opts; refuses to clobber checkpoints; logs."""
    cfg = load_config(args.config_file, args.opts)
    check_output_dir(cfg.OUTPUT_DIR, resume=args.resume, eval_only=args.eval_only)
    check_weights(cfg.MODEL.WEIGHTS)
    cfg.freeze()
    default_setup(cfg, args)
    register_shapes_datasets(cfg)
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
            from detectron2.evaluation import verify_results

            verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
