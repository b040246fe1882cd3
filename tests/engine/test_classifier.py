"""tools/train_classifier.py (light_rcnn.engine.classifier): a few CPU steps on a tiny generated
image folder lower the loss, and the checkpoint loads into the detectors' bottom-up backbone."""
import os

import cv2
import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from light_rcnn import load_config
from light_rcnn.engine.classifier import (
    PIXEL_MEAN_BGR,
    PIXEL_STD_BGR,
    build_arg_parser,
    caltech_split,
    main,
    resolve_schedule,
    scan_image_folder,
)

from ..conftest import REPO_ROOT

# Class-dependent BGR colours (+ noise), 8 images of 32x32 per class.
COLOURS = {"blue": (200, 40, 40), "green": (40, 200, 40), "red": (40, 40, 200)}


def _make_folder(root, per_class=8, size=32, seed=0):
    rng = np.random.RandomState(seed)
    for name, bgr in COLOURS.items():
        os.makedirs(os.path.join(root, name))
        for i in range(per_class):
            img = np.clip(np.array(bgr)[None, None] + rng.randint(-30, 30, (size, size, 3)), 0,
                          255).astype(np.uint8)
            cv2.imwrite(os.path.join(root, name, f"{i}.png"), img)
    return root


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Two threads on the shared 2-core test machine are ~100x slower than one for these tiny convs.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls_data")
    _make_folder(str(root / "train"))
    _make_folder(str(root / "val"), per_class=2, seed=1)
    return str(root)


@pytest.fixture(scope="module")
def trained(image_folder, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cls_out") / "fd_0.25x.pth")
    result = main(["--arch", "fd_mobilenet", "--width-mult", "0.25", "--data", image_folder,
                   "--epochs", "10", "--batch-size", "8", "--lr", "0.05", "--image-size", "64",
                   "--output", out, "--num-workers", "0", "--device", "cpu", "--log-period", "0"])
    return result


def test_training_lowers_loss(trained):
    losses = trained["losses"]
    # 64-pixel crops: at 32 pixels stage5 is 1x1 and BN over 8 values is unstable
    assert len(losses) == 10 * 3 and all(np.isfinite(losses))
    assert np.mean(losses[-6:]) < 0.6 * np.mean(losses[:6]), losses
    assert 0.0 <= trained["top1"] <= 100.0


def test_checkpoint_layout(trained):
    ckpt = torch.load(trained["output"], map_location="cpu")
    assert ckpt["matching_heuristics"] is True
    assert ckpt["arch"] == "fd_mobilenet" and ckpt["width_mult"] == 0.25 and ckpt["epoch"] == 10
    assert ckpt["input_format"] == "BGR"
    assert ckpt["pixel_mean"] == list(PIXEL_MEAN_BGR) and ckpt["pixel_std"] == list(PIXEL_STD_BGR)
    assert not any(k.startswith("linear.") for k in ckpt["model"])
    assert "linear.weight" in ckpt["classifier"] and ckpt["classes"] == sorted(COLOURS)


def test_pixel_convention_matches_detection_configs():
    for path in ["COCO-InstanceSegmentation/light_mask_rcnn_fd_mobilenet_1x.yaml",
                 "COCO-InstanceSegmentation/light_mask_rcnn_dilated_mobilenetv2_1x.yaml",
                 "PascalVOC-Detection/faster_rcnn_fd_mobilenet_1x.yaml",
                 "KITTI/faster_rcnn_dilated_mobilenetv2_layer17.yaml"]:
        cfg = load_config(os.path.join(REPO_ROOT, "configs", path))
        assert cfg.INPUT.FORMAT == "BGR", path
        assert list(cfg.MODEL.PIXEL_MEAN) == list(PIXEL_MEAN_BGR), path
        assert list(cfg.MODEL.PIXEL_STD) == list(PIXEL_STD_BGR), path


@pytest.mark.parametrize("config, prefix", [
    ("COCO-InstanceSegmentation/light_mask_rcnn_fd_mobilenet_1x.yaml", "backbone.bottom_up."),
    ("PascalVOC-Detection/faster_rcnn_fd_mobilenet_0.25x.yaml", "backbone."),
])
def test_checkpoint_loads_into_detector(trained, config, prefix):
    cfg = load_config(os.path.join(REPO_ROOT, "configs", config),
                      ["MODEL.MOBILENET.WIDTH_MULT", 0.25, "MODEL.DEVICE", "cpu",
                       "MODEL.WEIGHTS", trained["output"]])
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    ckpt = torch.load(trained["output"], map_location="cpu")["model"]
    state = model.state_dict()
    bottom_up = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    # every detector backbone tensor came from the classifier (FrozenBN: no num_batches_tracked)
    assert bottom_up and set(bottom_up) <= set(ckpt)
    for key, value in bottom_up.items():
        assert torch.equal(value, ckpt[key]), key


def test_resume_and_refuse_overwrite(image_folder, tmp_path):
    out = str(tmp_path / "v1.pth")
    base = ["--arch", "mobilenet_v1", "--width-mult", "0.125", "--data", image_folder,
            "--batch-size", "8", "--lr", "0.01", "--image-size", "32", "--output", out,
            "--num-workers", "0", "--device", "cpu", "--log-period", "0"]
    assert len(main(base + ["--epochs", "1"])["losses"]) == 3
    with pytest.raises(FileExistsError, match="v1.pth"):
        main(base + ["--epochs", "2"])
    resumed = main(base + ["--epochs", "2", "--resume"])
    assert len(resumed["losses"]) == 3  # only epoch 2 ran
    assert torch.load(out, map_location="cpu")["epoch"] == 2


def test_schedule_presets():
    p = build_arg_parser()
    a = resolve_schedule(p.parse_args(["--arch", "fd_mobilenet", "--data", "x", "--output", "y"]))
    assert (a.epochs, a.batch_size, a.lr, a.weight_decay, a.lr_steps, a.lr_gamma) == \
        (90, 256, 0.1, 4e-5, [30, 60], 0.1)
    a = resolve_schedule(p.parse_args(["--arch", "dilated_mobilenet_v2", "--data", "x",
                                       "--output", "y", "--caltech-split"]))
    assert a.caltech_split == 2000 and a.schedule == "dilated_caltech"
    assert (a.epochs, a.batch_size, a.lr, a.lr_gamma) == (300, 512, 0.045, 0.5)
    assert a.lr_steps == [50, 100, 130, 160, 190, 220, 250, 280]
    a = resolve_schedule(p.parse_args(["--arch", "fd_mobilenet", "--data", "x", "--output", "y",
                                       "--epochs", "9"]))
    assert a.lr_steps == [3, 6]


def test_caltech_split(image_folder):
    classes, train, test = caltech_split(os.path.join(image_folder, "train"), 5, seed=3)
    assert classes == sorted(COLOURS) and len(test) == 5 and len(train) == 19
    assert not {p for p, _ in train} & {p for p, _ in test}
    assert caltech_split(os.path.join(image_folder, "train"), 5, seed=3)[2] == test
    with pytest.raises(ValueError, match="between 1 and 23"):
        caltech_split(os.path.join(image_folder, "train"), 24)


def test_missing_and_empty_folders(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="nope"):
        main(["--arch", "fd_mobilenet", "--data", missing, "--output", str(tmp_path / "o.pth"),
              "--device", "cpu"])
    (tmp_path / "data" / "train" / "cat").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "data" / "train" / "cat" / "a.jpg"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "data" / "train" / "dog").mkdir()
    with pytest.raises(FileNotFoundError, match=r"train[/\\]dog"):
        scan_image_folder(str(tmp_path / "data" / "train"))
    with pytest.raises(FileNotFoundError, match=r"train[/\\]dog"):
        main(["--arch", "fd_mobilenet", "--data", str(tmp_path / "data"), "--output",
              str(tmp_path / "o.pth"), "--device", "cpu"])
    with pytest.raises(FileNotFoundError, match=r"data[/\\]train[/\\]dog"):  # Caltech protocol
        main(["--arch", "fd_mobilenet", "--data", str(tmp_path / "data" / "train"), "--output",
              str(tmp_path / "o.pth"), "--device", "cpu", "--caltech-split", "1"])
    (tmp_path / "no_train").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no_train[/\\]train"):
        main(["--arch", "fd_mobilenet", "--data", str(tmp_path / "no_train"), "--output",
              str(tmp_path / "o.pth"), "--device", "cpu"])
