"""tools/gpu_kit.sh: the kit that runs fewshot on a GPU machine without network (wheels + a data pack)."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
KIT = ROOT / "tools" / "gpu_kit.sh"


def _array(name: str) -> list[str]:
    """The items of the bash array ``name=(...)`` in the script."""
    body = re.search(rf"^{name}=\((.*?)\)", KIT.read_text(), re.S | re.M)
    assert body is not None, name
    return body.group(1).split()


def _wheels() -> dict[str, str]:
    """The ``WHEELS`` pins of the script, ``{canonical name: version}``."""
    return {canonicalize_name(name): version for name, version in (item.split("==") for item in _array("WHEELS"))}


def _probe_wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel ``kitprobe 1.0`` holding ``kitprobe/__init__.py``."""
    folder.mkdir(parents=True)
    path = folder / "kitprobe-1.0-py3-none-any.whl"
    info = "kitprobe-1.0.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("kitprobe/__init__.py", "VALUE = 7\n")
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: kitprobe\nVersion: 1.0\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", f"kitprobe/__init__.py,,\n{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n")
    return path


def _run(args: list[str], kit: Path, site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GPU_KIT_DIR": str(kit), "GPU_KIT_SITE": str(site), "PYTHON": sys.executable}
    return subprocess.run(["bash", str(KIT), *args], env=env, capture_output=True, text=True, timeout=300,
                          cwd=site.parent)


def test_pins_agree_with_the_tested_versions() -> None:
    pins = _wheels()
    constraints = dict(
        line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line
    )
    tested = {canonicalize_name(name): v.strip() for name, v in constraints.items()}
    shared = sorted(set(pins) & set(tested))
    assert {"albumentations", "nibabel", "pydicom"} <= set(shared)
    assert {n: pins[n] for n in shared} == {n: tested[n] for n in shared}
    # albumentations pins its albucore exactly; the kit must carry that one
    requires = importlib.metadata.requires("albumentations") or []
    albucore = next(r for r in requires if r.lower().startswith("albucore"))
    assert albucore.replace(" ", "").lower() == f"albucore=={pins['albucore']}"


def test_the_wheels_and_the_image_hold_everything_the_project_imports() -> None:
    """Every dependency of the project, and of each wheel (as on CPython 3.12, Linux), is a wheel or in the image."""
    have = set(_wheels()) | {canonicalize_name(n) for n in _array("IMAGE")}
    env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
           "platform_system": "Linux", "extra": ""}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    missing = {}
    for owner, requires in [("fewshot-medseg", project)] + [
        (name, importlib.metadata.requires(name) or []) for name in _wheels()
    ]:
        for text in requires:
            req = Requirement(text)
            if (req.marker is None or req.marker.evaluate(env)) and canonicalize_name(req.name) not in have:
                missing.setdefault(owner, []).append(req.name)
    assert missing == {}


def test_run_installs_the_wheels_aside_and_runs_the_project(tmp_path: Path) -> None:
    kit, site = tmp_path / "kit", tmp_path / "site"
    _probe_wheel(kit / "whl")
    done = _run(["run", "--version"], kit, site)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("fewshot-medseg ")
    assert (site / "kitprobe" / "__init__.py").read_text() == "VALUE = 7\n"


@pytest.mark.parametrize("args", [["run", "--version"], ["run"], ["prepare"], []])
def test_refusals_exit_2_and_say_what_to_do(tmp_path: Path, args: list[str]) -> None:
    done = _run(args, tmp_path / "empty-kit", tmp_path / "site")
    assert done.returncode == 2
    expected = "run '" if args == ["run", "--version"] else "usage:"
    assert expected in done.stderr
    assert not (tmp_path / "site").exists()
