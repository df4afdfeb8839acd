"""The protocol configs ship in the wheel and are reachable by name."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bfaseg.config import load_config, packaged_config_names, resolve_config_path

ROOT = Path(__file__).resolve().parents[1]


def test_a_built_wheel_carries_the_protocol_configs(tmp_path):
    # build from a copy so the test leaves no build/ or egg-info in the checkout
    src = tmp_path / "src"
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    shutil.copytree(ROOT / "src", src, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path / "wheel"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(tmp_path)],
        capture_output=True, text=True,
    )
    if proc.returncode != 0 and "No module named pip" in proc.stderr:
        pytest.skip("pip is not installed")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = out.glob("bfaseg-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"bfaseg/configs/{p.relative_to(ROOT / 'configs').as_posix()}" for p in (ROOT / "configs").rglob("*.yaml")}
    assert len(expected) >= 40
    assert expected <= names, sorted(expected - names)[:5]


@pytest.mark.parametrize("name", ["acdc/bfa_10", "acdc/bfa_10.yaml", "configs/acdc/bfa_10.yaml"])
def test_packaged_configs_load_by_name_from_anywhere(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the repository: only the packaged copy can answer
    assert resolve_config_path(name).is_file()
    cfg = load_config(name)
    assert cfg.method.name == "bfa" and cfg.data.dataset == "acdc"
    assert "la/cpu" in packaged_config_names()


def test_a_local_file_wins_over_a_packaged_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "acdc").mkdir()
    (tmp_path / "acdc" / "bfa_10.yaml").write_text("method: {name: supervised}\n")
    assert load_config("acdc/bfa_10.yaml").method.name == "supervised"
