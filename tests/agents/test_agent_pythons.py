"""The agent on every CPython it claims (requires-python >= 3.10): for each of 3.10 to 3.13 this
machine has (pyenv's ~/.pyenv/versions/3.1x.*, else python3.1x on PATH), a fresh venv gets the
agent extra installed, not editable, from a wheel of the checkout with requirements.lock as
constraints; there `wattmeter-agent --once --stdout` must print samples that pass the contract.

None of those interpreters found is a failure, not a skip. The versions found are the test ids
(`-v` shows them) and each test's `python` property (`--junitxml`). On a warm uv cache the whole
module takes a few seconds: one wheel build, then one venv and one install per interpreter.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from schemas.validate import validate_sample_dict

ROOT = Path(__file__).resolve().parents[2]
UV = Path(sys.executable).with_name("uv")
MINORS = ("3.10", "3.11", "3.12", "3.13")
SCHEMA = json.loads((ROOT / "schemas" / "jsonschema" / "node_sample.v1.json").read_text())

pytestmark = [pytest.mark.pythons, pytest.mark.timeout(240)]


def _version_of(python: str) -> str | None:
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def find_pythons() -> dict[str, str]:
    """{"3.10": interpreter path, ...} for each of MINORS found: pyenv's newest patch release,
    else python3.1x on PATH (a pyenv shim that is not enabled answers nothing and is passed over)."""
    found: dict[str, str] = {}
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    for minor in MINORS:
        candidates = sorted(
            pyenv.glob(f"{minor}.*/bin/python3"),
            key=lambda p: [int(n) for n in re.findall(r"\d+", p.parts[-3])],
            reverse=True,
        )
        on_path = shutil.which(f"python{minor}")
        for candidate in [*map(str, candidates), *([on_path] if on_path else [])]:
            if _version_of(candidate) == minor:
                found[minor] = candidate
                break
    return found


PYTHONS = find_pythons()


@pytest.fixture(scope="module")
def agent_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of the checkout as git sees it (tracked and untracked files, not ignored ones),
    built from a copy so no build/ or egg-info lands in the working tree."""
    assert UV.exists(), f"{UV} not found: the dev venv installs uv (make install)"
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    src = tmp_path_factory.mktemp("checkout")
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    dist = tmp_path_factory.mktemp("dist")
    _run([str(UV), "build", "--quiet", "--wheel", "--out-dir", str(dist), str(src)])
    (wheel,) = dist.glob("wattmeter-*.whl")
    return wheel


def _run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def test_at_least_one_supported_cpython_is_here():
    assert PYTHONS, (
        f"none of CPython {', '.join(MINORS)} found (~/.pyenv/versions/3.1x.*/bin/python3 or python3.1x on PATH): "
        "the agent's claim to run on them is untested"
    )


@pytest.mark.parametrize("minor", sorted(PYTHONS) or ["none-found"])
def test_agent_installs_and_samples_on(minor: str, agent_wheel: Path, tmp_path: Path, record_property):
    if minor not in PYTHONS:
        pytest.fail(f"none of CPython {', '.join(MINORS)} found", pytrace=False)
    record_property("python", f"{minor} ({PYTHONS[minor]})")
    venv = tmp_path / "venv"
    _run([str(UV), "venv", "--quiet", "--python", PYTHONS[minor], str(venv)])
    python = venv / "bin" / "python"
    lock = ROOT / "requirements.lock"
    _run([str(UV), "pip", "install", "--quiet", "--python", str(python), "-c", str(lock), f"{agent_wheel}[agent]"])
    # the venv's own interpreter and the installed copy of the agent, not the checkout's
    where = _run(
        [str(python), "-c", "import sys, agents; print('%d.%d' % sys.version_info[:2]); print(agents.__file__)"],
        cwd=tmp_path,
    )
    version, module = where.stdout.split()
    assert version == minor and Path(module).is_relative_to(venv), where.stdout

    config = tmp_path / "agent.toml"  # read with tomllib, or tomli below 3.11
    config.write_text(f'backend = "simulated"\nnode_id = "node-py{minor}"\ngpus = 2\nmig_per_gpu = 1\n')
    agent = str(venv / "bin" / "wattmeter-agent")
    done = _run([agent, "--config", str(config), "--once", "--stdout"], cwd=tmp_path)
    (line,) = done.stdout.splitlines()
    sample = json.loads(line)
    jsonschema.validate(sample, SCHEMA)
    parsed = validate_sample_dict(sample)
    assert parsed.node_id == f"node-py{minor}" and parsed.seq == 0
    assert [(g.gpu_uuid, g.parent_uuid) for g in parsed.gpus] == [
        (f"MIG-sim-node-py{minor}-{i:02d}-0", f"GPU-sim-node-py{minor}-{i:02d}") for i in range(2)
    ]
    assert "done: node node-py" in done.stderr

    trace = (
        tmp_path / "smi.csv"
    )  # the replay backend: a log keyed by index, ISO times that 3.10's fromisoformat refuses
    trace.write_text(
        "timestamp, index, power.draw [W], utilization.gpu [%]\n"
        "2026/11/02 10:00:00.000, 0, 100.00 W, 10 %\n2026/11/02 10:00:00.002, 1, 200.00 W, 20 %\n"
        "2026-11-02T11:00:01.0+0100, 0, 300.00 W, 30 %\n2026-11-02T10:00:01.002Z, 1, 200.00 W, 20 %\n"
    )
    done = _run(
        [agent, "--backend", "replay", "--trace", str(trace), "--speed", "0", "--stdout", "--node-id", "h"],
        cwd=tmp_path,
    )
    samples = [json.loads(line) for line in done.stdout.splitlines()]
    for each in samples:
        jsonschema.validate(each, SCHEMA)
        validate_sample_dict(each)
    assert [[(g["gpu_uuid"], g["energy_mj"]) for g in s["gpus"]] for s in samples] == [
        [("h:index:0", 0), ("h:index:1", 0)],
        [("h:index:0", 200_000), ("h:index:1", 200_000)],
    ]
