"""tools/train_net.py end to end on CPU: training lowers the loss, --eval-only gives AP, --resume
continues, two GLOO processes train together, checkpoints are never clobbered."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from light_rcnn import load_config
from light_rcnn.data import generate_shapes_dataset, register_shapes_datasets
from light_rcnn.engine import AtomicDetectionCheckpointer, Trainer, check_weights

from ..conftest import tiny_shapes_opts

# tools/ is not a package: the tests load the script the way `python tools/train_net.py` runs it.
TRAIN_NET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools", "train_net.py")


@pytest.fixture(scope="module")
def train_net(load_tool):
    return load_tool("train_net")


@pytest.fixture
def config(config_file):
    return config_file("shapes/mask_rcnn_R_50_C4_shapes.yaml")


@pytest.fixture
def opts(shapes_root, tiny_resnet, tiny_sizes, tiny_shapes_opts):
    """``f(output_dir, max_iter)`` -> KEY VALUE overrides of a few-iteration tiny CPU run."""

    def make(output_dir, max_iter):
        return tiny_resnet + tiny_sizes + tiny_shapes_opts(shapes_root) + [
            "SOLVER.MAX_ITER", max_iter, "SOLVER.IMS_PER_BATCH", 4, "SOLVER.BASE_LR", 0.001,
            "SOLVER.STEPS", (), "SOLVER.WARMUP_ITERS", 5, "SOLVER.CHECKPOINT_PERIOD", 10,
            "OUTPUT_DIR", output_dir, "SEED", 7,
        ]

    return make


def _args(train_net, *argv):
    return train_net.argument_parser().parse_args(list(map(str, argv)))


def test_training_lowers_loss(config, opts, tmp_path):
    cfg = load_config(config, opts(str(tmp_path), 40) + ["TEST.EVAL_PERIOD", 0, "DATASETS.TEST", ()])
    cfg.freeze()
    register_shapes_datasets(cfg)
    torch.manual_seed(0)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    losses = np.array([v for v, _ in trainer.storage.history("total_loss").values()])
    assert len(losses) == 40 and np.isfinite(losses).all()
    assert losses[-8:].mean() < 0.8 * losses[:8].mean(), losses


def test_eval_only_resume_and_no_clobber(train_net, config, opts, tmp_path):
    out = str(tmp_path / "run")
    train_net.main(_args(train_net, "--config-file", config, *opts(out, 10)))
    final = os.path.join(out, "model_final.pth")
    assert os.path.isfile(final)

    # --eval-only on the checkpoint gives COCO AP for boxes and masks.
    res = train_net.main(_args(train_net, "--config-file", config, "--eval-only", *opts(out, 10), "MODEL.WEIGHTS", final,
                                "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0))  # an untrained model scores low
    for task in ("bbox", "segm"):
        assert {"AP", "AP50", "APs", "APm", "APl"} <= set(res[task])
        assert np.isfinite(res[task]["AP"])

    # --resume continues from iteration 10 up to 14 instead of starting over.
    train_net.main(_args(train_net, "--config-file", config, "--resume", *opts(out, 14)))
    with open(os.path.join(out, "log.txt")) as f:
        log = f.read()
    assert "Starting training from iteration 10" in log
    assert torch.load(final, weights_only=False)["iteration"] == 13

    # A fresh run over existing checkpoints is refused, and the checkpoint is untouched.
    before = open(final, "rb").read()
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        train_net.main(_args(train_net, "--config-file", config, *opts(out, 10)))
    assert open(final, "rb").read() == before


def test_two_cpu_processes_train_and_write_one_checkpoint(opts, tmp_path):
    out = str(tmp_path / "ddp")
    # light_rcnn:// as a user writes it: resolved by load_config, logged by default_setup.
    cmd = [sys.executable, TRAIN_NET, "--config-file", "light_rcnn://shapes/mask_rcnn_R_50_C4_shapes.yaml", "--num-gpus", "2",
           "--dist-url", "tcp://127.0.0.1:%d" % (29500 + os.getpid() % 1000)]
    cmd += list(map(str, opts(out, 4) + ["DATASETS.TEST", "()"]))
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
    with pytest.raises(Exception, match="pickle|lambda"):
        bad.save("model_final")
    assert open(tmp_path / "model_final.pth", "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]


def test_register_coco_is_repeatable_on_the_command_line(train_net):
    args = _args(train_net, "--config-file", "x.yaml", "--register-coco", "a", "a.json", "imgs",
                 "--register-coco", "b", "b.json", "imgs2", "SOLVER.MAX_ITER", 1)
    assert args.register_coco == [["a", "a.json", "imgs"], ["b", "b.json", "imgs2"]]
    assert args.opts == ["SOLVER.MAX_ITER", "1"]
    assert _args(train_net, "--config-file", "x.yaml").register_coco == []


@pytest.fixture
def forget_datasets():
    """Names to remove from detectron2's catalogs after the test."""
    names = []
    yield names
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_register_coco_trains_and_evaluates(train_net, config, opts, tmp_path, forget_datasets):
    """A user's COCO-format set (here: a generated one under other names) given only on the
    command line is trained on and evaluated, in each case through the checked loader."""
    train_json, train_root = generate_shapes_dataset(str(tmp_path / "mine"), "train", 8, 64, seed=5)
    val_json, val_root = generate_shapes_dataset(str(tmp_path / "mine"), "val", 3, 64, seed=6)
    out = str(tmp_path / "run")
    forget_datasets += ["my_train", "my_val"]
    flags = ["--config-file", config,
             "--register-coco", "my_train", train_json, train_root,
             "--register-coco", "my_val", val_json, val_root]
    cfg_opts = [*opts(out, 4), "DATASETS.TRAIN", ("my_train",), "DATASETS.TEST", ("my_val",),
                "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0]
    train_net.main(_args(train_net, *flags, *cfg_opts))
    assert torch.load(os.path.join(out, "model_final.pth"), weights_only=False)["iteration"] == 3
    with open(os.path.join(out, "log.txt")) as f:
        log = f.read()
    assert f"Loaded 8 images in COCO format from {train_json}" in log
    # the evaluation after training ran on my_val's 3 images (not on shapes_val)
    predictions = os.path.join(out, "inference", "my_val", "instances_predictions.pth")
    assert sorted(p["image_id"] for p in torch.load(predictions)) == [1, 2, 3]
    assert "Evaluation results for my_val" in log
    os.remove(predictions)

    # --eval-only of the same command line (its sets are registered again) gives COCO AP
    res = train_net.main(_args(train_net, *flags, "--eval-only", *cfg_opts, "MODEL.WEIGHTS",
                               os.path.join(out, "model_final.pth")))
    for task in ("bbox", "segm"):
        assert {"AP", "AP50", "APs", "APm", "APl"} <= set(res[task])
        assert np.isfinite(res[task]["AP"]), res
    assert sorted(p["image_id"] for p in torch.load(predictions)) == [1, 2, 3]


def test_register_coco_refuses_a_taken_name(train_net, config, opts, tmp_path):
    val_json, val_root = generate_shapes_dataset(str(tmp_path / "mine"), "val", 2, 64, seed=6)
    argv = ["--config-file", config, "--register-coco", "coco_2017_val", val_json, val_root,
            *opts(str(tmp_path / "run"), 1)]
    with pytest.raises(ValueError, match="'coco_2017_val' is already registered"):
        train_net.main(_args(train_net, *argv))


@pytest.mark.parametrize("config_name, evaluated, keys", [
    # the FD-MobileNet paper's VOC 2007 detector: VOC layout, PascalVOCDetectionEvaluator
    ("faster_rcnn_fd_mobilenet_voc_shapes.yaml", "shapes_voc_test", {"AP", "AP50", "AP75"}),
    # the dilated-MobileNetV2 paper's KITTI car detector: KITTI layout via prepare_kitti, COCO box AP
    ("faster_rcnn_dilated_mobilenetv2_kitti_shapes.yaml", "shapes_kitti_val", {"AP", "AP50", "APs", "APm", "APl"}),
])
def test_voc_and_kitti_detectors_train_and_evaluate(train_net, config_file, shapes_root, tiny_sizes, tmp_path,
                                                     config_name, evaluated, keys):
    out = str(tmp_path / "run")
    argv = ["--config-file", config_file(f"shapes/{config_name}"), *tiny_sizes,
            *tiny_shapes_opts(shapes_root, num_train=8, num_val=4),
            "SOLVER.MAX_ITER", 6, "SOLVER.STEPS", (), "SOLVER.WARMUP_ITERS", 2, "SOLVER.IMS_PER_BATCH", 2,
            "MODEL_EMA.ENABLED", False, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0, "OUTPUT_DIR", out]
    train_net.main(_args(train_net, *argv))  # trains, then evaluates on DATASETS.TEST
    final = os.path.join(out, "model_final.pth")
    assert torch.load(final, weights_only=False)["iteration"] == 5
    with open(os.path.join(out, "log.txt")) as f:
        assert f"Evaluation results for {evaluated} in csv format" in f.read()
    res = train_net.main(_args(train_net, "--eval-only", *argv, "MODEL.WEIGHTS", final))
    assert set(res) == {"bbox"}  # box-only detectors
    assert keys <= set(res["bbox"]) and np.isfinite(res["bbox"]["AP50"]), res
