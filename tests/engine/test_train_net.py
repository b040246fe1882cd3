"""tools/train_net.py end to end on CPU: training lowers the loss, --eval-only gives AP, --resume
continues, two GLOO processes train together, checkpoints are never clobbered."""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.engine import default_argument_parser

from light_rcnn import load_config
from light_rcnn.data import register_shapes_datasets
from light_rcnn.engine import AtomicDetectionCheckpointer, Trainer, check_weights

from ..conftest import REPO_ROOT, TINY_RESNET, TINY_SIZES, tiny_shapes_opts

CONFIG = os.path.join(REPO_ROOT, "configs", "shapes", "mask_rcnn_R_50_C4_shapes.yaml")
TRAIN_NET = os.path.join(REPO_ROOT, "tools", "train_net.py")


def _train_net_module():
    spec = importlib.util.spec_from_file_location("train_net", TRAIN_NET)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _opts(shapes_root, output_dir, max_iter):
    return TINY_RESNET + TINY_SIZES + tiny_shapes_opts(shapes_root) + [
        "SOLVER.MAX_ITER", max_iter, "SOLVER.IMS_PER_BATCH", 4, "SOLVER.BASE_LR", 0.001,
        "SOLVER.STEPS", (), "SOLVER.WARMUP_ITERS", 5, "SOLVER.CHECKPOINT_PERIOD", 10,
        "OUTPUT_DIR", output_dir, "SEED", 7,
    ]


def _args(*argv):
    return default_argument_parser().parse_args(list(map(str, argv)))


def test_training_lowers_loss(shapes_root, tmp_path):
    cfg = load_config(CONFIG, _opts(shapes_root, str(tmp_path), 40) + ["TEST.EVAL_PERIOD", 0, "DATASETS.TEST", ()])
    cfg.freeze()
    register_shapes_datasets(cfg)
    torch.manual_seed(0)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    losses = np.array([v for v, _ in trainer.storage.history("total_loss").values()])
    assert len(losses) == 40 and np.isfinite(losses).all()
    assert losses[-8:].mean() < 0.8 * losses[:8].mean(), losses


def test_eval_only_resume_and_no_clobber(shapes_root, tmp_path):
    train_net = _train_net_module()
    out = str(tmp_path / "run")
    train_net.main(_args("--config-file", CONFIG, *_opts(shapes_root, out, 10)))
    final = os.path.join(out, "model_final.pth")
    assert os.path.isfile(final)

    # --eval-only on the checkpoint gives COCO AP for boxes and masks.
    res = train_net.main(_args("--config-file", CONFIG, "--eval-only", *_opts(shapes_root, out, 10), "MODEL.WEIGHTS", final,
                                "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0))  # an untrained model scores low
    for task in ("bbox", "segm"):
        assert {"AP", "AP50", "APs", "APm", "APl"} <= set(res[task])
        assert np.isfinite(res[task]["AP"])

    # --resume continues from iteration 10 up to 14 instead of starting over.
    train_net.main(_args("--config-file", CONFIG, "--resume", *_opts(shapes_root, out, 14)))
    with open(os.path.join(out, "log.txt")) as f:
        log = f.read()
    assert "Starting training from iteration 10" in log
    assert torch.load(final, weights_only=False)["iteration"] == 13

    # A fresh run over existing checkpoints is refused, and the checkpoint is untouched.
    before = open(final, "rb").read()
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        train_net.main(_args("--config-file", CONFIG, *_opts(shapes_root, out, 10)))
    assert open(final, "rb").read() == before


def test_two_cpu_processes_train_and_write_one_checkpoint(shapes_root, tmp_path):
    out = str(tmp_path / "ddp")
    cmd = [sys.executable, TRAIN_NET, "--config-file", CONFIG, "--num-gpus", "2",
           "--dist-url", "tcp://127.0.0.1:%d" % (29500 + os.getpid() % 1000)]
    cmd += list(map(str, _opts(shapes_root, out, 4) + ["DATASETS.TEST", "()"]))
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world size: 2" in (proc.stdout + proc.stderr).lower() or "rank 1" in (proc.stdout + proc.stderr).lower()
    pths = sorted(f for f in os.listdir(out) if f.endswith(".pth"))
    assert pths == ["model_final.pth"]
    assert torch.load(os.path.join(out, "model_final.pth"), weights_only=False)["iteration"] == 3


def test_remote_or_missing_weights_fail_with_what_to_provide(tmp_path, monkeypatch):
    monkeypatch.delenv("LIGHT_RCNN_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(FileNotFoundError, match=r"MODEL.WEIGHTS .*R-50.pkl.*would be downloaded"):
        check_weights("detectron2://ImageNetPretrained/MSRA/R-50.pkl")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_weights(str(tmp_path / "nope.pth"))
    check_weights("")  # training from scratch needs no file


def test_failed_checkpoint_write_keeps_previous_file(tmp_path):
    model = torch.nn.Linear(3, 2)
    ckpt = AtomicDetectionCheckpointer(model, str(tmp_path))
    ckpt.save("model_final")
    before = open(tmp_path / "model_final.pth", "rb").read()

    class Unpicklable:
        def state_dict(self):
            return {"f": lambda: None}

    bad = AtomicDetectionCheckpointer(model, str(tmp_path), broken=Unpicklable())
    with pytest.raises(Exception):
        bad.save("model_final")
    assert open(tmp_path / "model_final.pth", "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]
