"""Student-teacher distillation (thesis Sec. 2.1.3) with tiny CPU teachers and students, through
META_ARCHITECTURE "DistillationRCNN" (DistillationHook applied by the meta-arch)."""
import copy
import os

import pytest
import torch
import torch.nn.functional as F
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

BASE = "light_rcnn://Base-LightRCNN-C4.yaml"
ZOO_C4 = "detectron2://COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml"
ZOO_FPN = "detectron2://COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"
ZOO_CASCADE = "detectron2://Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml"
STUDENT_LOSSES = {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"}


@pytest.fixture
def common(tiny_resnet):
    return tiny_resnet + [
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.ROI_HEADS.NUM_CLASSES", 3,
        "MODEL.RESNETS.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", 0,
        "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 100, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 30,
        "MODEL.RPN.PRE_NMS_TOPK_TEST", 50, "MODEL.RPN.POST_NMS_TOPK_TEST", 12,
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 16,
    ]


@pytest.fixture
def teacher_opts(common):
    """Teacher: BN everywhere (its running statistics must not move) and another pixel mean."""
    return common + [
        "MODEL.SLK.MID_CHANNELS", 8, "MODEL.SLK.OUT_CHANNELS", 16, "MODEL.SLK.NORM", "BN",
        "MODEL.LIGHT_HEAD.CONV_DIMS", [8, 24], "MODEL.ROI_MASK_HEAD.CONV_DIM", 8,
        "MODEL.PIXEL_MEAN", [90.0, 100.0, 110.0],
    ]


@pytest.fixture
def student_opts(common):
    """Student: narrower ResNet, neck and subnet."""
    return common + [
        "MODEL.RESNETS.WIDTH_PER_GROUP", 2, "MODEL.RESNETS.RES2_OUT_CHANNELS", 8,
        "MODEL.SLK.MID_CHANNELS", 4, "MODEL.SLK.OUT_CHANNELS", 8,
        "MODEL.LIGHT_HEAD.CONV_DIMS", [8, 12], "MODEL.ROI_MASK_HEAD.CONV_DIM", 8,
    ]


@pytest.fixture
def fpn_opts(common):
    return common + ["MODEL.FPN.OUT_CHANNELS", 16, "MODEL.ROI_BOX_HEAD.FC_DIM", 16, "MODEL.ROI_MASK_HEAD.CONV_DIM", 8]


@pytest.fixture
def make_batch(box_mask_targets):
    """``f()`` -> two odd-sized images of different sizes (padding differs per model); one has no GT."""

    def make():
        g = torch.Generator().manual_seed(0)
        return [
            {"image": torch.rand(3, 75, 101, generator=g) * 255,
             "instances": box_mask_targets(75, 101, [[10, 8, 60, 50], [40, 30, 95, 70]], [0, 2])},
            {"image": torch.rand(3, 61, 83, generator=g) * 255, "instances": box_mask_targets(61, 83, [], [])},
        ]

    return make


def _save_teacher(cfg, path, batch, seed=0):
    """Build a teacher from ``cfg`` with calibrated BN statistics and confident random class
    logits (an untrained teacher in eval mode has near-zero activations and uniform scores)."""
    torch.manual_seed(seed)
    teacher = build_model(cfg)
    for m in teacher.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 1.0  # running statistics := those of one batch
    with torch.no_grad(), EventStorage():
        teacher.train()(batch)
    nn.init.normal_(teacher.roi_heads.box_predictor.cls_score.weight, std=1.0)
    folder, name = os.path.split(path)
    DetectionCheckpointer(teacher, save_dir=folder).save(os.path.splitext(name)[0])
    return path


@pytest.fixture(scope="module")
def _teacher_store(tmp_path_factory):
    return {"dir": tmp_path_factory.mktemp("teacher")}


@pytest.fixture
def teacher_weights(_teacher_store, teacher_opts, make_batch):
    """Checkpoint of a LightRCNN teacher (built once per module)."""
    if "path" not in _teacher_store:
        path = str(_teacher_store["dir"] / "teacher.pth")
        _teacher_store["path"] = _save_teacher(load_config(BASE, teacher_opts), path, make_batch())
    return _teacher_store["path"]


@pytest.fixture
def student_cfg(teacher_opts, student_opts):
    """``f(weights, extra=())`` -> a DistillationRCNN student config with the hint on."""

    def make(weights, extra=()):
        return load_config(BASE, student_opts + [
            "MODEL.META_ARCHITECTURE", "DistillationRCNN",
            "MODEL.DISTILL.TEACHER_CONFIG", BASE, "MODEL.DISTILL.TEACHER_OPTS", teacher_opts,
            "MODEL.DISTILL.TEACHER_WEIGHTS", weights, "MODEL.DISTILL.HINT_WEIGHT", 1.0,
            "MODEL.DISTILL.TEMPERATURE", 2.0,
        ] + list(extra))

    return make


@pytest.fixture
def make_student(student_cfg):
    """``f(weights, extra=())`` -> a student built with seed 1."""

    def make(weights, extra=()):
        torch.manual_seed(1)
        return build_model(student_cfg(weights, extra))

    return make


def _keep_first(store, key, pick):
    """A forward (pre-)hook storing ``pick(args[, output])`` of the first call under ``key``."""

    def hook(module, *args_and_output):
        if key not in store:
            store[key] = pick(*args_and_output)

    return hook


def test_teacher_is_loaded_frozen_and_outside_the_student(teacher_weights, make_student):
    student = make_student(teacher_weights)
    assert type(student) is DistillationRCNN
    teacher = student.teacher
    assert teacher is student.distillation.teacher
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


def test_training_adds_distillation_losses_and_never_updates_the_teacher(teacher_weights, student_cfg,
                                                                         make_student, make_batch):
    cfg = student_cfg(teacher_weights)
    student = make_student(teacher_weights)
    teacher = student.teacher
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    assert any("running_mean" in k for k in before)  # BN statistics would move in train mode
    optimizer = build_optimizer(cfg, student)
    student.train()
    teacher.train()  # someone switches it on by hand: the teacher still runs in eval mode
    with EventStorage():
        for _ in range(4):
            losses = student(make_batch())
            assert set(losses) == STUDENT_LOSSES | {"loss_distill_cls", "loss_hint"}
            assert all(torch.isfinite(v) for v in losses.values()), losses
            optimizer.zero_grad()
            sum(losses.values()).backward()
            assert student.hint_adapter.weight.grad.abs().sum() > 0
            assert student.roi_heads.box_predictor.cls_score.weight.grad.abs().sum() > 0
            optimizer.step()
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not teacher.training and not any(m.training for m in teacher.modules())


def test_teacher_box_path_sees_exactly_the_students_sampled_boxes(teacher_weights, make_student, make_batch):
    student = make_student(teacher_weights).train()
    teacher = student.teacher
    seen = {"student": [], "teacher": []}
    student.roi_heads.pooler.register_forward_pre_hook(lambda m, a: seen["student"].append(a[1]))
    teacher.roi_heads.pooler.register_forward_pre_hook(lambda m, a: seen["teacher"].append(a[1]))
    backbone_in = {}
    teacher.backbone.register_forward_pre_hook(_keep_first(backbone_in, "teacher", lambda args: args[0]))
    student.backbone.register_forward_pre_hook(_keep_first(backbone_in, "student", lambda args: args[0]))
    batch = make_batch()
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


def test_distillation_loss_decreases_on_a_fixed_batch(teacher_weights, make_student, make_batch):
    student = make_student(teacher_weights, ["MODEL.DISTILL.HINT_WEIGHT", 0.0]).train()
    optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)
    batch = make_batch()
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


def test_checkpoint_holds_only_the_student(teacher_weights, make_student, tmp_path):
    student = make_student(teacher_weights)
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


def test_missing_teacher_weights_raise_naming_the_key(student_cfg, tmp_path):
    with pytest.raises(ValueError, match="MODEL.DISTILL.TEACHER_WEIGHTS is empty"):
        build_model(student_cfg(""))
    missing = str(tmp_path / "no_such_teacher.pth")
    with pytest.raises(FileNotFoundError, match=r"MODEL.DISTILL.TEACHER_WEIGHTS=.*no_such_teacher\.pth"):
        build_model(student_cfg(missing))


@pytest.mark.parametrize("path", ["configs/nope.yaml", "light_rcnn://nope.yaml"])
def test_missing_teacher_config_raises_naming_the_key(teacher_weights, student_cfg, path):
    with pytest.raises(FileNotFoundError, match=r"MODEL.DISTILL.TEACHER_CONFIG '(light_rcnn://)?(configs/)?nope.yaml'"):
        build_model(student_cfg(teacher_weights, ["MODEL.DISTILL.TEACHER_CONFIG", path]))


def test_teacher_with_other_classes_is_rejected(teacher_weights, student_cfg):
    with pytest.raises(ValueError, match="same classes"):
        build_model(student_cfg(teacher_weights, ["MODEL.ROI_HEADS.NUM_CLASSES", 5]))


def test_inference_equals_plain_generalized_rcnn_with_the_same_weights(teacher_weights, make_student, make_batch,
                                                                       student_opts):
    student = make_student(teacher_weights).train()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01)
    with EventStorage():  # move the weights (and BN statistics) away from their initialization
        for _ in range(2):
            losses = student(make_batch())
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
    plain = build_model(load_config(BASE, student_opts))
    assert type(plain) is GeneralizedRCNN
    incompatible = plain.load_state_dict(student.state_dict(), strict=False)
    assert not incompatible.missing_keys
    assert sorted(incompatible.unexpected_keys) == ["hint_adapter.bias", "hint_adapter.weight"]
    student.eval()
    plain.eval()
    images = [{"image": x["image"]} for x in make_batch()]
    with torch.no_grad():
        ours, theirs = student(images), plain(images)
    for a, b in zip(ours, theirs):
        a, b = a["instances"], b["instances"]
        assert len(a) > 0
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
        assert torch.equal(a.scores, b.scores) and torch.equal(a.pred_classes, b.pred_classes)
        assert torch.equal(a.pred_masks, b.pred_masks)


def test_deepcopy_gets_its_own_teacher_and_trains(teacher_weights, make_student, make_batch):
    student = make_student(teacher_weights)
    clone = copy.deepcopy(student).train()
    assert clone.teacher is not student.teacher
    assert clone.distillation is not student.distillation
    seen = []
    clone.teacher.roi_heads.pooler.register_forward_pre_hook(lambda m, a: seen.append(len(a[1])))
    student.teacher.roi_heads.pooler.register_forward_pre_hook(lambda m, a: seen.append(-1))
    with EventStorage():
        losses = clone(make_batch())
    assert torch.isfinite(losses["loss_distill_cls"]) and seen == [2]
    # the clone's forward hooks fill the clone's adapter gradient, not the original's
    losses["loss_hint"].backward()
    assert clone.hint_adapter.weight.grad is not None and student.hint_adapter.weight.grad is None


def test_decompose_layers_are_applied_to_the_student_only(teacher_weights, make_student, make_batch):
    plain = make_student(teacher_weights)
    decomposed = make_student(teacher_weights, ["MODEL.DECOMPOSE.LAYERS", [r"roi_heads\.subnet\.conv1"]])
    assert set(decomposed.state_dict()) != set(plain.state_dict())
    assert set(decomposed.teacher.state_dict()) == set(plain.teacher.state_dict())
    with EventStorage():
        losses = decomposed.train()(make_batch())
    assert {"loss_distill_cls", "loss_hint"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_teacher_follows_the_student_to_the_gpu(teacher_weights, make_student, make_batch):
    student = make_student(teacher_weights).to("cuda").train()
    assert student.teacher.device.type == "cpu"  # built on MODEL.DEVICE cpu
    with EventStorage():
        losses = student(make_batch())
    assert student.teacher.device.type == "cuda"
    assert all(v.device.type == "cuda" and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


# --- detectron2's ROI heads as teacher / student ------------------------------------------------

@pytest.mark.parametrize(
    "config,opts_fixture,heads",
    [
        (BASE, "teacher_opts", "LightRCNNROIHeads"),
        (ZOO_C4, "common", "Res5ROIHeads"),
        (ZOO_FPN, "fpn_opts", "StandardROIHeads"),
    ],
)
def test_box_path_gives_the_heads_own_class_logits(config, opts_fixture, heads, request, make_batch):
    torch.manual_seed(0)
    model = build_model(load_config(config, request.getfixturevalue(opts_fixture))).eval()
    assert type(model.roi_heads).__name__ == heads
    pooler, class_logits = roi_box_path(model.roi_heads)
    seen = {}
    pooler.register_forward_pre_hook(_keep_first(seen, "boxes", lambda args: args[1]))
    model.roi_heads.box_predictor.register_forward_hook(_keep_first(seen, "logits", lambda args, out: out[0]))
    batch = make_batch()
    with torch.no_grad():
        images = model.preprocess_image(batch)
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features)
        model.roi_heads(images, features, proposals)
        ours = class_logits(features, seen["boxes"])
    assert ours.shape == (sum(len(p) for p in proposals), 4)
    assert torch.equal(ours, seen["logits"])


def test_res5_teacher_distills_into_an_fpn_student_with_a_stride_8_hint(tmp_path, common, fpn_opts, make_batch):
    """Different heads (Res5 -> Standard), pixel means and strides (res4 /16 -> p3 /8)."""
    teacher_opts = common + ["MODEL.PIXEL_MEAN", [90.0, 100.0, 110.0]]
    weights = _save_teacher(load_config(ZOO_C4, teacher_opts), str(tmp_path / "c4.pth"), make_batch())
    cfg = load_config(ZOO_FPN, fpn_opts + [
        "MODEL.META_ARCHITECTURE", "DistillationRCNN",
        "MODEL.DISTILL.TEACHER_CONFIG", ZOO_C4, "MODEL.DISTILL.TEACHER_OPTS", teacher_opts,
        "MODEL.DISTILL.TEACHER_WEIGHTS", weights, "MODEL.DISTILL.HINT_WEIGHT", 0.5,
        "MODEL.DISTILL.HINT_STUDENT_FEATURE", "p3", "MODEL.DISTILL.HINT_TEACHER_FEATURE", "res4",
    ])
    torch.manual_seed(0)
    student = build_model(cfg).train()
    assert student.distillation.hint_strides == (8, 16) and student.hint_adapter.out_channels == 64
    with EventStorage():
        losses = student(make_batch())
    assert set(losses) >= {"loss_distill_cls", "loss_hint"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert student.hint_adapter.weight.grad.abs().sum() > 0


def test_unknown_hint_feature_names_the_key(teacher_weights, student_cfg):
    with pytest.raises(ValueError, match=r"MODEL.DISTILL.HINT_TEACHER_FEATURE='p9'"):
        build_model(student_cfg(teacher_weights, ["MODEL.DISTILL.HINT_TEACHER_FEATURE", "p9"]))


def test_unsupported_roi_heads_raise(fpn_opts):
    with pytest.raises(TypeError, match="FastRCNNOutputLayers"):
        roi_box_path(nn.Module())
    model = build_model(load_config(ZOO_CASCADE, fpn_opts))
    with pytest.raises(TypeError, match="CascadeROIHeads"):
        roi_box_path(model.roi_heads)

    class NoBoxPath(nn.Module):  # a predictor but neither box_class_logits nor a known layout
        def __init__(self):
            super().__init__()
            self.box_predictor = model.roi_heads.box_predictor[0]

    with pytest.raises(TypeError, match="box_class_logits.*got NoBoxPath"):
        roi_box_path(NoBoxPath())


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
