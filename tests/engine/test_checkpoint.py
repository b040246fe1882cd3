"""light_rcnn.engine.checkpoint.check_pretrained_backbone: a classifier trunk that does not fit the
detector fails naming the keys, for both shapes detectors (Mask R-CNN R50-C4, Light Mask R-CNN
framework 1), directly and through AtomicDetectionCheckpointer."""
import pytest
import torch
from detectron2.modeling import build_model

from light_rcnn import load_config
from light_rcnn.engine.checkpoint import (
    AtomicDetectionCheckpointer,
    check_pretrained_backbone,
    is_classifier_checkpoint,
    load_classifier_trunk,
    trunk_prefixes,
)
from light_rcnn.engine import Trainer
from light_rcnn.engine.classifier import build_classifier, export_detection_state

from ..conftest import tiny_shapes_opts

C4 = "light_rcnn://shapes/mask_rcnn_R_50_C4_shapes.yaml"
FRAMEWORK1 = "light_rcnn://shapes/light_mask_rcnn_framework1_shapes.yaml"
# 1/16 of ResNet-50's width: every stage of the shapes configs' trunk at a quarter of its width.
TINY = ["MODEL.RESNETS.WIDTH_PER_GROUP", 4, "MODEL.RESNETS.RES2_OUT_CHANNELS", 16,
        "MODEL.RESNETS.STEM_OUT_CHANNELS", 8]


@pytest.fixture(scope="module", autouse=True)
def one_thread(torch_threads):
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def detectors():
    torch.manual_seed(0)
    return {name: build_model(load_config(cfg, TINY)) for name, cfg in
            (("c4", C4), ("framework1", FRAMEWORK1))}


@pytest.fixture(scope="module")
def trunk():
    """A classifier checkpoint of the same tiny trunk, as tools/train_classifier.py writes it."""
    torch.manual_seed(1)
    model = build_classifier("resnet", 1.0, 5, TINY, C4)
    return {"model": export_detection_state(model.state_dict()), "matching_heuristics": True,
            "arch": "resnet"}


def _with(trunk, drop=(), add=None):
    state = {k: v for k, v in trunk["model"].items() if k not in drop}
    state.update(add or {})
    return {**trunk, "model": state}


def test_trunk_prefixes(detectors):
    assert trunk_prefixes(detectors["c4"]) == ("backbone.", "roi_heads.res5.")
    assert trunk_prefixes(detectors["framework1"]) == ("backbone.bottom_up.",)


def test_fitting_trunk_passes_both_detectors(detectors, trunk):
    c4 = check_pretrained_backbone(detectors["c4"], trunk)
    assert c4["backbone.res4.5.conv3.weight"] == "res4.5.conv3.weight"
    assert c4["roi_heads.res5.2.conv3.weight"] == "res5.2.conv3.weight"
    assert set(c4.values()) == set(trunk["model"])  # R50-C4 uses every tensor
    light = check_pretrained_backbone(detectors["framework1"], trunk)
    assert light["backbone.bottom_up.stem.conv1.weight"] == "stem.conv1.weight"
    # framework 1 stops at C4: exactly res5 stays unused, which is allowed
    assert {k for k in trunk["model"] if k not in set(light.values())} == \
        {k for k in trunk["model"] if k.startswith("res5.")}


@pytest.mark.parametrize("name, model_key", [("c4", "backbone.res3.1.conv2.weight"),
                                             ("framework1", "backbone.bottom_up.res3.1.conv2.weight")])
def test_missing_key_is_named(detectors, trunk, name, model_key):
    bad = _with(trunk, drop=["res3.1.conv2.weight"])
    with pytest.raises(ValueError, match=r"missing backbone keys.*" + model_key.replace(".", r"\.")):
        check_pretrained_backbone(detectors[name], bad)


def test_res5_is_required_where_the_detector_has_it(detectors, trunk):
    bad = _with(trunk, drop=["res5.0.conv1.weight"])
    with pytest.raises(ValueError, match=r"roi_heads\.res5\.0\.conv1\.weight"):
        check_pretrained_backbone(detectors["c4"], bad)
    check_pretrained_backbone(detectors["framework1"], bad)  # it has no res5


@pytest.mark.parametrize("extra", ["res4.0.extra.weight", "fc.weight", "res5.9.conv1.weight"])
def test_unused_key_is_named(detectors, trunk, extra):
    bad = _with(trunk, add={extra: torch.zeros(3)})
    with pytest.raises(ValueError, match=r"unused checkpoint keys.*" + extra.replace(".", r"\.")):
        check_pretrained_backbone(detectors["c4"], bad)
    if not extra.startswith("res5."):  # framework 1 may leave all of res5 unused
        with pytest.raises(ValueError, match=extra.replace(".", r"\.")):
            check_pretrained_backbone(detectors["framework1"], bad)


def test_wrong_width_names_the_shapes(detectors):
    wide = build_classifier("resnet", 1.0, 5, TINY[:1] + [8] + TINY[2:], C4)  # 8 per group
    ckpt = {"model": export_detection_state(wide.state_dict()), "matching_heuristics": True,
            "arch": "resnet"}
    with pytest.raises(ValueError, match=r"shape mismatches: backbone\.res2\.0\.conv1\.norm\.bias "
                                         r"\(checkpoint res2\.0\.conv1\.norm\.bias \(8,\), model \(4,\)\)"):
        check_pretrained_backbone(detectors["c4"], ckpt)


def test_checkpointer_checks_classifier_checkpoints_only(detectors, trunk, tmp_path):
    model = detectors["framework1"]
    good, bad = str(tmp_path / "good.pth"), str(tmp_path / "bad.pth")
    torch.save(trunk, good)
    torch.save(_with(trunk, drop=["stem.conv1.weight"]), bad)
    assert is_classifier_checkpoint(torch.load(good)) and not is_classifier_checkpoint({"model": {}})

    AtomicDetectionCheckpointer(model).load(good)
    state = model.state_dict()
    for key, value in trunk["model"].items():
        if not key.startswith("res5."):
            assert torch.equal(state["backbone.bottom_up." + key], value), key
    with pytest.raises(ValueError, match=r"bad\.pth.*backbone\.bottom_up\.stem\.conv1\.weight"):
        AtomicDetectionCheckpointer(model).load(bad)
    AtomicDetectionCheckpointer(model, strict_pretrained=False).load(bad)  # detectron2's way: logs

    # a detection checkpoint (no "arch") is loaded as detectron2 does, unchecked
    detection = str(tmp_path / "detection.pth")
    torch.save({"model": {k: v for k, v in state.items() if "stem" not in k}}, detection)
    AtomicDetectionCheckpointer(model).load(detection)


def test_exact_names_without_matching_heuristics(detectors, trunk):
    """Without "matching_heuristics" detectron2 loads by equal names: the bare trunk loads
    nowhere, so every trunk key is missing and every checkpoint key unused."""
    plain = {**trunk, "matching_heuristics": False}
    with pytest.raises(ValueError, match=r"missing backbone keys.*unused checkpoint keys"):
        check_pretrained_backbone(detectors["c4"], plain)
    prefixed = {"model": {"backbone.bottom_up." + k: v for k, v in trunk["model"].items()
                          if not k.startswith("res5.")}, "arch": "resnet"}
    check_pretrained_backbone(detectors["framework1"], prefixed)


def test_trainer_refuses_a_trunk_that_does_not_fit_before_training(detectors, trunk, tmp_path):
    """tools/train_net.py's Trainer checks MODEL.WEIGHTS when it is a classifier checkpoint and
    loads it (load_classifier_trunk); a detection checkpoint or no weights are not its business."""
    bad = str(tmp_path / "bad.pth")
    torch.save(_with(trunk, drop=["res4.0.conv1.weight"]), bad)
    with pytest.raises(ValueError, match=r"bad\.pth.*backbone\.res4\.0\.conv1\.weight"):
        load_classifier_trunk(detectors["c4"], bad)
    good = str(tmp_path / "good.pth")
    torch.save(trunk, good)
    assert load_classifier_trunk(detectors["c4"], good)
    torch.testing.assert_close(detectors["c4"].roi_heads.res5[2].conv3.weight, trunk["model"]["res5.2.conv3.weight"])
    assert not load_classifier_trunk(detectors["c4"], "")
    detection = str(tmp_path / "detection.pth")
    torch.save({"model": {}}, detection)
    assert not load_classifier_trunk(detectors["c4"], detection)

    cfg = load_config(C4, TINY + tiny_shapes_opts(str(tmp_path / "data"), 4, 2) + [
        "MODEL.WEIGHTS", bad, "OUTPUT_DIR", str(tmp_path / "run"), "DATALOADER.NUM_WORKERS", 0])
    trainer = Trainer(cfg)
    with pytest.raises(ValueError, match=r"bad\.pth.*backbone\.res4\.0\.conv1\.weight"):
        trainer.resume_or_load(resume=False)


def test_thin_res5_head_is_not_trunk(trunk, tmp_path):
    """ThinRes5ROIHeads' res5-shaped blocks read the neck: the classifier's res5 is neither required
    nor loaded into them, even where a tensor's name and shape agree (conv3's norm)."""
    torch.manual_seed(0)
    model = build_model(load_config(FRAMEWORK1, TINY + ["MODEL.ROI_HEADS.NAME", "ThinRes5ROIHeads",
                                                        "MODEL.LIGHT_HEAD.RES5_BOTTLENECK_CHANNELS", 16]))
    assert trunk_prefixes(model) == ("backbone.bottom_up.",)
    norm = model.roi_heads.res5[1].conv3.norm
    assert norm.weight.shape == trunk["model"]["res5.1.conv3.norm.weight"].shape  # a name-and-shape match
    torch.nn.init.constant_(norm.weight, 0.5)
    path = str(tmp_path / "trunk.pth")
    torch.save(_with(trunk, add={"res5.1.conv3.norm.weight": torch.full_like(norm.weight, 3.0)}), path)
    assert load_classifier_trunk(model, path)
    torch.testing.assert_close(norm.weight, torch.full_like(norm.weight, 0.5))
    stem = model.backbone.bottom_up.stem.conv1.weight
    torch.testing.assert_close(stem, trunk["model"]["stem.conv1.weight"])
