"""light_rcnn.checkpoint_convert / tools/convert_torchvision_to_d2.py: a torchvision ResNet-50
converted to detectron2 naming loads into build_resnet_backbone with every tensor equal, and
both networks compute the same res5 / layer4 features."""
import os
import pickle

import pytest
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import build_resnet_backbone

from light_rcnn import get_light_rcnn_cfg
from light_rcnn.checkpoint_convert import (
    TORCHVISION_PIXEL_MEAN,
    TORCHVISION_PIXEL_STD,
    convert_file,
    convert_torchvision_resnet,
    detectron2_config_changes,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # shared 2-core machine: one thread is much faster
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def torchvision_r50(tmp_path_factory):
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    # non-trivial BN statistics, so a dropped or swapped running_mean/var would show
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
                m.num_batches_tracked.fill_(7)
    path = str(tmp_path_factory.mktemp("tv") / "resnet50.pth")
    torch.save(model.state_dict(), path)
    return model, path


def _d2_resnet50():
    cfg = get_light_rcnn_cfg()
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False  # torchvision's ResNet-50 v1.5
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    return build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()


def _expected_name(tv_key):
    k = tv_key if tv_key.startswith("layer") else "stem." + tv_key
    for t in (1, 2, 3, 4):
        k = k.replace(f"layer{t}", f"res{t + 1}")
    for t in (1, 2, 3):
        k = k.replace(f"bn{t}", f"conv{t}.norm")
    return k.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


@pytest.mark.parametrize("ext", [".pkl", ".pth"])
def test_round_trip(torchvision_r50, tmp_path, ext):
    tv_model, src = torchvision_r50
    dst = str(tmp_path / f"r50{ext}")
    out = convert_file(src, dst)
    assert out["depth"] == 50 and out["__author__"] == "torchvision"
    assert out["matching_heuristics"] is True
    assert not any(k.startswith("fc") or ".fc." in k for k in out["model"])

    d2 = _d2_resnet50()
    DetectionCheckpointer(d2).load(dst)
    d2_state = d2.state_dict()
    tv_state = tv_model.state_dict()
    assert len(d2_state) == len(tv_state) - 2  # fc.weight, fc.bias dropped
    for key, value in tv_state.items():
        if key.startswith("fc."):
            continue
        assert torch.equal(d2_state[_expected_name(key)], value), key

    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 96)  # same (already normalized) input to both
    with torch.no_grad():
        m = tv_model
        y_tv = m.layer4(m.layer3(m.layer2(m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x))))))))
        y_d2 = d2(x)["res5"]
    assert y_d2.shape == y_tv.shape == (2, 2048, 2, 3)
    torch.testing.assert_close(y_d2, y_tv, rtol=1e-4, atol=1e-4)


def test_pkl_is_detectron2_zoo_format(torchvision_r50, tmp_path):
    dst = str(tmp_path / "r50.pkl")
    convert_file(torchvision_r50[1], dst)
    with open(dst, "rb") as f:
        data = pickle.load(f)
    assert set(data) == {"model", "__author__", "matching_heuristics"}
    assert data["model"]["stem.conv1.weight"].shape == (64, 3, 7, 7)
    assert "res2.0.shortcut.norm.running_var" in data["model"]


def test_not_a_resnet(tmp_path):
    state = torchvision.models.mobilenet_v2(weights=None).state_dict()
    with pytest.raises(ValueError, match=r"missing keys \['conv1.weight'"):
        convert_torchvision_resnet(state)
    src = str(tmp_path / "mnv2.pth")
    torch.save(state, src)
    with pytest.raises(ValueError, match="Not a torchvision ResNet"):
        convert_file(src, str(tmp_path / "out.pkl"))
    assert not os.path.exists(tmp_path / "out.pkl")
    r18 = torchvision.models.resnet18(weights=None).state_dict()
    r18["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"unexpected keys \['extra.weight'\]"):
        convert_torchvision_resnet(r18)


def test_config_changes_text():
    text = detectron2_config_changes(50)
    assert 'FORMAT: "RGB"' in text and "STRIDE_IN_1X1: False" in text and "DEPTH: 50" in text
    assert "PIXEL_MEAN: [123.675, 116.280, 103.530]" in text
    assert "PIXEL_STD: [58.395, 57.120, 57.375]" in text
    # torchvision's 0-1 RGB mean/std on detectron2's 0-255 scale
    for mean, std, tv_mean, tv_std in zip(TORCHVISION_PIXEL_MEAN, TORCHVISION_PIXEL_STD,
                                          (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)):
        assert mean == pytest.approx(tv_mean * 255) and std == pytest.approx(tv_std * 255)
    assert "RES2_OUT_CHANNELS: 64" in detectron2_config_changes(18)




def test_command_line(torchvision_r50, tmp_path, capsys, load_tool):
    tool = load_tool("convert_torchvision_to_d2")
    dst = str(tmp_path / "r50.pkl")
    out = tool.main([torchvision_r50[1], dst])
    assert out["depth"] == 50 and os.path.isfile(dst)
    printed = capsys.readouterr().out
    assert f"Wrote {len(out['model'])} tensors of a torchvision ResNet-50 to {dst}" in printed
    assert 'FORMAT: "RGB"' in printed
    with pytest.raises(SystemExit, match="2"):
        tool.main([str(tmp_path / "missing.pth"), str(tmp_path / "x.pkl")])
    assert "input '" in capsys.readouterr().err
