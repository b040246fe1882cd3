"""Student-teacher distillation (thesis Sec. 2.1.3) with tiny CPU teachers and students."""
import copy
import os

import pytest
import torch
import torch.nn.functional as F
from detectron2 import model_zoo
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import GeneralizedRCNN, build_model
from detectron2.solver import build_optimizer
from detectron2.utils.events import EventStorage
from torch import nn

from light_rcnn import load_config
from light_rcnn.compression.distillation import (
    DistillationRCNN,
    distillation_kl_loss,
    hint_loss,
    roi_box_path,
)

from ..conftest import REPO_ROOT, TINY_RESNET, box_mask_targets

BASE = f"{REPO_ROOT}/configs/Base-LightRCNN-C4.yaml"
COMMON = TINY_RESNET + [
    "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.ROI_HEADS.NUM_CLASSES", 3,
    "MODEL.RESNETS.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", 0,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 100, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 30,
    "MODEL.RPN.PRE_NMS_TOPK_TEST", 50, "MODEL.RPN.POST_NMS_TOPK_TEST", 12,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 16,
]
# Teacher: BN everywhere (its running statistics must not move) and another pixel mean.
TEACHER_OPTS = COMMON + [
    "MODEL.SLK.MID_CHANNELS", 8, "MODEL.SLK.OUT_CHANNELS", 16, "MODEL.SLK.NORM", "BN",
    "MODEL.LIGHT_HEAD.CONV_DIMS", [8, 24], "MODEL.ROI_MASK_HEAD.CONV_DIM", 8,
    "MODEL.PIXEL_MEAN", [90.0, 100.0, 110.0],
]
# Student: narrower ResNet, neck and subnet.
STUDENT_OPTS = COMMON + [
    "MODEL.RESNETS.WIDTH_PER_GROUP", 2, "MODEL.RESNETS.RES2_OUT_CHANNELS", 8,
    "MODEL.SLK.MID_CHANNELS", 4, "MODEL.SLK.OUT_CHANNELS", 8,
    "MODEL.LIGHT_HEAD.CONV_DIMS", [8, 12], "MODEL.ROI_MASK_HEAD.CONV_DIM", 8,
]
STUDENT_LOSSES = {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"}


def _save_teacher(cfg, path, seed=0):
    """Build a teacher from ``cfg`` with calibrated BN statistics and confident random class
    logits (an untrained teacher in eval mode has near-zero activations and uniform scores)."""
    torch.manual_seed(seed)
    teacher = build_model(cfg)
    for m in teacher.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 1.0  # running statistics := those of one batch
    with torch.no_grad(), EventStorage():
        teacher.train()(_batch())
    nn.init.normal_(teacher.roi_heads.box_predictor.cls_score.weight, std=1.0)
    folder, name = os.path.split(path)
    DetectionCheckpointer(teacher, save_dir=folder).save(os.path.splitext(name)[0])
    return path


@pytest.fixture(scope="module")
def teacher_weights(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("teacher") / "teacher.pth")
    return _save_teacher(load_config(BASE, TEACHER_OPTS), path)


def _keep_first(store, key, pick):
    """A forward (pre-)hook storing ``pick(args[, output])`` of the first call under ``key``."""

    def hook(module, *args_and_output):
        if key not in store:
            store[key] = pick(*args_and_output)

    return hook


def _student_cfg(weights, extra=()):
    return load_config(BASE, STUDENT_OPTS + [
        "MODEL.META_ARCHITECTURE", "DistillationRCNN",
        "MODEL.DISTILL.TEACHER_CONFIG", BASE, "MODEL.DISTILL.TEACHER_OPTS", TEACHER_OPTS,
        "MODEL.DISTILL.TEACHER_WEIGHTS", weights, "MODEL.DISTILL.HINT_WEIGHT", 1.0,
        "MODEL.DISTILL.TEMPERATURE", 2.0,
    ] + list(extra))


def _student(weights, extra=()):
    torch.manual_seed(1)
    return build_model(_student_cfg(weights, extra))


def _batch():
    """Two odd-sized images of different sizes (padding differs per model); one has no GT."""
    g = torch.Generator().manual_seed(0)
    return [
        {"image": torch.rand(3, 75, 101, generator=g) * 255,
         "instances": box_mask_targets(75, 101, [[10, 8, 60, 50], [40, 30, 95, 70]], [0, 2])},
        {"image": torch.rand(3, 61, 83, generator=g) * 255, "instances": box_mask_targets(61, 83, [], [])},
    ]


def test_teacher_is_loaded_frozen_and_outside_the_student(teacher_weights):
    student = _student(teacher_weights)
    assert type(student) is DistillationRCNN
    teacher = student.teacher
    saved = torch.load(teacher_weights, map_location="cpu", weights_only=False)["model"]
    assert set(saved) == set(teacher.state_dict())
    assert all(torch.equal(saved[k], v) for k, v in teacher.state_dict().items())
    assert not any(p.requires_grad for p in teacher.parameters())
    student_params = {id(p) for p in student.parameters()}
    assert not any(id(p) in student_params for p in teacher.parameters())
    assert not any(m is teacher for m in student.modules())
    assert student.hint_adapter.in_channels == 8 and student.hint_adapter.out_channels == 16

    student.train()
    assert student.training and not teacher.training
    teacher.train()  # someone switches it on by hand: the student's train() puts it back
    student.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())


def test_training_adds_distillation_losses_and_never_updates_the_teacher(teacher_weights):
    cfg = _student_cfg(teacher_weights)
    student = _student(teacher_weights)
    teacher = student.teacher
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    assert any("running_mean" in k for k in before)  # BN statistics would move in train mode
    optimizer = build_optimizer(cfg, student)
    student.train()
    with EventStorage():
        for _ in range(4):
            losses = student(_batch())
            assert set(losses) == STUDENT_LOSSES | {"loss_distill_cls", "loss_hint"}
            assert all(torch.isfinite(v) for v in losses.values()), losses
            optimizer.zero_grad()
            sum(losses.values()).backward()
            assert student.hint_adapter.weight.grad.abs().sum() > 0
            assert student.roi_heads.box_predictor.cls_score.weight.grad.abs().sum() > 0
            optimizer.step()
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not teacher.training


def test_teacher_box_path_sees_exactly_the_students_sampled_boxes(teacher_weights):
    student = _student(teacher_weights).train()
    teacher = student.teacher
    seen = {"student": [], "teacher": []}
    student.roi_heads.pooler.register_forward_pre_hook(lambda m, a: seen["student"].append(a[1]))
    teacher.roi_heads.pooler.register_forward_pre_hook(lambda m, a: seen["teacher"].append(a[1]))
    backbone_in = {}
    teacher.backbone.register_forward_pre_hook(_keep_first(backbone_in, "teacher", lambda args: args[0]))
    student.backbone.register_forward_pre_hook(_keep_first(backbone_in, "student", lambda args: args[0]))
    batch = _batch()
    with EventStorage():
        student(batch)
    assert len(seen["teacher"]) == 1  # box branch only; the teacher's mask branch never runs
    student_boxes, teacher_boxes = seen["student"][0], seen["teacher"][0]
    assert [len(b) for b in student_boxes] == [len(b) for b in teacher_boxes]
    assert 0 < sum(len(b) for b in student_boxes) <= 2 * 16  # ROI_HEADS.BATCH_SIZE_PER_IMAGE
    assert all(torch.equal(s.tensor, t.tensor) for s, t in zip(student_boxes, teacher_boxes))
    # The teacher normalizes with its own pixel mean, not the student's.
    assert torch.equal(backbone_in["teacher"], teacher.preprocess_image(batch).tensor)
    assert not torch.allclose(backbone_in["teacher"][:, :, :60, :80], backbone_in["student"][:, :, :60, :80])


def test_distillation_loss_decreases_on_a_fixed_batch(teacher_weights):
    student = _student(teacher_weights, ["MODEL.DISTILL.HINT_WEIGHT", 0.0]).train()
    optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)
    batch = _batch()
    history = []
    with EventStorage():
        for _ in range(20):
            torch.manual_seed(0)  # same proposal sampling each step
            loss = student(batch)["loss_distill_cls"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            history.append(loss.item())
    assert history[0] > 0.05, history  # the teacher's confident logits differ from the student's
    assert sum(history[-3:]) / 3 < 0.5 * sum(history[:3]) / 3, history


def test_checkpoint_holds_only_the_student(teacher_weights, tmp_path):
    student = _student(teacher_weights)
    DetectionCheckpointer(student, save_dir=str(tmp_path)).save("student")
    saved = torch.load(str(tmp_path / "student.pth"), map_location="cpu", weights_only=False)["model"]
    state = student.state_dict()
    assert set(saved) == set(state)
    assert not any("teacher" in k for k in saved)
    assert any(k.startswith("hint_adapter.") for k in saved)
    assert all(torch.equal(saved[k], v) for k, v in state.items())
    # Same key names as the teacher's, but the student's (narrower) tensors.
    teacher_state = student.teacher.state_dict()
    assert saved["roi_heads.subnet.conv2.weight"].shape != teacher_state["roi_heads.subnet.conv2.weight"].shape


def test_missing_teacher_weights_raise_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match="MODEL.DISTILL.TEACHER_WEIGHTS is empty"):
        build_model(_student_cfg(""))
    missing = str(tmp_path / "no_such_teacher.pth")
    with pytest.raises(FileNotFoundError, match=r"MODEL.DISTILL.TEACHER_WEIGHTS=.*no_such_teacher\.pth"):
        build_model(_student_cfg(missing))


def test_missing_teacher_config_raises_naming_the_key(teacher_weights):
    with pytest.raises(FileNotFoundError, match=r"MODEL.DISTILL.TEACHER_CONFIG='configs/nope.yaml'"):
        build_model(_student_cfg(teacher_weights, ["MODEL.DISTILL.TEACHER_CONFIG", "configs/nope.yaml"]))


def test_teacher_with_other_classes_is_rejected(teacher_weights):
    with pytest.raises(ValueError, match="same classes"):
        build_model(_student_cfg(teacher_weights, ["MODEL.ROI_HEADS.NUM_CLASSES", 5]))


def test_inference_equals_plain_generalized_rcnn_with_the_same_weights(teacher_weights):
    student = _student(teacher_weights).train()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01)
    with EventStorage():  # move the weights (and BN statistics) away from their initialization
        for _ in range(2):
            losses = student(_batch())
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
    plain = build_model(load_config(BASE, STUDENT_OPTS))
    assert type(plain) is GeneralizedRCNN
    incompatible = plain.load_state_dict(student.state_dict(), strict=False)
    assert not incompatible.missing_keys
    assert sorted(incompatible.unexpected_keys) == ["hint_adapter.bias", "hint_adapter.weight"]
    student.eval()
    plain.eval()
    images = [{"image": x["image"]} for x in _batch()]
    with torch.no_grad():
        ours, theirs = student(images), plain(images)
    for a, b in zip(ours, theirs):
        a, b = a["instances"], b["instances"]
        assert len(a) > 0
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
        assert torch.equal(a.scores, b.scores) and torch.equal(a.pred_classes, b.pred_classes)
        assert torch.equal(a.pred_masks, b.pred_masks)


def test_deepcopy_gets_its_own_teacher_and_trains(teacher_weights):
    student = _student(teacher_weights)
    clone = copy.deepcopy(student).train()
    assert clone.teacher is not student.teacher
    seen = []
    clone.teacher.roi_heads.pooler.register_forward_pre_hook(lambda m, a: seen.append(len(a[1])))
    student.teacher.roi_heads.pooler.register_forward_pre_hook(lambda m, a: seen.append(-1))
    with EventStorage():
        losses = clone(_batch())
    assert torch.isfinite(losses["loss_distill_cls"]) and seen == [2]


def test_decompose_layers_are_applied_to_the_student_only(teacher_weights):
    compression = pytest.importorskip("light_rcnn.compression")
    if not hasattr(compression, "apply_decomposition"):
        pytest.skip("light_rcnn.compression.apply_decomposition is not available")
    plain = _student(teacher_weights)
    decomposed = _student(teacher_weights, ["MODEL.DECOMPOSE.LAYERS", [r"roi_heads\.subnet\.conv1"]])
    assert set(decomposed.state_dict()) != set(plain.state_dict())
    assert set(decomposed.teacher.state_dict()) == set(plain.teacher.state_dict())
    with EventStorage():
        losses = decomposed.train()(_batch())
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_teacher_follows_the_student_to_the_gpu(teacher_weights):
    student = _student(teacher_weights).to("cuda").train()
    assert student.teacher.device.type == "cpu"  # built on MODEL.DEVICE cpu
    with EventStorage():
        losses = student(_batch())
    assert student.teacher.device.type == "cuda"
    assert all(v.device.type == "cuda" and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


# --- detectron2's ROI heads as teacher / student ------------------------------------------------

ZOO_C4 = model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml")
ZOO_FPN = model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
FPN_OPTS = COMMON + ["MODEL.FPN.OUT_CHANNELS", 16, "MODEL.ROI_BOX_HEAD.FC_DIM", 16, "MODEL.ROI_MASK_HEAD.CONV_DIM", 8]


@pytest.mark.parametrize(
    "config,opts,heads",
    [
        (BASE, TEACHER_OPTS, "LightRCNNROIHeads"),
        (ZOO_C4, COMMON, "Res5ROIHeads"),
        (ZOO_FPN, FPN_OPTS, "StandardROIHeads"),
    ],
)
def test_box_path_gives_the_heads_own_class_logits(config, opts, heads):
    torch.manual_seed(0)
    model = build_model(load_config(config, opts)).eval()
    assert type(model.roi_heads).__name__ == heads
    pooler, class_logits = roi_box_path(model.roi_heads)
    seen = {}
    pooler.register_forward_pre_hook(_keep_first(seen, "boxes", lambda args: args[1]))
    model.roi_heads.box_predictor.register_forward_hook(_keep_first(seen, "logits", lambda args, out: out[0]))
    batch = _batch()
    with torch.no_grad():
        images = model.preprocess_image(batch)
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features)
        model.roi_heads(images, features, proposals)
        ours = class_logits(features, seen["boxes"])
    assert ours.shape == (sum(len(p) for p in proposals), 4)
    assert torch.equal(ours, seen["logits"])


def test_res5_teacher_distills_into_an_fpn_student_with_a_stride_8_hint(tmp_path):
    """Different heads (Res5 -> Standard), pixel means and strides (res4 /16 -> p3 /8)."""
    teacher_opts = COMMON + ["MODEL.PIXEL_MEAN", [90.0, 100.0, 110.0]]
    weights = _save_teacher(load_config(ZOO_C4, teacher_opts), str(tmp_path / "c4.pth"))
    cfg = load_config(ZOO_FPN, FPN_OPTS + [
        "MODEL.META_ARCHITECTURE", "DistillationRCNN",
        "MODEL.DISTILL.TEACHER_CONFIG", ZOO_C4, "MODEL.DISTILL.TEACHER_OPTS", teacher_opts,
        "MODEL.DISTILL.TEACHER_WEIGHTS", weights, "MODEL.DISTILL.HINT_WEIGHT", 0.5,
        "MODEL.DISTILL.HINT_STUDENT_FEATURE", "p3", "MODEL.DISTILL.HINT_TEACHER_FEATURE", "res4",
    ])
    torch.manual_seed(0)
    student = build_model(cfg).train()
    assert student.hint_strides == (8, 16) and student.hint_adapter.out_channels == 64
    with EventStorage():
        losses = student(_batch())
    assert set(losses) >= {"loss_distill_cls", "loss_hint"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert student.hint_adapter.weight.grad.abs().sum() > 0


def test_unknown_hint_feature_names_the_key(teacher_weights):
    with pytest.raises(ValueError, match=r"MODEL.DISTILL.HINT_TEACHER_FEATURE='p9'"):
        build_model(_student_cfg(teacher_weights, ["MODEL.DISTILL.HINT_TEACHER_FEATURE", "p9"]))


def test_unsupported_roi_heads_raise():
    with pytest.raises(TypeError, match="FastRCNNOutputLayers"):
        roi_box_path(nn.Module())
    cascade = model_zoo.get_config_file("Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml")
    model = build_model(load_config(cascade, FPN_OPTS))
    with pytest.raises(TypeError, match="CascadeROIHeads"):
        roi_box_path(model.roi_heads)


# --- the loss functions ---------------------------------------------------------------------------

def test_kl_loss_is_t_squared_kl_of_softened_distributions():
    torch.manual_seed(0)
    s = torch.randn(7, 5, requires_grad=True)
    t = torch.randn(7, 5) * 3
    T = 4.0
    p_t, p_s = F.softmax(t / T, dim=1), F.softmax(s / T, dim=1)
    expected = T * T * (p_t * (p_t.log() - p_s.log())).sum(dim=1).mean()
    loss = distillation_kl_loss(s, t, T)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert distillation_kl_loss(t, t, T).item() == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    assert s.grad.abs().sum() > 0
    assert distillation_kl_loss(torch.zeros(0, 5), torch.zeros(0, 5), T).item() == 0.0


def test_hint_loss_aligns_strides_and_ignores_padding():
    teacher = torch.zeros(1, 2, 4, 6)  # stride 16 over a 64 x 96 image
    teacher[:, 0] = 1.0
    student = torch.zeros(1, 2, 10, 12)  # stride 8, padded further (80 x 96) with junk below row 8
    student[:, 0, :8] = 1.0
    student[:, :, 8:] = 50.0
    assert hint_loss(student, teacher, 8, 16, (64, 96)).item() == pytest.approx(0.0, abs=1e-7)
    student[:, 1, :8] = 1.0  # channel 1 now differs by 1 on the whole image: MSE = 1/2
    assert hint_loss(student, teacher, 8, 16, (64, 96)).item() == pytest.approx(0.5, abs=1e-6)
