"""Bad input to every command: exit status 2, one clear line, never a traceback."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from fewshot.cli import main


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(args)
    except SystemExit as e:  # argparse errors
        code = int(e.code or 0)
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    out: dict[str, Path] = {}
    out["random_bytes"] = root / "random.pt"
    out["random_bytes"].write_bytes(np.random.default_rng(0).bytes(4096))
    out["foreign_ckpt"] = root / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(3)}}, out["foreign_ckpt"])
    out["text_ckpt"] = root / "notes.ckpt"
    out["text_ckpt"].write_text("hello")
    image = np.random.default_rng(1).normal(100, 10, (16, 16, 4)).astype(np.float32)
    mask = np.zeros((16, 16, 4), np.uint8)
    mask[4:8, 4:8, 1:3] = 1
    for name, arr in (("scan", image), ("mask", mask)):
        out[name] = root / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(arr, np.eye(4)), str(out[name]))
    out["dicom_dir"] = root / "dicom_series"
    out["dicom_dir"].mkdir()
    out["empty_dir"] = root / "empty"
    out["empty_dir"].mkdir()
    return out


def _cases(f: dict[str, Path], tmp: Path) -> list[tuple[list[str], str]]:
    seg = ["segment", "--checkpoint", str(f["foreign_ckpt"]), "--support", str(f["scan"]), "--support-mask"]
    seg += [str(f["mask"]), "--query", str(f["scan"])]
    ev = ["evaluate", "--out", str(tmp / "ev")]
    return [
        (["train", "--backbone", "resnet7"], "invalid choice"),
        (["train", "--head", "unet"], "invalid choice"),
        (["train", "--init", "imagenet:v2"], "imagenet:v2"),
        (["train", "--init", "random:gaussian"], "random:gaussian"),
        (["train", "--init", "genesis", "--backbone", "cbr-tiny"], "weights"),
        (["train", "--set", "model.nope=1"], "valid keys"),
        (["train", "--set", "train.steps=many"], "train.steps must be an integer"),
        (["train", "--set", "data.protocol.fold=9"], "fold must be in 0..4"),
        (["train", "--dataset", "mnist"], "invalid choice"),
        (["train", "--dataset", "nifti", "--data", str(f["empty_dir"]), "--steps", "1"], "empty"),
        (["train", "--dataset", "chaos-mr", "--data", str(tmp / "missing"), "--steps", "1"], "missing"),
        (["superpixels", "--dataset", "phantom-mr", "--param", "foo=1", "--cache", str(tmp / "c")], "foo"),
        (["superpixels", "--dataset", "phantom-mr", "--method", "watershed"], "invalid choice"),
        ([*ev, "--checkpoint", str(f["random_bytes"])], "cannot be read"),
        ([*ev, "--checkpoint", str(f["text_ckpt"])], "cannot be read"),
        ([*ev, "--checkpoint", str(f["foreign_ckpt"])], "not written by `fewshot train`"),
        ([*ev, "--checkpoint", str(tmp / "nope.ckpt")], "not found"),
        ([*ev, "--checkpoint", str(tmp)], "is a folder"),
        ([*seg, "--organ", "liver", "--out", str(tmp / "pred.txt")], ".nii.gz"),
        ([*seg, "--organ", "livr", "--out", str(tmp / "p.nii.gz")], "did you mean 'liver'"),
        ([*seg[:-1], str(f["dicom_dir"]), "--organ", "liver", "--out", str(tmp / "p.nii.gz")], "one DICOM series"),
        ([*seg, "--organ", "liver", "--out", str(tmp / "p.nii.gz")], "not written by `fewshot train`"),
        (["pretrain-genesis", "--dataset", "phantom-ct", "--steps", "0", "--out", str(tmp / "g.pt")], "steps"),
        (["pretrain-genesis", "--dataset", "nifti", "--data", str(tmp / "missing"), "--out", str(tmp / "g.pt")],
         "missing"),
        (["study", "--inits", "random,bogus", "--out", str(tmp / "st")], "bogus"),
        (["study", "--backbones", "resnet7", "--out", str(tmp / "st")], "resnet7"),
        (["demo", "--set", "data.size=abc", "--out", str(tmp / "demo")], "data.size must be an integer"),
    ]


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime_ns)}`` of every file and folder under ``root``."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.fixture
def user_files(tmp_path: Path) -> dict[str, Path]:
    """Files the library did not write: a user's folder of scans and notes, a plain file, data folders."""
    root = tmp_path / "user"
    out: dict[str, Path] = {"root": root}
    out["mine"] = root / "mine"
    scan = np.random.default_rng(3).normal(40, 10, (16, 16, 4)).astype(np.float32)
    (out["mine"] / "patient_scans").mkdir(parents=True)
    nib.save(nib.Nifti1Image(scan, np.eye(4)), str(out["mine"] / "patient_scans" / "scan_001.nii.gz"))
    (out["mine"] / "notes.txt").write_text("my notes")
    out["file"] = root / "afile.txt"
    out["file"].write_text("not a folder")
    out["parent"] = root / "data"  # the folder above the one holding image_<id>.nii.gz
    (out["parent"] / "chaos").mkdir(parents=True)
    nib.save(nib.Nifti1Image(scan, np.eye(4)), str(out["parent"] / "chaos" / "image_1.nii.gz"))
    out["no_scans"] = root / "no_scans"
    out["no_scans"].mkdir()
    (out["no_scans"] / "readme.txt").write_text("x")
    out["bad_labels"] = root / "bad_labels"
    for sub in ("images", "labels"):
        (out["bad_labels"] / sub).mkdir(parents=True)
    label = np.zeros((16, 16, 4), np.int16)
    label[4:8, 4:8, 1:3] = 6
    label[0, 0, 0], label[1, 1, 1] = -1, 99
    nib.save(nib.Nifti1Image(scan, np.eye(4)), str(out["bad_labels"] / "images" / "a.nii.gz"))
    nib.save(nib.Nifti1Image(label, np.eye(4)), str(out["bad_labels"] / "labels" / "a.nii.gz"))
    return out


def _second_round_cases(f: dict[str, Path], u: dict[str, Path], tmp: Path) -> list[tuple[list[str], str]]:
    """Issue 39's cases: each must fail at once, before any work, without touching ``u``'s files."""
    seg = ["segment", "--checkpoint", str(f["foreign_ckpt"]), "--support", str(f["scan"]), "--support-mask"]
    seg += [str(f["mask"]), "--query", str(f["scan"]), "--organ", "liver", "--out", str(tmp / "p.nii.gz")]
    ev = ["evaluate", "--checkpoint", str(f["foreign_ckpt"])]
    cases = [
        (["demo", "--out", str(u["mine"]), "--overwrite", "--set", "train.steps=abc"], "train.steps must be an integer"),
        (["demo", "--out", str(u["mine"]), "--overwrite", "--steps", "1"], "was not created by fewshot"),
        ([*ev, "--out", str(u["file"])], "is an existing file, not a folder"),
        ([*ev, "--out", str(u["file"]), "--overwrite"], "is an existing file, not a folder"),
        ([*ev, "--out", str(u["file"] / "results")], "is a file, not a folder"),
        ([*ev, "--out", str(u["mine"])], "exists and is not empty"),
        (["pretrain-genesis", "--dataset", "phantom-ct", "--out", str(u["mine"]), "--overwrite"], "is a folder"),
        (["pretrain-genesis", "--dataset", "phantom-ct", "--out", str(u["file"] / "g.pt")], "is a file, not a folder"),
        (["pretrain-genesis", "--dataset", "phantom-ct", "--size", "0", "--out", str(tmp / "g.pt")],
         "--size must be >= 32"),
        (["train", "--config", "demo_phantom", "--dataset", "nifti", "--data", str(u["no_scans"]), "--out",
          str(tmp / "t")], "no .nii/.nii.gz files"),
        (["train", "--config", "demo_phantom", "--set", "data.loader_args={n_subjects:6}"], "space after the colon"),
        (["train", "--config", "demo_phantom", "--set", "data.loader_args.n_subjets=6"], "did you mean 'n_subjects'"),
        (["train", "--config", "demo_phantom", "--size", "7"], "data.size must be >= 32"),
        (["train", "--dataset", "chaos-mr", "--data", str(u["parent"]), "--out", str(tmp / "t")],
         f"the subfolder {u['parent'] / 'chaos'} holds them"),
        (["superpixels", "--dataset", "nifti", "--data", str(u["bad_labels"]), "--cache", str(tmp / "c")],
         "label values [-1, 99] (labels must be >= 0) are not in the btcv-ct label map"),
        (["superpixels", "--dataset", "phantom-mr", "--param", "min_size"], "--param expects NAME=VALUE"),
        (["study", "--weights", "foo", "--out", str(tmp / "st")], "--weights expects NAME=VALUE"),
        (["study", "--dataset", "phantom-mr", "--folds", "9", "--out", str(tmp / "st9")], "fold must be in 0..4"),
        ([*seg, "--query-range", "5-10"], "--query-range expects Z0:Z1"),
        ([*seg, "--query-range", "10:5"], "needs 0 <= Z0 <= Z1"),
        ([*seg, "--shots", "0"], "--shots must be >= 1"),
        (["evaluate", "--checkpoint", str(f["foreign_ckpt"]), "--out", str(tmp / "e"), "--batch-size", "0"],
         "--batch-size must be >= 1"),
    ]
    if not torch.cuda.is_available():
        cases.append(
            (["train", "--config", "demo_phantom", "--accelerator", "gpu", "--out", str(tmp / "t")], "no CUDA GPU")
        )
    return cases


def test_second_round_bad_input_fails_at_once_and_touches_nothing(
    files: dict[str, Path], user_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    failures = []
    root = user_files["root"]
    for args, expected in _second_round_cases(files, user_files, tmp_path / "outs"):
        before = _snapshot(root)
        code, err = _run(args, capsys)
        errors = [line for line in err.splitlines() if ": error: " in line]
        changed = sorted(k for k, v in before.items() if _snapshot(root).get(k) != v)
        if code != 2 or "Traceback" in err or len(errors) != 1 or expected not in errors[0] or changed:
            failures.append(f"{' '.join(args)}\n  -> exit {code}, changed {changed}, stderr: {err.strip()[-400:]!r}")
    assert not failures, "\n".join(failures)
    assert (user_files["mine"] / "notes.txt").read_text() == "my notes"
    assert not (tmp_path / "outs" / "t" / "cache").exists()  # no superpixel was computed
    assert not (tmp_path / "outs" / "st9").exists()  # a study with a fold the protocol lacks made no folder


def test_demo_overwrite_replaces_only_its_own_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fewshot import demo
    from fewshot.outputs import MARKER

    calls = []
    monkeypatch.setattr(demo, "load_volumes", lambda data: calls.append(1) or (_ for _ in ()).throw(KeyboardInterrupt))
    out = tmp_path / "demo"
    with pytest.raises(KeyboardInterrupt):
        demo.run_demo(out)  # creates and marks the folder, then stops (no training in this test)
    assert (out / MARKER).is_file() and (out / "config.yaml").is_file()
    (out / "old_result.txt").write_text("from an earlier demo")
    with pytest.raises(KeyboardInterrupt):
        demo.run_demo(out, overwrite=True)
    assert not (out / "old_result.txt").exists() and (out / MARKER).is_file() and len(calls) == 2


def test_bad_input_exits_2_with_one_clear_line(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    failures = []
    for args, expected in _cases(files, tmp_path):
        code, err = _run(args, capsys)
        if code != 2 or "Traceback" in err or expected not in err:
            failures.append(f"{' '.join(args)}\n  -> exit {code}, stderr: {err.strip()[-400:]!r}")
    assert not failures, "\n".join(failures)


def test_bad_weights_files_never_suggest_weights_only_false(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    truncated = files["random_bytes"].with_name("truncated.pt")
    torch.save({"a": torch.zeros(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:500])
    for path in (files["random_bytes"], truncated):
        for init in ("genesis", "imagenet"):
            code, err = _run(
                ["train", "--backbone", "cbr-tiny", "--init", init, "--weights", str(path), "--steps", "1"],
                capsys,
            )
            assert code == 2 and "Traceback" not in err and path.name in err, err
            assert "weights_only=False" not in err, err


def test_fast_slic_missing_prints_the_install_recipe(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import builtins

    real_import = builtins.__import__

    def no_fast_slic(name: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name.startswith("fast_slic"):
            raise ImportError("No module named 'fast_slic'")
        return real_import(name, *args, **kwargs)

    from episodes.pseudolabels import algorithms

    monkeypatch.setattr(builtins, "__import__", no_fast_slic)
    algorithms._fast_slic_class.cache_clear()
    try:
        code, err = _run(
            ["superpixels", "--dataset", "phantom-mr", "--method", "fast-slic", "--cache", str(tmp_path),
             "--workers", "0", "--quiet"],
            capsys,
        )
    finally:
        algorithms._fast_slic_class.cache_clear()
    assert code == 2 and "Traceback" not in err
    assert "--no-build-isolation" in err and "fast-slic==0.4.0" in err


def test_a_missing_imagenet_file_fails_before_any_data_work(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    out = tmp_path / "run"
    code, err = _run(
        ["train", "--config", "demo_phantom", "--backbone", "resnet50", "--init", "imagenet", "--out", str(out)],
        capsys,
    )
    assert code == 2 and "--truncate STAGE (one of stem, layer1" in err, err  # demo_phantom cuts cbr-small
    code, err = _run(
        ["train", "--config", "demo_phantom", "--backbone", "resnet50", "--truncate", "none", "--init", "imagenet",
         "--out", str(out)],
        capsys,
    )
    assert code == 2 and "Traceback" not in err and "resnet50-0676ba61.pth" in err, err
    assert not (out / "cache").exists()  # no superpixel was computed


def test_segment_input_checks() -> None:
    from fewshot.segment import check_intensities, plausibility_warnings

    mr_like = np.random.default_rng(0).uniform(0, 800, (4, 16, 16))
    ct_like = np.full((4, 16, 16), -1000.0)
    ct_like[:, 4:12, 4:12] = 40.0
    check_intensities(mr_like, "MR", "query q.nii.gz")
    check_intensities(ct_like, "CT", "query q.nii.gz")
    with pytest.raises(ValueError, match="does not look like CT"):
        check_intensities(mr_like, "CT", "query q.nii.gz")
    with pytest.raises(ValueError, match="looks like CT"):
        check_intensities(ct_like, "MR", "query q.nii.gz")
    assert plausibility_warnings("liver", 1500.0, 0.05) == []
    warned = plausibility_warnings("liver", 10_000.0, 0.41)
    assert len(warned) == 2 and "10000 ml" in warned[0] and "41%" in warned[1]


def test_fg_threshold_refused_at_parse_time(capsys: pytest.CaptureFixture[str]) -> None:
    from fewshot.cli import main

    for cmd in (["evaluate", "--out", "x"], ["segment", "--support", "a", "--support-mask", "b", "--organ", "liver",
                                            "--query", "c", "--out", "d.nii.gz"]):
        with pytest.raises(SystemExit) as exc:
            main([*cmd, "--checkpoint", "missing.ckpt", "--fg-threshold", "1.5"])
        assert exc.value.code == 2
        assert "--fg-threshold must be a probability in (0, 1)" in capsys.readouterr().err
