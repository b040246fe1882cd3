"""The benchmark's environment record and its memory child, outside any git checkout."""
import re
import shutil
import subprocess
import types

import pytest

from light_rcnn.analysis.benchmark import BenchmarkSettings, git_state, measure_memory


def test_git_state_outside_a_checkout_records_nothing(tmp_path):
    assert git_state(str(tmp_path)) == {"commit": None, "dirty": None}


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_state_of_a_checkout_from_a_subfolder(tmp_path):
    def git(*args):
        return subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    git("add", "pkg/a.py")
    git("commit", "-q", "-m", "one")
    commit = git("rev-parse", "HEAD")
    assert re.fullmatch("[0-9a-f]{40}", commit)
    assert git_state(str(tmp_path / "pkg")) == {"commit": commit, "dirty": False}
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    assert git_state(str(tmp_path / "pkg")) == {"commit": commit, "dirty": True}


def test_memory_child_failure_is_reported(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cand = types.SimpleNamespace(child_spec={"kind": "torchvision", "name": "no_such_detector", "kwargs": {}})
    settings = BenchmarkSettings(models=[], image_size=(64, 64), memory="subprocess")
    with pytest.raises(RuntimeError, match="memory child exited with 1: .*no_such_detector"):
        measure_memory(cand, settings, (64, 64))
