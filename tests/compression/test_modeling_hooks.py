"""Modeling hooks (MODEL.MODELING_HOOKS, light_rcnn.build_model): a decomposed student distilled by
a config alone, and the META_ARCHITECTURE forms (DecomposedGeneralizedRCNN, DistillationRCNN)
building the same models with the same checkpoint keys."""
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling import build_model as build_meta_arch
from detectron2.utils.events import EventStorage

import light_rcnn
from light_rcnn import load_config
from light_rcnn.compression import (
    DecomposedGeneralizedRCNN,
    DecompositionHook,
    DepthwiseSeparableConv,
    DistillationHook,
    DistillationRCNN,
    unapply_modeling_hooks,
)
from light_rcnn.compression.distillation import build_teacher_config

NARROW = ["MODEL.SLK.MID_CHANNELS", 8, "MODEL.SLK.OUT_CHANNELS", 16, "MODEL.LIGHT_HEAD.CONV_DIMS", [16, 16],
          "MODEL.ROI_MASK_HEAD.CONV_DIM", 8]
DECOMPOSED = "shapes/light_mask_rcnn_decomposed_shapes.yaml"
HOOKED = "shapes/distill_framework1_to_decomposed_shapes.yaml"
STUDENT_LOSSES = {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"}


@pytest.fixture
def tiny(tiny_resnet, tiny_sizes):
    return tiny_resnet + tiny_sizes + NARROW + ["MODEL.DEVICE", "cpu"]


@pytest.fixture
def hooked_cfg(config_file, tiny, tmp_path):
    """The both-hooks shapes config at tiny sizes, its teacher (framework 1, same tiny sizes) saved
    under ``tmp_path``."""
    cfg = load_config(config_file(HOOKED), tiny + ["MODEL.DISTILL.TEACHER_OPTS", tiny])
    torch.manual_seed(0)
    teacher = build_meta_arch(build_teacher_config(cfg))
    DetectionCheckpointer(teacher, save_dir=str(tmp_path)).save("teacher")
    cfg.merge_from_list(["MODEL.DISTILL.TEACHER_WEIGHTS", str(tmp_path / "teacher.pth")])
    return cfg


def _batch(box_mask_targets):
    g = torch.Generator().manual_seed(0)
    return [
        {"image": torch.rand(3, 64, 85, generator=g) * 255,
         "instances": box_mask_targets(64, 85, [[4, 6, 40, 50], [30, 10, 80, 60]], [0, 2])},
        {"image": torch.rand(3, 71, 64, generator=g) * 255, "instances": box_mask_targets(71, 64, [], [])},
    ]


def _expected_student_keys(plain_keys, decomposed_layers):
    """A GeneralizedRCNN's keys with each replaced conv's ``weight``/``bias`` turned into the
    keys of DepthwiseSeparableConv (``depthwise.weight``, ``pointwise.weight``/``bias``; ``norm.*``
    kept), plus the hint adapter: the checkpoint layout of DecomposedGeneralizedRCNN and
    DistillationRCNN before the hooks existed."""
    keys = set(plain_keys)
    for name in decomposed_layers:
        keys -= {f"{name}.weight", f"{name}.bias"}
        keys |= {f"{name}.depthwise.weight", f"{name}.pointwise.weight", f"{name}.pointwise.bias"}
    return keys | {"hint_adapter.weight", "hint_adapter.bias"}


def test_decomposed_student_is_distilled_by_the_config_alone(hooked_cfg, box_mask_targets):
    torch.manual_seed(1)
    model = light_rcnn.build_model(hooked_cfg)
    assert type(model) is GeneralizedRCNN  # no meta-arch subclass: the hooks did everything
    decompose, distill = model.modeling_hooks
    assert isinstance(decompose, DecompositionHook) and isinstance(distill, DistillationHook)
    names = decompose.decomposed_layers
    # res2-res4 bottleneck conv2s (3 + 4 + 6), the neck's four k x 1 / 1 x k convs, the subnet's two
    assert len(names) == 13 + 4 + 2
    assert all(isinstance(model.get_submodule(n), DepthwiseSeparableConv) for n in names)
    assert isinstance(model.roi_heads.subnet.conv1, DepthwiseSeparableConv)
    assert model.roi_heads.subnet.convs == [model.roi_heads.subnet.conv1, model.roi_heads.subnet.conv2]

    teacher = model.distillation.teacher
    state = model.state_dict()
    assert not any(k.startswith("teacher") or ".teacher." in k for k in state)
    teacher_params = {id(p) for p in teacher.parameters()}
    assert not any(id(p) in teacher_params for p in model.parameters())
    teacher_tensors = {id(v) for v in teacher.state_dict().values()}
    assert not any(id(t) in teacher_tensors for t in state.values())
    # the teacher is the undecomposed framework 1
    assert type(teacher.roi_heads.subnet.conv1).__name__ == "Conv2d"

    model.train()
    with EventStorage():
        losses = model(_batch(box_mask_targets))
    assert set(losses) == STUDENT_LOSSES | {"loss_distill_cls", "loss_hint"}
    assert all(torch.isfinite(v) for v in losses.values()), losses
    assert losses["loss_distill_cls"] > 0 and losses["loss_hint"] > 0
    sum(losses.values()).backward()
    assert model.roi_heads.subnet.conv1.depthwise.weight.grad.abs().sum() > 0
    assert model.hint_adapter.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_hook_and_meta_arch_forms_build_the_same_student(hooked_cfg):
    """MODELING_HOOKS [Decomposition, Distillation] on GeneralizedRCNN == META_ARCHITECTURE
    DistillationRCNN with MODEL.DECOMPOSE.LAYERS: same keys (the old checkpoint layout) and, from
    the same seed, the same tensors."""
    torch.manual_seed(1)
    hooked = light_rcnn.build_model(hooked_cfg)
    shim_cfg = hooked_cfg.clone()
    shim_cfg.merge_from_list(["MODEL.META_ARCHITECTURE", "DistillationRCNN", "MODEL.MODELING_HOOKS", []])
    torch.manual_seed(1)
    shim = build_meta_arch(shim_cfg)  # detectron2's own build_model, as DefaultTrainer calls it
    assert type(shim) is DistillationRCNN

    plain_cfg = hooked_cfg.clone()
    plain_cfg.merge_from_list(["MODEL.MODELING_HOOKS", []])
    plain = light_rcnn.build_model(plain_cfg)
    expected = _expected_student_keys(plain.state_dict(), hooked.modeling_hooks[0].decomposed_layers)
    hooked_state, shim_state = hooked.state_dict(), shim.state_dict()
    assert set(hooked_state) == expected
    assert list(hooked_state) == list(shim_state)
    assert all(torch.equal(hooked_state[k], shim_state[k]) for k in hooked_state)


def test_decomposition_hook_equals_decomposed_generalized_rcnn(config_file, tiny):
    cfg = load_config(config_file(DECOMPOSED), tiny)
    torch.manual_seed(0)
    shim = build_meta_arch(cfg)
    assert type(shim) is DecomposedGeneralizedRCNN
    cfg.merge_from_list(["MODEL.META_ARCHITECTURE", "GeneralizedRCNN", "MODEL.MODELING_HOOKS", ["DecompositionHook"]])
    torch.manual_seed(0)
    hooked = light_rcnn.build_model(cfg)
    assert type(hooked) is GeneralizedRCNN
    assert hooked.modeling_hooks[0].decomposed_layers == shim.decomposed_layers
    shim_state, hooked_state = shim.state_dict(), hooked.state_dict()
    assert list(shim_state) == list(hooked_state)
    assert all(torch.equal(shim_state[k], hooked_state[k]) for k in shim_state)
    plain = build_meta_arch(load_config(config_file(DECOMPOSED), tiny + ["MODEL.META_ARCHITECTURE", "GeneralizedRCNN"]))
    expected = _expected_student_keys(plain.state_dict(), shim.decomposed_layers) - {
        "hint_adapter.weight", "hint_adapter.bias"}
    assert set(shim_state) == expected


def test_unapply_gives_back_the_plain_student(hooked_cfg, box_mask_targets):
    model = light_rcnn.build_model(hooked_cfg)
    keys = set(model.state_dict())
    model = unapply_modeling_hooks(model)
    assert set(model.state_dict()) == keys - {"hint_adapter.weight", "hint_adapter.bias"}
    assert not hasattr(model, "distillation")
    assert isinstance(model.roi_heads.subnet.conv1, DepthwiseSeparableConv)  # decomposition is kept
    with EventStorage():
        losses = model.train()(_batch(box_mask_targets))
    assert set(losses) == STUDENT_LOSSES


def test_a_hook_the_meta_arch_already_applies_is_refused(config_file, tiny):
    cfg = load_config(config_file(DECOMPOSED), tiny + ["MODEL.MODELING_HOOKS", ["DecompositionHook"]])
    with pytest.raises(ValueError, match="DecompositionHook is already applied to this DecomposedGeneralizedRCNN"):
        light_rcnn.build_model(cfg)


def test_unknown_hook_names_the_key(config_file, tiny):
    cfg = load_config(config_file(DECOMPOSED), tiny + ["MODEL.MODELING_HOOKS", ["QuantizationHook"]])
    with pytest.raises(KeyError, match="MODEL.MODELING_HOOKS: no modeling hook named 'QuantizationHook'"):
        light_rcnn.build_model(cfg)
