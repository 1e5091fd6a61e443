"""tools/gpu_kit.sh: the kit that runs fewshot on a GPU machine without network (wheels + a data pack)."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KIT = ROOT / "tools" / "gpu_kit.sh"


def _wheels() -> dict[str, str]:
    """The ``WHEELS=(...)`` pins of the script, ``{normalised name: version}``."""
    body = re.search(r"WHEELS=\((.*?)\)", KIT.read_text(), re.S)
    assert body is not None
    pins = dict(item.split("==") for item in body.group(1).split())
    return {name.lower().replace("_", "-"): version for name, version in pins.items()}


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
    tested = {name.lower().replace("_", "-"): v.strip() for name, v in constraints.items()}
    shared = sorted(set(pins) & set(tested))
    assert {"albumentations", "nibabel", "pydicom"} <= set(shared)
    assert {n: pins[n] for n in shared} == {n: tested[n] for n in shared}
    # albumentations pins its albucore exactly; the kit must carry that one
    requires = importlib.metadata.requires("albumentations") or []
    albucore = next(r for r in requires if r.lower().startswith("albucore"))
    assert albucore.replace(" ", "").lower() == f"albucore=={pins['albucore']}"


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
