"""The package works outside a git checkout: a wheel carries the configs, and ``light_rcnn://``
names resolve from any directory: the library never assumes a git checkout."""
import os
import subprocess
import sys

import pytest

from light_rcnn.config import LIGHT_RCNN_PREFIX, load_config, packaged_configs_dir, resolve_config_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_config_under_configs_is_shipped_and_addressable():
    top = os.path.join(REPO, "configs")
    shipped = set()
    for d, _, files in os.walk(packaged_configs_dir()):
        shipped |= {os.path.relpath(os.path.join(d, f), packaged_configs_dir()) for f in files if f.endswith(".yaml")}
    on_disk = set()
    for d, _, files in os.walk(top):
        on_disk |= {os.path.relpath(os.path.join(d, f), top) for f in files if f.endswith(".yaml")}
    assert on_disk and shipped == on_disk
    assert os.path.samefile(resolve_config_file(LIGHT_RCNN_PREFIX + "Base-LightRCNN-C4.yaml"),
                            os.path.join(top, "Base-LightRCNN-C4.yaml"))


def test_unknown_names_raise_naming_the_key():
    with pytest.raises(FileNotFoundError, match=r"MODEL.X 'light_rcnn://nope/none.yaml' is not a config shipped"):
        resolve_config_file("light_rcnn://nope/none.yaml", key="MODEL.X")
    with pytest.raises(FileNotFoundError, match=r"--config-file 'missing.yaml': no such file"):
        load_config("missing.yaml")


def test_prefixed_bases_resolve(tmp_path):
    user_cfg = tmp_path / "mine.yaml"
    user_cfg.write_text('_BASE_: "light_rcnn://shapes/light_mask_rcnn_framework1_shapes.yaml"\nSOLVER:\n  MAX_ITER: 7\n')
    cfg = load_config(str(user_cfg))
    assert cfg.SOLVER.MAX_ITER == 7 and cfg.MODEL.ROI_HEADS.NAME == "LightRCNNROIHeads"
    assert cfg.MODEL.SLK.OUT_CHANNELS == 64 and cfg.DATASETS.TRAIN == ("shapes_train",)


def test_wheel_installed_outside_the_checkout_loads_packaged_configs(tmp_path):
    wheel_dir, target, elsewhere = tmp_path / "wheel", tmp_path / "site", tmp_path / "cwd"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(wheel_dir), REPO], check=True,
                   cwd=str(elsewhere))
    (wheel,) = list(wheel_dir.glob("light_rcnn-*.whl"))
    subprocess.run(pip + ["install", "--no-deps", "--no-index", "--target", str(target), str(wheel)], check=True)
    code = (
        "import light_rcnn, os; from light_rcnn.config import load_config\n"
        "cfg = load_config('light_rcnn://shapes/light_mask_rcnn_framework1_shapes.yaml')\n"
        "print(os.path.realpath(light_rcnn.__file__)); print(cfg.MODEL.ROI_HEADS.NAME, cfg.MODEL.SLK.OUT_CHANNELS)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(target))
    out = subprocess.run([sys.executable, "-c", code], cwd=str(elsewhere), env=env, check=True,
                         capture_output=True, text=True).stdout.split("\n")
    assert out[0].startswith(os.path.realpath(str(target)))  # the wheel's copy, not the checkout
    assert out[1] == "LightRCNNROIHeads 64"
