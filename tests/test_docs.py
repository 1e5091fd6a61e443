"""The documentation's commands run, so the docs cannot rot.

Every line of a ```bash block in README.md and docs/*.md that starts with ``fewshot`` (after optional
``VAR=value`` prefixes and ``\\`` continuations) is collected, in document order. A line with a ``# needs: ...``
comment (real data, a GPU, a cluster) is only parsed: the ``fewshot`` argument parser must accept it, and a
``--recipe`` it names must exist. Every other line runs, in one scratch folder shared by all of them, on the
built-in phantom with tiny settings: any ``--recipe`` becomes the packaged ``phantom`` recipe, training commands get
``--steps 4 --jobs 1`` and no worker processes, ``fewshot cv`` scores fold 0 only. The scratch folder holds what
the docs' placeholders name: ``scans/images/*.nii.gz`` (phantom CT scans exported as NIfTI), ``support.nii.gz``
with ``support_liver.nii.gz``, and ``query.nii.gz``.

Marked ``slow``: about a minute on 2 idle CPU cores (it fits and scores the phantom recipe a few times).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NEEDS = re.compile(r"#\s*needs:\s*([\w\-, ]+)\s*$")
TRAINING = {"fit", "cv", "train", "demo", "study", "pretrain", "pretrain-genesis"}


def doc_commands() -> list[tuple[str, str, list[str], list[str]]]:
    """``(doc name, line, argv without 'fewshot', needs)`` for every fewshot line of every ```bash block."""
    found = []
    for doc in DOCS:
        in_bash = False
        pending = ""
        for raw in doc.read_text().splitlines():
            if raw.startswith("```"):
                in_bash = raw.strip() == "```bash" and not in_bash
                pending = ""
                continue
            if not in_bash:
                continue
            line = pending + raw.strip()
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            pending = ""
            match = NEEDS.search(line)
            needs = [n.strip() for n in match.group(1).split(",")] if match else []
            try:
                words = shlex.split(line, comments=True)
            except ValueError:
                continue
            while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
                words = words[1:]  # OMP_NUM_THREADS=1 fewshot ...
            if words and words[0] == "fewshot":
                found.append((doc.name, line, words[1:], needs))
    return found


COMMANDS = doc_commands()


def _option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv and argv.index(name) + 1 < len(argv) else None


def _without(argv: list[str], *names: str) -> list[str]:
    out, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word in names:
            skip = True
        else:
            out.append(word)
    return out


def tiny(argv: list[str]) -> list[str]:
    """The command with the phantom recipe and tiny settings (see the module docstring)."""
    argv = [("phantom" if i and argv[i - 1] == "--recipe" else w) for i, w in enumerate(argv)]
    if argv[0] in TRAINING:
        argv = [*_without(argv, "--steps", "--jobs"), "--steps", "4"]
        if argv[0] in {"fit", "cv"}:
            argv += ["--jobs", "1"]
        if argv[0] not in ("pretrain", "pretrain-genesis"):
            argv += ["--set", "train.num_workers=0", "--set", "train.progress_bar=false"]
    if argv[0] == "cv":
        argv = [*_without(argv, "--folds"), "--folds", "0"]
    return argv


def test_the_docs_have_commands_of_both_kinds() -> None:
    runnable = [c for c in COMMANDS if not c[3]]
    assert {c[2][0] for c in runnable} >= {"recipes", "fit", "evaluate", "segment", "cv"}
    assert any(c[3] for c in COMMANDS)
    assert {"README.md", "own-scans.md", "recipes.md"} <= {c[0] for c in COMMANDS}
    assert all(set(c[3]) <= {"real-data", "gpu", "cluster", "weights"} for c in COMMANDS), [c[1] for c in COMMANDS if c[3]]


@pytest.mark.parametrize(("doc", "line", "argv", "needs"), [c for c in COMMANDS if c[3]],
                         ids=[f"{c[0]}:{' '.join(c[2][:3])}" for c in COMMANDS if c[3]])
def test_commands_that_need_data_or_hardware_parse(doc: str, line: str, argv: list[str], needs: list[str]) -> None:
    from fewshot.cli import build_parser
    from fewshot.recipes import load_recipe

    argv = [re.sub(r"^\$\{?[A-Z_]+\}?$", "0", w) for w in argv]  # $SLURM_ARRAY_TASK_ID -> 0
    build_parser().parse_args(argv)
    if recipe := _option(argv, "--recipe"):
        load_recipe(recipe)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Phantom CT scans as a NIfTI folder, and a support scan with its liver mask and a query scan."""
    from episodes.data.datasets import load_dataset
    from episodes.data.volumes import save_nifti

    ws = tmp_path_factory.mktemp("docs")
    vols = load_dataset("phantom-ct", None, n_subjects=8, shape=(24, 128, 128))
    (ws / "scans" / "images").mkdir(parents=True)
    for v in vols:
        save_nifti(v.image, v, ws / "scans" / "images" / f"{v.subject}.nii.gz")
    sup, qry = vols[0], vols[1]
    save_nifti(sup.image, sup, ws / "support.nii.gz")
    save_nifti((sup.label == sup.label_map.value("liver")).astype(np.uint8), sup, ws / "support_liver.nii.gz")
    save_nifti(qry.image, qry, ws / "query.nii.gz")
    save_nifti(qry.image, qry, ws / "query_plain.nii.gz")
    _restore_oblique(ws / "query.nii.gz")
    yield ws


def _restore_oblique(path: Path) -> None:
    """Store a scan as a converter might: slice axis first, one in-plane axis flipped, and an affine tilted 12
    degrees about the slice normal (every voxel keeps its world position up to the tilt): the tutorial's
    ``fewshot segment`` must read it in the canonical orientation and write the prediction back as stored."""
    import nibabel as nib

    img = nib.load(str(path))
    data = np.asarray(img.dataobj)
    swap = np.eye(4)[[2, 0, 1, 3]]  # stored axes (k, i, j): voxel (k, i, j) -> (i, j, k)
    flip = np.diag([1.0, -1.0, 1.0, 1.0])
    flip[1, 3] = data.shape[1] - 1
    angle = np.deg2rad(12.0)
    tilt = np.eye(4)
    tilt[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    stored = np.flip(data, axis=1).transpose(2, 0, 1)  # array index (k, i, j) from the original (i, j, k)
    affine = tilt @ img.affine @ flip @ swap.T @ np.eye(4)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(stored), affine), str(path))


@pytest.mark.slow
def test_every_other_command_runs_on_the_phantom(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fewshot.cli import main

    monkeypatch.chdir(workspace)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    done: set[tuple[str, ...]] = set()
    segment_run: list[str] = []
    for doc, line, argv, needs in COMMANDS:
        if needs:
            continue
        run = tiny(argv)
        if tuple(run) in done:
            continue
        done.add(tuple(run))
        assert main(run) == 0, f"{doc}: {line}\n  ran as: fewshot {shlex.join(run)}"
        if run[0] == "segment" and _option(run, "--out") == "pred.nii.gz":
            segment_run = run
    import nibabel as nib

    # the tutorial's query is stored tilted and in another axis order: its prediction, stored back the same way,
    # must be the prediction of the plain query re-stored alike
    plain = [w if w not in ("query.nii.gz", "pred.nii.gz") else {"query.nii.gz": "query_plain.nii.gz",
             "pred.nii.gz": "pred_plain.nii.gz"}[w] for w in segment_run]
    assert main([*plain, "--overwrite"]) == 0
    _restore_oblique(workspace / "pred_plain.nii.gz")
    expected = np.asarray(nib.load(str(workspace / "pred_plain.nii.gz")).dataobj)

    pred, query = (nib.load(str(workspace / name)) for name in ("pred.nii.gz", "query.nii.gz"))
    assert pred.shape == query.shape and np.allclose(pred.affine, query.affine)  # written back as the query is stored
    assert np.array_equal(np.asarray(pred.dataobj), expected)
