"""Config-driven decomposition of detectors (DecompositionHook, apply_decomposition,
DecomposedGeneralizedRCNN) and tools/decompose_net.py end to end, on tiny CPU models."""
import os
import re

import pytest
import torch
import yaml
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.structures import Boxes

from light_rcnn import load_config
from light_rcnn.compression import (
    PAPER_RANDOM_DATA_ERRORS,
    ChannelDecomposedConv,
    DecomposedGeneralizedRCNN,
    DepthwiseSeparableConv,
    apply_decomposition,
    build_decomposition_loader,
    decompose_layers,
    find_decomposable_convs,
)
from light_rcnn.data import register_shapes_datasets

NARROW = ["MODEL.SLK.MID_CHANNELS", 8, "MODEL.SLK.OUT_CHANNELS", 16, "MODEL.LIGHT_HEAD.CONV_DIMS", [16, 16],
          "MODEL.ROI_MASK_HEAD.CONV_DIM", 8]
LAYERS = [r"roi_heads\.subnet\.conv\d+", r"backbone\.branch_[ab]\.[01]", r".*res4\.\d+\.conv2"]


@pytest.fixture
def configs(config_file):
    """(framework 1 shapes config, its decomposed counterpart)."""
    return (config_file("shapes/light_mask_rcnn_framework1_shapes.yaml"),
            config_file("shapes/light_mask_rcnn_decomposed_shapes.yaml"))


@pytest.fixture
def opts(shapes_root, tiny_resnet, tiny_sizes, tiny_shapes_opts):
    return tiny_resnet + tiny_sizes + NARROW + tiny_shapes_opts(shapes_root)


@pytest.fixture
def narrow_cpu(tiny_resnet):
    return tiny_resnet + NARROW + ["MODEL.DEVICE", "cpu"]


def _cfg(config, opts, extra=()):
    cfg = load_config(config, opts + list(extra))
    register_shapes_datasets(cfg)
    return cfg


def test_apply_decomposition_replaces_exactly_the_matched_convs(configs, opts):
    cfg = _cfg(configs[1], opts)
    model = build_model(cfg)
    assert isinstance(model, DecomposedGeneralizedRCNN)
    names = model.decomposed_layers
    conv2s = [n for n in names if n.endswith(".conv2") and ".res" in n]
    assert len(conv2s) == 13  # res2-res4 of ResNet-50: 3 + 4 + 6 bottlenecks
    neck_and_subnet = {"backbone.branch_a.0", "backbone.branch_b.1", "roi_heads.subnet.conv1", "roi_heads.subnet.conv2"}
    assert neck_and_subnet <= set(names)
    for name in names:
        assert isinstance(model.get_submodule(name), DepthwiseSeparableConv), name
    # untouched: the stem's 7x7, every 1x1, the RPN conv
    assert isinstance(model.get_submodule("backbone.bottom_up.stem.conv1"), torch.nn.Conv2d)
    assert isinstance(model.get_submodule("proposal_generator.rpn_head.conv"), torch.nn.Conv2d)
    # the subnet's forward iterates a plain list: it must call the replacements
    subnet = model.roi_heads.subnet
    assert subnet.convs == [subnet.conv1, subnet.conv2]
    # the bottleneck norms were kept, with ReLU applied by the block as before
    assert model.get_submodule("backbone.bottom_up.res3.1.conv2").norm is not None


def test_channel_method_and_no_op(configs, narrow_cpu):
    cfg = load_config(configs[0], narrow_cpu)
    model = build_model(cfg)
    assert apply_decomposition(model, cfg) == []  # LAYERS empty: nothing happens
    cfg.merge_from_list(["MODEL.DECOMPOSE.LAYERS", [r"roi_heads\.subnet\.conv2"], "MODEL.DECOMPOSE.METHOD", "channel",
                         "MODEL.DECOMPOSE.CHANNEL_RANK_RATIO", 0.25])
    assert apply_decomposition(model, cfg) == ["roi_heads.subnet.conv2"]
    new = model.roi_heads.subnet.conv2
    assert isinstance(new, ChannelDecomposedConv) and new.rank == 4  # 0.25 * 16
    # already decomposed: the replacement's inner k x k conv is not a candidate again
    with pytest.raises(ValueError, match="matches no regular conv"):
        find_decomposable_convs(model, [r"roi_heads\.subnet\.conv2.*"])


@pytest.mark.parametrize("pattern,message", [
    (r"roi_heads\.subnet\.conv9", "matches no regular conv"),
    (r"conv2", "matches no regular conv"),  # fullmatch: a bare name matches nothing
    (r".*shortcut", "matches no regular conv"),  # 1x1 convs are not decomposable
    (r"roi_heads\.(subnet", "not a valid regular expression"),
])
def test_bad_pattern_raises_naming_key_and_pattern(pattern, message, configs, narrow_cpu):
    cfg = load_config(configs[0], narrow_cpu + ["MODEL.META_ARCHITECTURE", "DecomposedGeneralizedRCNN",
                                                "MODEL.DECOMPOSE.LAYERS", [r"roi_heads\.subnet\.conv1", pattern]])
    with pytest.raises(ValueError, match=message) as e:
        build_model(cfg)
    assert "MODEL.DECOMPOSE.LAYERS" in str(e.value) and repr(pattern) in str(e.value)


def test_bad_method_raises(configs, narrow_cpu):
    cfg = load_config(configs[0], narrow_cpu + ["MODEL.META_ARCHITECTURE", "DecomposedGeneralizedRCNN",
                                                "MODEL.DECOMPOSE.LAYERS", [r"roi_heads\.subnet\.conv1"],
                                                "MODEL.DECOMPOSE.METHOD", "svd"])
    with pytest.raises(ValueError, match="MODEL.DECOMPOSE.METHOD='svd'"):
        build_model(cfg)


def _near_separable(model, names, noise=0.02):
    """Trained convs are redundant; random ones are not (Sec. 4.1). Make the selected convs
    depthwise-separable up to ``noise`` so that a good decomposition must stay close."""
    g = torch.Generator().manual_seed(0)
    for name in names:
        conv = model.get_submodule(name)
        n, c, kh, kw = conv.weight.shape
        w = (torch.randn(n, c, 1, generator=g) * torch.randn(1, c, kh * kw, generator=g)).reshape(n, c, kh, kw)
        w = w * (2.0 / (c * kh * kw)) ** 0.5 / w.std()  # He scale: activations neither vanish nor explode
        with torch.no_grad():
            conv.weight.copy_(w + noise * w.std() * torch.randn(w.shape, generator=g))


def _features_and_rois(model, images, boxes):
    with torch.no_grad():
        x = model.preprocess_image([{"image": im} for im in images])
        feats = model.backbone(x.tensor)
        rois = model.roi_heads.subnet(model.roi_heads.pooler([feats["thin"]], [Boxes(b) for b in boxes]))
    return feats["thin"], rois


def test_decomposed_model_stays_close_to_the_original(configs, opts):
    cfg = _cfg(configs[0], opts, extra=["MODEL.DECOMPOSE.NUM_IMAGES", 6])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    names = find_decomposable_convs(model, LAYERS)
    _near_separable(model, names)
    loader = build_decomposition_loader(cfg)
    images = [batch[0]["image"].float() for batch, _ in zip(loader, range(2))]  # sampled training images
    boxes = [torch.tensor([[4.0, 5.0, 40.0, 50.0], [10.0, 2.0, 60.0, 30.0]]), torch.tensor([[0.0, 0.0, 60.0, 60.0]])]
    ref_thin, ref_rois = _features_and_rois(model, images, boxes)

    reports = decompose_layers(model, names, loader, num_images=6, patches_per_image=40)
    assert len(reports) == len(names) and all(r.relative_error < 0.1 for r in reports), reports
    thin, rois = _features_and_rois(model, images, boxes)
    errors = [float((a - b).norm() / b.norm()) for a, b in ((thin, ref_thin), (rois, ref_rois))]
    assert 0 < errors[0] < 0.1 and 0 < errors[1] < 0.1, errors  # > 0: the replacements are what runs
    # the replaced layers are the ones that run
    assert all(isinstance(model.get_submodule(n), DepthwiseSeparableConv) for n in names)


def test_decomposed_checkpoint_reloads_into_the_config_built_model(configs, opts, tmp_path):
    cfg = _cfg(configs[1], opts)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("decomposed")
    torch.manual_seed(1)
    fresh = build_model(cfg).eval()
    state = torch.load(tmp_path / "decomposed.pth", weights_only=False)["model"]
    fresh.load_state_dict(state, strict=True)  # no missing and no unexpected keys
    inputs = [{"image": torch.rand(3, 64, 90) * 255}]
    with torch.no_grad():
        a, b = model(inputs)[0]["instances"], fresh(inputs)[0]["instances"]
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)


def test_decompose_net_end_to_end(configs, opts, tmp_path, capsys, load_tool):
    tool = load_tool("decompose_net")
    config = configs[0]
    cfg = load_config(config, opts)
    opts = [str(o) if not isinstance(o, (list, tuple)) else str(list(o)) for o in opts]
    torch.manual_seed(0)
    trained = build_model(cfg)
    _near_separable(trained, find_decomposable_convs(trained, LAYERS))
    DetectionCheckpointer(trained, save_dir=str(tmp_path)).save("model_final")
    weights, out = str(tmp_path / "model_final.pth"), str(tmp_path / "decomposed")
    argv = ["--config-file", config, "--weights", weights, "--output-dir", out, "--num-images", "4",
            "--layers", *LAYERS, *opts]
    reports = tool.main(argv)
    printed = capsys.readouterr().out
    assert "rel. error" in printed and "roi_heads.subnet.conv2" in printed
    assert len(reports) == 12 and all(r.relative_error < 0.2 for r in reports)

    # config.yaml + checkpoint: a DecomposedGeneralizedRCNN that loads with no missing keys
    with open(os.path.join(out, "config.yaml")) as f:
        written = yaml.safe_load(f)
    assert written["MODEL"]["META_ARCHITECTURE"] == "DecomposedGeneralizedRCNN"
    assert written["MODEL"]["DECOMPOSE"]["LAYERS"] == LAYERS
    cfg_out = load_config(os.path.join(out, "config.yaml"))
    rebuilt = build_model(cfg_out)
    ckpt = torch.load(os.path.join(out, "model_decomposed.pth"), weights_only=False)
    rebuilt.load_state_dict(ckpt["model"], strict=True)
    assert [r["name"] for r in ckpt["decomposition"]] == [r.name for r in reports]

    # tools/train_net.py --eval-only on it (the files are what a user passes)
    train_net = load_tool("train_net")
    res = train_net.main(train_net.argument_parser().parse_args([
        "--config-file", os.path.join(out, "config.yaml"), "--eval-only",
        "MODEL.WEIGHTS", os.path.join(out, "model_decomposed.pth"), "OUTPUT_DIR", str(tmp_path / "eval"),
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]))
    assert "bbox" in res and "segm" in res

    # existing outputs are never overwritten; missing weights name the file
    before = open(os.path.join(out, "model_decomposed.pth"), "rb").read()
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        tool.main(argv)
    assert open(os.path.join(out, "model_decomposed.pth"), "rb").read() == before
    missing = str(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        tool.main(["--config-file", config, "--weights", missing, "--output-dir", str(tmp_path / "x"), *opts])
    # weights of another architecture are refused instead of decomposing random layers
    with pytest.raises(ValueError, match=r"--weights '.*model_final\.pth' does not fit the model"):
        tool.main(["--config-file", config, "--weights", weights, "--output-dir", str(tmp_path / "y"),
                   *opts, "MODEL.LIGHT_HEAD.CONV_DIMS", "[16, 32]"])
    # the config must be the undecomposed model's
    with pytest.raises(ValueError, match="already decomposes MODEL.DECOMPOSE.LAYERS"):
        tool.main(["--config-file", configs[1], "--weights", weights, "--output-dir", str(tmp_path / "z"), *opts])


def test_sanity_check_cli_prints_its_own_figures(capsys, load_tool):
    result = load_tool("decompose_net").main(["--sanity-check", "--sanity-channels", "16", "--sanity-trials", "1"])
    printed = capsys.readouterr().out
    assert "one 16 -> 16 3x3 conv, N = 3000 samples, 1 trials" in printed
    for method in PAPER_RANDOM_DATA_ERRORS:
        row = re.search(rf"^{re.escape(method)} +([0-9.]+) \+- \S+ +([0-9.]+) \+- \S+ +([0-9.]+)$", printed, re.M)
        assert row is not None, (method, printed)
        fitted, held_out = float(row.group(1)), float(row.group(2))
        # the table shows the computed errors, not the paper's
        assert fitted == pytest.approx(result[method][0], abs=5e-5)
        assert held_out == pytest.approx(result["held_out"][method][0], abs=5e-5)
        assert 0.5 < fitted < 1 and 0.5 < held_out < 1.2
    # Algorithm 2 lowers the error on the samples it is fitted to (Sec. 3.5 and 4.1)
    assert (result["depth-wise decomposition with compensation"][0]
            < result["depth-wise decomposition"][0])
