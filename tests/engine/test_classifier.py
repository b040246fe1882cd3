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
from light_rcnn.data.image_folder import ImageListDataset, build_transforms, caltech_split, scan_image_folder
from light_rcnn.engine.classifier import (
    PIXEL_MEAN_BGR,
    PIXEL_STD_BGR,
    Schedule,
    _recompute_bn_stats,
    build_classifier,
    resolve_schedule,
    train_classifier,
)


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
def one_thread(torch_threads):
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls_data")
    _make_folder(str(root / "train"))
    _make_folder(str(root / "val"), per_class=2, seed=1)
    return str(root)


@pytest.fixture(scope="module")
def learning_folder(tmp_path_factory):
    """16 training images per class: with 8 per class, batches of 8 and lr 0.05 the training loss
    spiked late (batches of one or two colours normalize the colour away in BN) and eval-mode top-1
    was chance for 2 of 5 seeds on an Intel Xeon. This recipe, probed over seeds 0-13 at 1 and 2
    threads: top-1 100 % every time, last/first-epoch loss ratio <= 0.07."""
    root = tmp_path_factory.mktemp("cls_learn")
    _make_folder(str(root / "train"), per_class=16)
    _make_folder(str(root / "val"), per_class=2, seed=1)
    return str(root)


@pytest.fixture(scope="module")
def trained(learning_folder, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cls_out") / "fd_0.25x.pth")
    return train_classifier(
        arch="fd_mobilenet", width_mult=0.25, data=learning_folder, output=out, image_size=64,
        # lr / 10 for the last 6 epochs; BN statistics re-estimated before each evaluation
        schedule=resolve_schedule(epochs=20, batch_size=16, lr=0.02, lr_steps=[14]),
        num_workers=0, device="cpu", log_period=0,
    )


def _cpu(**kwargs):
    return dict(num_workers=0, device="cpu", log_period=0, **kwargs)


def test_training_lowers_loss(trained):
    losses = trained["losses"]
    # 64-pixel crops: at 32 pixels stage5 is 1x1 and BN over 8 values is unstable
    assert len(losses) == 20 * 3 and all(np.isfinite(losses))  # 48 images, batches of 16
    assert np.mean(losses[-6:]) < 0.6 * np.mean(losses[:6]), losses


def test_top1_is_the_saved_classifiers_accuracy(trained, learning_folder):
    """The reported top-1 is the accuracy of the saved classifier on val/, computed here image by
    image, and a trained classifier of three separable colours beats chance (33%)."""
    ckpt = torch.load(trained["output"], map_location="cpu")
    model = build_classifier("fd_mobilenet", 0.25, len(ckpt["classes"]))
    model.load_state_dict(ckpt["classifier"])
    model.eval()
    classes, samples = scan_image_folder(os.path.join(learning_folder, "val"), ckpt["classes"])
    val = ImageListDataset(samples, build_transforms(64, train=False))
    with torch.no_grad():
        correct = [int(model(val[i][0][None])["linear"].argmax(1).item() == label)
                   for i, (_, label) in enumerate(samples)]
    expected = 100.0 * sum(correct) / len(correct)
    assert trained["top1"] == ckpt["top1"] == pytest.approx(expected)
    assert expected > 100.0 / 3


def test_precise_bn_sets_the_statistics_of_the_training_batches():
    """Re-estimated BN statistics are those of the batches seen (here every batch is the same)."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    images = torch.randn(6, 3, 5, 7) * 3 + 2
    loader = [(images, torch.zeros(6, dtype=torch.long))] * 4
    with torch.no_grad():
        features = model[0](images)
    _recompute_bn_stats(model.eval(), loader, 200, torch.device("cpu"))
    assert not model.training  # mode restored
    bn = model[1]
    torch.testing.assert_close(bn.running_mean, features.mean((0, 2, 3)))
    torch.testing.assert_close(bn.running_var, features.var((0, 2, 3), unbiased=False), rtol=1e-4, atol=1e-5)


def test_negative_precise_bn_batches_refused(image_folder, tmp_path):
    with pytest.raises(ValueError, match="precise_bn_batches must be >= 0, got -1"):
        train_classifier(arch="fd_mobilenet", data=image_folder, output=str(tmp_path / "o.pth"),
                         precise_bn_batches=-1, **_cpu())


def test_checkpoint_layout(trained):
    ckpt = torch.load(trained["output"], map_location="cpu")
    assert ckpt["matching_heuristics"] is True
    assert ckpt["arch"] == "fd_mobilenet" and ckpt["width_mult"] == 0.25 and ckpt["epoch"] == 20
    assert ckpt["input_format"] == "BGR"
    assert ckpt["pixel_mean"] == list(PIXEL_MEAN_BGR) and ckpt["pixel_std"] == list(PIXEL_STD_BGR)
    assert not any(k.startswith("linear.") for k in ckpt["model"])
    assert "linear.weight" in ckpt["classifier"] and ckpt["classes"] == sorted(COLOURS)


def test_pixel_convention_matches_detection_configs(config_file):
    for path in ["COCO-InstanceSegmentation/light_mask_rcnn_fd_mobilenet_1x.yaml",
                 "COCO-InstanceSegmentation/light_mask_rcnn_dilated_mobilenetv2_1x.yaml",
                 "PascalVOC-Detection/faster_rcnn_fd_mobilenet_1x.yaml",
                 "KITTI/faster_rcnn_dilated_mobilenetv2_layer17.yaml"]:
        cfg = load_config(config_file(path))
        assert cfg.INPUT.FORMAT == "BGR", path
        assert list(cfg.MODEL.PIXEL_MEAN) == list(PIXEL_MEAN_BGR), path
        assert list(cfg.MODEL.PIXEL_STD) == list(PIXEL_STD_BGR), path


@pytest.mark.parametrize("config, prefix", [
    ("COCO-InstanceSegmentation/light_mask_rcnn_fd_mobilenet_1x.yaml", "backbone.bottom_up."),
    ("PascalVOC-Detection/faster_rcnn_fd_mobilenet_0.25x.yaml", "backbone."),
])
def test_checkpoint_loads_into_detector(trained, config, prefix, config_file):
    cfg = load_config(config_file(config),
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
    base = dict(arch="mobilenet_v1", width_mult=0.125, data=image_folder, image_size=32,
                output=out, **_cpu())

    def schedule(epochs):
        return resolve_schedule(epochs=epochs, batch_size=8, lr=0.01)

    assert len(train_classifier(schedule=schedule(1), **base)["losses"]) == 3
    with pytest.raises(FileExistsError, match="v1.pth"):
        train_classifier(schedule=schedule(2), **base)
    resumed = train_classifier(schedule=schedule(2), resume=True, **base)
    assert len(resumed["losses"]) == 3  # only epoch 2 ran
    assert torch.load(out, map_location="cpu")["epoch"] == 2


def test_schedule_presets():
    s = resolve_schedule()
    assert s == Schedule("fd_mobilenet_imagenet", 90, 256, 0.1, 0.9, 4e-5, (30, 60), 0.1, 0.25)
    s = resolve_schedule(caltech=True)
    assert s.name == "dilated_caltech"
    assert (s.epochs, s.batch_size, s.lr, s.lr_gamma) == (300, 512, 0.045, 0.5)
    assert s.lr_steps == (50, 100, 130, 160, 190, 220, 250, 280)
    assert resolve_schedule("fd_mobilenet_imagenet", epochs=9).lr_steps == (3, 6)
    assert resolve_schedule(epochs=9, lr_steps=[5]).lr_steps == (5,)
    assert resolve_schedule(lr=None).lr == 0.1  # None keeps the preset's value
    with pytest.raises(ValueError, match="must be positive"):
        resolve_schedule(epochs=0)
    with pytest.raises(ValueError, match=r"Unknown schedule fields \['lr_step'\]"):
        resolve_schedule(lr_step=[1])


@pytest.fixture(scope="module")
def train_classifier_tool(load_tool):
    return load_tool("train_classifier")


def test_command_line_schedule(train_classifier_tool):
    tool = train_classifier_tool

    def schedule(*argv):
        args = tool.argument_parser().parse_args(["--data", "x", "--output", "y", *argv])
        return args, tool.schedule_from_args(args)

    args, s = schedule("--arch", "dilated_mobilenet_v2", "--caltech-split")
    assert args.caltech_split == 2000 and s.name == "dilated_caltech" and s.epochs == 300
    _, s = schedule("--arch", "fd_mobilenet", "--epochs", "9", "--batch-size", "8")
    assert (s.name, s.epochs, s.batch_size, s.lr_steps) == ("fd_mobilenet_imagenet", 9, 8, (3, 6))
    _, s = schedule("--arch", "fd_mobilenet", "--schedule", "dilated_caltech", "--lr-steps", "7")
    assert (s.name, s.lr_steps, s.lr) == ("dilated_caltech", (7,), 0.045)


def test_caltech_split(image_folder):
    classes, train, test = caltech_split(os.path.join(image_folder, "train"), 5, seed=3)
    assert classes == sorted(COLOURS) and len(test) == 5 and len(train) == 19
    assert not {p for p, _ in train} & {p for p, _ in test}
    assert caltech_split(os.path.join(image_folder, "train"), 5, seed=3)[2] == test
    with pytest.raises(ValueError, match="between 1 and 23"):
        caltech_split(os.path.join(image_folder, "train"), 24)


def test_missing_and_empty_folders(tmp_path):
    def run(data, **kwargs):
        return train_classifier(arch="fd_mobilenet", data=data, output=str(tmp_path / "o.pth"),
                                device="cpu", **kwargs)

    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="nope"):
        run(missing)
    (tmp_path / "data" / "train" / "cat").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "data" / "train" / "cat" / "a.jpg"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "data" / "train" / "dog").mkdir()
    with pytest.raises(FileNotFoundError, match=r"train[/\\]dog"):
        scan_image_folder(str(tmp_path / "data" / "train"))
    with pytest.raises(FileNotFoundError, match=r"train[/\\]dog"):
        run(str(tmp_path / "data"))
    with pytest.raises(FileNotFoundError, match=r"data[/\\]train[/\\]dog"):  # Caltech protocol
        run(str(tmp_path / "data" / "train"), caltech_split=1)
    (tmp_path / "no_train").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no_train[/\\]train"):
        run(str(tmp_path / "no_train"))


# ------------------------------------------------------------------------------------------------
# arch "resnet": detectron2's ResNet from a detection config's MODEL.RESNETS
# ------------------------------------------------------------------------------------------------
R50_C4_SHAPES = "light_rcnn://shapes/mask_rcnn_R_50_C4_shapes.yaml"
FRAMEWORK1_SHAPES = "light_rcnn://shapes/light_mask_rcnn_framework1_shapes.yaml"
# 1/16 of ResNet-50's width (a quarter of the shapes configs' quarter width), full depth.
TINY_RESNET_OPTS = ["MODEL.RESNETS.WIDTH_PER_GROUP", 4, "MODEL.RESNETS.RES2_OUT_CHANNELS", 16,
                    "MODEL.RESNETS.STEM_OUT_CHANNELS", 8]


@pytest.fixture(scope="module")
def shapes_crops_folder(tmp_path_factory):
    from light_rcnn.data.shapes_crops import build_shapes_crops

    return build_shapes_crops(str(tmp_path_factory.mktemp("crops")), train_scenes=12,
                              val_scenes=6, scene_size=64, crop_size=32)


@pytest.fixture(scope="module")
def resnet_trained(shapes_crops_folder, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cls_resnet") / "resnet.pth")
    return train_classifier(
        arch="resnet", config_file=R50_C4_SHAPES, opts=TINY_RESNET_OPTS, data=shapes_crops_folder,
        output=out, image_size=32, schedule=resolve_schedule(epochs=2, batch_size=8, lr=0.01),
        precise_bn_batches=2, **_cpu())


def test_resnet_classifier_is_detectron2s_resnet():
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.resnet import ResNet, build_resnet_backbone

    model = build_classifier("resnet", 1.0, 5, TINY_RESNET_OPTS, R50_C4_SHAPES)
    assert isinstance(model, ResNet) and model.stage_names == ("res2", "res3", "res4", "res5")
    model.eval()
    with torch.no_grad():
        for h, w in [(32, 32), (48, 40)]:
            out = model(torch.randn(2, 3, h, w))
            assert list(out) == ["linear"] and out["linear"].shape == (2, 5)
    assert model.linear.weight.shape == (5, 16 * 8)  # res5: RES2_OUT_CHANNELS * 8
    assert all(p.requires_grad for p in model.parameters())  # FREEZE_AT 0
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 1 + 16 * 3 + 4
    cfg = load_config(R50_C4_SHAPES, TINY_RESNET_OPTS)
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    trunk = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    trunk_keys = {k for k in model.state_dict() if not k.startswith("linear.")}
    assert trunk_keys == set(trunk.state_dict())
    assert {k: v.shape for k, v in model.state_dict().items() if k in trunk_keys} == \
        {k: v.shape for k, v in trunk.state_dict().items()}


def test_resnet_checkpoint_layout(resnet_trained):
    ckpt = torch.load(resnet_trained["output"], map_location="cpu")
    assert ckpt["arch"] == "resnet" and ckpt["epoch"] == 2 and ckpt["matching_heuristics"] is True
    assert ckpt["config_file"] == R50_C4_SHAPES
    assert ckpt["resnets"]["WIDTH_PER_GROUP"] == 4 and ckpt["resnets"]["NORM"] == "BN"
    assert ckpt["classes"] == ["background", "circle", "square", "star", "triangle"]
    assert all(np.isfinite(resnet_trained["losses"])) and len(resnet_trained["losses"]) > 0
    tops = {k.split(".")[0] for k in ckpt["model"]}
    assert tops == {"stem", "res2", "res3", "res4", "res5"}  # no "linear"
    assert ckpt["classifier"]["linear.weight"].shape == (5, 128)


@pytest.mark.parametrize("config, prefixes", [
    # detectron2's C4 Mask R-CNN: stem..res4 in the backbone, res5 in the ROI heads
    (R50_C4_SHAPES, {"stem": "backbone.", "res2": "backbone.", "res3": "backbone.",
                     "res4": "backbone.", "res5": "roi_heads."}),
    # Light Mask R-CNN stops at C4: res5 stays unused
    (FRAMEWORK1_SHAPES, {"stem": "backbone.bottom_up.", "res2": "backbone.bottom_up.",
                         "res3": "backbone.bottom_up.", "res4": "backbone.bottom_up."}),
])
def test_resnet_checkpoint_loads_into_both_shapes_detectors(resnet_trained, config, prefixes):
    from light_rcnn.engine.checkpoint import AtomicDetectionCheckpointer

    cfg = load_config(config, TINY_RESNET_OPTS + ["MODEL.WEIGHTS", resnet_trained["output"]])
    model = build_model(cfg)
    AtomicDetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)  # strict: raises on any misfit
    ckpt = torch.load(resnet_trained["output"], map_location="cpu")["model"]
    state = model.state_dict()
    expected = {prefixes[k.split(".")[0]] + k: k for k in ckpt if k.split(".")[0] in prefixes}
    trunk = {k for k in state if k.startswith(tuple(set(prefixes.values())))
             and k.split(".")[1 + k.startswith("backbone.bottom_up.")] in prefixes}
    assert set(expected) == trunk  # every trunk tensor of the detector comes from the checkpoint
    for model_key, key in expected.items():
        assert torch.equal(state[model_key], ckpt[key]), model_key
    assert not any("res5" in k for k in state) or "res5" in prefixes


def test_resnet_arguments_refused(resnet_trained, shapes_crops_folder, tmp_path):
    with pytest.raises(ValueError, match="leave width_mult at 1"):
        build_classifier("resnet", 0.5, 5, (), R50_C4_SHAPES)
    with pytest.raises(ValueError, match="config_file is read for arch 'resnet' only"):
        build_classifier("fd_mobilenet", 0.25, 5, (), R50_C4_SHAPES)
    other = str(tmp_path / "resumed.pth")
    with open(resnet_trained["output"], "rb") as src, open(other, "wb") as dst:
        dst.write(src.read())
    wider = TINY_RESNET_OPTS[:1] + [8] + TINY_RESNET_OPTS[2:]
    with pytest.raises(ValueError, match="MODEL.RESNETS"):
        train_classifier(arch="resnet", config_file=R50_C4_SHAPES, opts=wider,
                         data=shapes_crops_folder, output=other, image_size=32, resume=True,
                         schedule=resolve_schedule(epochs=3, batch_size=8, lr=0.01), **_cpu())


def test_command_line_resnet(train_classifier_tool, capsys):
    tool = train_classifier_tool
    args = tool.argument_parser().parse_args(
        ["--arch", "resnet", "--config-file", R50_C4_SHAPES, "--data", "x", "--output", "y",
         "MODEL.RESNETS.WIDTH_PER_GROUP", "4"])
    assert args.config_file == R50_C4_SHAPES and args.opts == ["MODEL.RESNETS.WIDTH_PER_GROUP", "4"]
    for argv, message in [(["--arch", "fd_mobilenet", "--config-file", R50_C4_SHAPES],
                           "--config-file is read with --arch resnet only"),
                          (["--arch", "resnet", "--width-mult", "0.5"], "leave --width-mult at 1")]:
        with pytest.raises(SystemExit):
            tool.main(argv + ["--data", "x", "--output", "y"])
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("config", ["COCO-InstanceSegmentation/light_mask_rcnn_fd_mobilenet_1x.yaml",
                                    "PascalVOC-Detection/faster_rcnn_fd_mobilenet_0.25x.yaml"])
def test_mobile_checkpoint_passes_the_strict_check(trained, config, config_file):
    """A mobile classifier fits its detectors under the strict check too (stage5, which the
    stage4 detectors drop, may stay unused)."""
    from light_rcnn.engine.checkpoint import check_pretrained_backbone

    cfg = load_config(config_file(config), ["MODEL.MOBILENET.WIDTH_MULT", 0.25, "MODEL.DEVICE", "cpu"])
    loaded = check_pretrained_backbone(build_model(cfg), trained["output"])
    assert loaded and all("stage5" not in k for k in loaded.values())
