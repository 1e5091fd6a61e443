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
