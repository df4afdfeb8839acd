"""benchmarks/gpu_protocol.sh --smoke: the GPU protocol's code path on the CPU, synthetic tiny data."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_protocol.py"


def _protocol():
    spec = importlib.util.spec_from_file_location("gpu_protocol", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_protocol_smoke_writes_one_results_folder(tmp_path, capsys):
    out = tmp_path / "gpu"
    assert _protocol().main(["--smoke", "--output", str(out)]) == 0
    capsys.readouterr()
    acdc = json.loads((out / "acdc" / "results.json").read_text())
    la = json.loads((out / "la" / "results.json").read_text())
    assert set(acdc) == {f"{m}_s1" for m in ("supervised", "mean_teacher", "ua_mt", "bcp", "bfa", "full")}
    assert set(la) == {f"{m}_s1" for m in ("supervised", "bcp", "bfa", "full")}
    assert all("last" in e and "images_per_step" in e for e in [*acdc.values(), *la.values()])
    throughput = json.loads((out / "throughput.json").read_text())
    assert len(throughput) == 10 and all(t["iterations_per_s"] > 0 for t in throughput)
    page = (out / "results.md").read_text()
    assert "iterations/s" in page and "student images/step" in page and "## la 10 %" in page


def test_gpu_protocol_plans_iterations_from_throughput():
    plan = _protocol().plan_iterations(
        [{"benchmark": "acdc", "iterations_per_s": 10.0}] * 6 + [{"benchmark": "la", "iterations_per_s": 2.0}] * 4,
        budget_s=480, smoke_iterations=None)
    # ACDC: 6/10 of 480 s = 288 s, 0.6 s per iteration for six methods, 90 % -> 432 -> 420
    # LA: 192 s, 2 s per iteration for four methods, 90 % -> 86 -> 80
    assert plan == {"acdc": 420, "la": 80}


def _stub_interpreters(tmp_path: Path) -> dict:
    """An environment whose ``python`` and ``python3`` on PATH are stubs that fail (no torch, no anything)."""
    bin_dir = tmp_path / "stub_bin"
    bin_dir.mkdir()
    for name in ("python", "python3"):
        stub = bin_dir / name
        stub.write_text("#!/bin/sh\necho 'stub interpreter' >&2\nexit 97\n")
        stub.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_gpu_protocol_without_gpu_says_so(tmp_path):
    import torch

    if torch.cuda.is_available():
        return
    env = {**_stub_interpreters(tmp_path), "PYTHON": sys.executable}  # the interpreter running the tests
    res = subprocess.run(["bash", str(SCRIPT.with_suffix(".sh")), "--output", str(tmp_path / "x")],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 2 and "no CUDA device" in res.stderr


def test_gpu_protocol_script_runs_python_or_python3(tmp_path):
    """Without ``PYTHON`` the script runs ``python3`` from PATH (here a stub), never a bare ``python``."""
    res = subprocess.run(["bash", str(SCRIPT.with_suffix(".sh")), "--help"], capture_output=True, text=True,
                         env=_stub_interpreters(tmp_path))
    assert res.returncode == 97 and "stub interpreter" in res.stderr


def _project_scripts() -> list[Path]:
    """The project's shell scripts: what git tracks or would add (``git ls-files``), not the scratch scripts of
    git-ignored folders such as ``runs/``, which are nobody's deliverable and would fail this test on a
    working machine. Without git: ``*/*.sh`` less ``runs/``."""
    root = SCRIPT.parents[1]
    try:
        listed = subprocess.run(["git", "-C", str(root), "ls-files", "--cached", "--others", "--exclude-standard",
                                 "*.sh"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        listed = None
    if listed is not None and listed.returncode == 0:
        return sorted(root / line for line in listed.stdout.splitlines() if line and (root / line).is_file())
    return sorted(p for p in root.glob("*/*.sh") if p.parent.name != "runs")


def test_no_script_calls_a_bare_python():
    """Every shell script names its interpreter as ``"${PYTHON:-python3}"`` (the tests set ``PYTHON``)."""
    bare = re.compile(r"(^|[\s;|&(`])(python3?)(\s|$)")
    scripts = _project_scripts()
    assert SCRIPT.with_suffix(".sh") in scripts
    for script in scripts:
        for n, line in enumerate(script.read_text().splitlines(), start=1):
            code = line.split("#", 1)[0] if not line.lstrip().startswith("#") else ""
            assert not bare.search(code), f"{script.name}:{n}: {line.strip()}"


def test_mutation_script_says_when_mutmut_could_not_run(tmp_path):
    """A mutmut that cannot run (a failing clean test run) must not end in an empty table and exit 0."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "mutmut").write_text("#!/bin/sh\necho 'Failed to run clean test'\nexit 1\n")
    (fake / "mutmut").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "PYTHON": sys.executable}
    res = subprocess.run(["bash", str(SCRIPT.parents[1] / "benchmarks" / "mutation.sh")], capture_output=True,
                         text=True, env=env)
    assert res.returncode == 1 and "mutmut run failed" in res.stderr and "Failed to run clean test" in res.stderr
