"""The ``fewshot`` command line, end to end on tiny phantoms (seconds each)."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from episodes.data.phantom import make_phantom
from fewshot.cli import CLIError, build_parser, comma_list, main
from fewshot.config import load_config
from tests.fewshot.phantom_args import TINY


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    commands = ["demo", "superpixels", "pack", "import-weights", "pretrain", "pretrain-genesis", "train", "evaluate", "segment", "study"]
    for cmd in commands:
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([cmd, "--help"])
        assert exc.value.code == 0
        assert "usage: fewshot " + cmd in capsys.readouterr().out


def test_every_option_has_help_and_shows_its_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "2000")  # one line per option
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == {
        "demo", "superpixels", "pack", "import-weights", "pretrain", "pretrain-genesis", "train", "evaluate", "segment",
        "study", "recipes", "fit", "cv",
    }
    for name, command in [("fewshot", parser), *sub.choices.items()]:
        text = " ".join(command.format_help().split())
        assert "(default: None)" not in text and not re.search(r"\(default: [^)]*\) \(default:", text), name
        for action in command._actions:
            if not action.option_strings:
                continue
            option = f"{name} {'/'.join(action.option_strings)}"
            assert action.help and action.help.strip() and action.help != argparse.SUPPRESS, f"{option}: no help"
            shown = action.default not in (None, [], False, True, argparse.SUPPRESS)
            if shown and "default" not in action.help:
                assert f"(default: {action.default})" in text, f"{option}: default {action.default!r} not shown"


def test_demo_output_off_a_terminal(tmp_path: Path) -> None:
    """What a user sees in a log file: progress lines, no carriage returns, no advertising or torch
    deprecation spam, the backbone's init logged once."""
    quiet = TINY.index("train.progress_bar=false")
    args = TINY[: quiet - 1] + TINY[quiet + 1 :]  # progress on
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from fewshot.cli import main; sys.exit(main())", "demo",
         "--out", str(tmp_path / "demo"), "--steps", "3", *args],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    err = proc.stderr
    assert proc.returncode == 0, err
    assert "\r" not in err and "litlogger" not in err and "LeafSpec" not in err, err
    assert len(re.findall(r"^INFO fewshot: backbone ", err, flags=re.M)) == 1, err
    assert "GPU available" in err  # Lightning's device lines stay
    for desc in ("superpixels", "train", "evaluate"):
        assert re.search(rf"^{desc}: 100% \(", err, flags=re.M), f"no {desc} progress in:\n{err}"
    assert "| self-supervised |" in proc.stdout


def test_every_registry_name_is_in_the_help_and_the_architecture_doc(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fewshot.cli.parser import registry_choices

    monkeypatch.setenv("COLUMNS", "2000")  # no line wrapping inside hyphenated names

    doc = (Path(__file__).resolve().parents[2] / "docs" / "architecture.md").read_text()
    parser = build_parser()
    helps = {}
    for cmd in ("superpixels", "train", "study"):
        with pytest.raises(SystemExit):
            parser.parse_args([cmd, "--help"])
        helps[cmd] = " ".join(capsys.readouterr().out.split())
    for kind, names in registry_choices().items():
        assert names, kind
        for name in names:
            assert f"`{name}`" in doc, f"{kind} {name!r} is not in docs/architecture.md"
            where = "superpixels" if kind in ("superpixel method",) else "train"
            assert name in helps[where], f"{kind} {name!r} is not in `fewshot {where} --help`"


def test_demo_prints_table_and_writes_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "3", *TINY]) == 0
    text = capsys.readouterr().out
    assert "| untrained (same init) |" in text and "| self-supervised |" in text
    summary = json.loads((out / "demo.json").read_text())
    assert set(summary["dice_trained"]) == {"liver", "spleen", "mean"}
    assert summary["train"]["steps"] == 3
    results = json.loads((out / "eval" / "results.json").read_text())
    untrained = json.loads((out / "untrained.json").read_text())
    # the table and demo.json show the scores of the two evaluations written beside them
    assert summary["dice_trained"] == results["dice"] and summary["dice_untrained"] == untrained["dice"]
    for row, dice in (("untrained (same init)", untrained["dice"]), ("self-supervised", results["dice"])):
        cells = " | ".join(f"{100 * dice[c]:.1f}" for c in ("liver", "spleen", "mean"))
        assert f"| {row} | {cells} |" in text
    assert list((out / "eval" / "overlays").glob("*.png"))
    # an existing output folder is refused unless --overwrite
    assert main(["demo", "--out", str(out), "--steps", "1", *TINY]) == 2
    assert "exists" in capsys.readouterr().err


@pytest.mark.slow
def test_train_evaluate_segment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    args = ["train", "--config", "demo_phantom", "--dataset", "phantom-ct", "--steps", "2", "--out", str(run)]
    assert main([*args, *TINY, "--set", "data.protocol.chunks=2"]) == 0
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and (run / "config.yaml").is_file()
    capsys.readouterr()

    res = tmp_path / "results.json"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--out", str(res), "--overlays", "1"]) == 0
    data = json.loads(res.read_text())
    assert data["protocol"]["chunks"] == 2 and data["protocol"]["shots"] == 1  # the trained protocol is kept
    assert "native labels" in data["resolution"] and set(data["postprocess"]) == {"none", "lcc"}
    assert (tmp_path / "results.plan.json").is_file() and (tmp_path / "results.md").is_file()
    assert list((tmp_path / "results_overlays").glob("*.png"))
    assert (
        main(["evaluate", "--checkpoint", str(ckpt), "--out", str(tmp_path / "evaldir"), "--overlays", "0"])
        == 0
    )
    assert (tmp_path / "evaldir" / "results.json").is_file()
    # several checkpoints are one ensemble; a model with itself predicts what the model predicts alone
    ens = tmp_path / "ens.json"
    assert main(["evaluate", "--checkpoint", str(ckpt), str(ckpt), "--out", str(ens), "--overlays", "1"]) == 0
    data_ens, data_one = json.loads(ens.read_text()), json.loads((tmp_path / "evaldir" / "results.json").read_text())
    assert [m["checkpoint"] for m in data_ens["ensemble"]] == [str(ckpt), str(ckpt)]
    assert data_ens["dice"] == pytest.approx(data_one["dice"], abs=1e-3)
    assert list((tmp_path / "ens_overlays").glob("*.png"))
    strict = tmp_path / "strict.json"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--out", str(strict), "--overlays", "0", "--fg-threshold", "0.9", "--tta", "flip"]) == 0
    data_strict = json.loads(strict.read_text())
    assert data_strict["tta"] == "flip" and data["tta"] == "none"
    assert data_strict["threshold"] == 0.9 and json.loads((tmp_path / "evaldir" / "results.json").read_text())["threshold"] == 0.5
    # the saved config and the one inside the results record the settings used, not the trained ones
    strict_cfg = load_config(tmp_path / "strict.config.yaml")
    assert (strict_cfg.model.fg_threshold, strict_cfg.model.tta) == (0.9, "flip")
    assert (data_strict["config"]["model"]["fg_threshold"], data_strict["config"]["model"]["tta"]) == (0.9, "flip")
    assert load_config(tmp_path / "evaldir" / "config.yaml").model.fg_threshold == 0.5
    # the support-intensity prior: recorded in the results and the saved config; it changes the prediction
    prior = tmp_path / "prior.json"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--out", str(prior), "--overlays", "0", "--intensity-prior", "2"]) == 0
    data_prior = json.loads(prior.read_text())
    assert data_prior["intensity_prior"] == 2.0 and data["intensity_prior"] == 0.0
    assert load_config(tmp_path / "prior.config.yaml").model.intensity_prior == 2.0
    assert data_prior["counts"] != data["counts"]
    # test-time fine-tuning on each support set: recorded in the results and the saved config
    tuned = tmp_path / "tuned.json"
    ft = ["--finetune-steps", "2", "--finetune-lr", "0.002", "--finetune-batch-size", "1", "--no-finetune-bf16"]
    assert main(["evaluate", "--checkpoint", str(ckpt), "--out", str(tuned), "--overlays", "1", *ft]) == 0
    data_tuned = json.loads(tuned.read_text())
    tuned_with = data_tuned["finetune"]
    assert (tuned_with["steps"], tuned_with["lr"], tuned_with["batch_size"], tuned_with["bf16"]) == (2, 0.002, 1, False)
    assert data["finetune"]["steps"] == 0 and load_config(tmp_path / "tuned.config.yaml").model.finetune.steps == 2
    assert list((tmp_path / "tuned_overlays").glob("*.png"))
    with pytest.raises(SystemExit) as bad:  # argparse rejects it before anything runs
        main(["evaluate", "--checkpoint", str(ckpt), "--out", str(tmp_path / "bad.json"), "--finetune-steps", "-1"])
    assert bad.value.code == 2 and "--finetune-steps: must be >= 0" in capsys.readouterr().err
    # a higher threshold predicts a subset of the foreground: recall cannot rise
    assert data_strict["recall"]["mean"] <= json.loads((tmp_path / "evaldir" / "results.json").read_text())["recall"]["mean"]
    assert {"dice", "precision", "recall", "per_scan", "config", "library_version"} <= set(data)
    # an organ's Dice is the mean over its query scans; the mean, over the organs
    for organ in ("liver", "spleen"):
        scans = [s["dice"] for s in data["per_scan"] if s["organ"] == organ]
        assert scans and data["dice"][organ] == pytest.approx(np.mean(scans))
    assert data["dice"]["mean"] == pytest.approx((data["dice"]["liver"] + data["dice"]["spleen"]) / 2)
    assert main(["evaluate", "--checkpoint", str(ckpt), "--out", str(res)]) == 2  # exists
    assert "--overwrite" in capsys.readouterr().err
    # 4 shots x 2 chunks: the support scan's spleen covers 6 slices, too few unless chunks share slices
    k4 = ["evaluate", "--checkpoint", str(ckpt), "--overlays", "0", "--shots", "4"]
    assert main([*k4, "--out", str(tmp_path / "k4_strict.json")]) == 2
    assert "needs 8 distinct support slices" in capsys.readouterr().err
    assert main([*k4, "--out", str(tmp_path / "k4.json"), "--share-support-slices"]) == 0
    plan = json.loads((tmp_path / "k4.plan.json").read_text())
    spleen = next(o for o in plan["organs"] if o["organ"] == "spleen")
    assert plan["protocol"]["share_support_slices"] and spleen["support_slices"][0][2:] == spleen["support_slices"][1][:2]
    capsys.readouterr()

    # segment: a phantom scan written as NIfTI with a non-trivial affine, segmented from another one
    sup, qry = make_phantom(101, shape=(12, 64, 64)), make_phantom(102, shape=(12, 64, 64))
    affine = np.diag([4.7, 4.7, 6.0, 1.0])
    affine[:3, 3] = [-100.0, 50.0, 20.0]
    paths = {}
    no_spleen = np.where(sup.label == 4, 0, sup.label).astype(np.uint8)
    arrays = (
        ("sup", sup.image),
        ("mask", (sup.label == 1).astype(np.uint8)),
        ("qry", qry.image),
        ("lab", no_spleen),
    )
    for name, arr in arrays:
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(np.transpose(arr, (1, 2, 0)), affine), str(paths[name]))
    pred = tmp_path / "pred.nii.gz"
    seg = ["segment", "--checkpoint", str(ckpt), "--support", str(paths["sup"]), "--support-mask"]
    seg += [str(paths["mask"]), "--organ", "liver", "--query", str(paths["qry"]), "--out", str(pred)]
    assert main(seg) == 0
    report = json.loads(capsys.readouterr().out)
    out = nib.load(str(pred))
    np.testing.assert_allclose(out.affine, affine)
    assert out.shape == (64, 64, 12)
    assert set(np.unique(np.asarray(out.dataobj)).tolist()) <= {0, 1}
    assert report["voxels"] == int(np.asarray(out.dataobj).sum()) and report["fg_threshold"] == 0.5
    assert report["checkpoints"] == [str(ckpt)]
    assert main(seg) == 2  # exists
    # several checkpoints segment as one ensemble: a model with itself gives the model's own mask
    pair = tmp_path / "pred_pair.nii.gz"
    assert main([*seg[:3], str(ckpt), *seg[3:-1], str(pair)]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoints"] == [str(ckpt), str(ckpt)]
    np.testing.assert_array_equal(np.asarray(nib.load(str(pair)).dataobj), np.asarray(out.dataobj))
    assert main([*seg[:-1], str(tmp_path / "strict.nii.gz"), "--fg-threshold", "0.9"]) == 0
    strict_report = json.loads(capsys.readouterr().out)
    assert strict_report["fg_threshold"] == 0.9 and strict_report["voxels"] <= report["voxels"]
    assert main([*seg[:-1], str(tmp_path / "tuned.nii.gz"), "--finetune-steps", "2", "--finetune-lr", "0.002"]) == 0
    assert json.loads(capsys.readouterr().out)["finetune"]["steps"] == 2 and report["finetune"]["steps"] == 0
    assert main([*seg[:-1], str(tmp_path / "prior.nii.gz"), "--intensity-prior", "2"]) == 0
    prior_report = json.loads(capsys.readouterr().out)
    assert prior_report["intensity_prior"] == 2.0 and report["intensity_prior"] == 0.0
    assert prior_report["voxels"] != report["voxels"]

    # a multi-label mask needs --label-map; an organ absent from the support mask is a clear error
    def multi(organ: str, out: str, *extra: str) -> list[str]:
        return [
            *seg[:6],
            str(paths["lab"]),
            "--organ",
            organ,
            "--query",
            str(paths["qry"]),
            "--out",
            out,
            *extra,
        ]

    assert main(multi("liver", str(tmp_path / "p2.nii.gz"))) == 2
    assert "--label-map" in capsys.readouterr().err
    assert main(multi("liver", str(tmp_path / "p2.nii.gz"), "--label-map", "phantom")) == 0
    capsys.readouterr()
    assert main(multi("spleen", str(tmp_path / "p3.nii.gz"), "--label-map", "phantom")) == 2
    assert "'spleen' (label 4) is absent" in capsys.readouterr().err


def test_superpixels_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    cmd = ["superpixels", "--dataset", "phantom-mr", "--cache", str(cache), "--workers", "0", "--quiet"]
    assert main([*cmd, "--export", str(tmp_path / "sp")]) == 0
    first = json.loads(capsys.readouterr().out.split("\nwrote")[0])
    assert first["cache_misses"] == first["n_volumes"] == 8 and first["regions_max"] > 1
    assert len(list((tmp_path / "sp").glob("superpix_*.nii.gz"))) == 8
    assert main(cmd) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["cache_hits"] == 8 and second["cache_misses"] == 0
    assert "scaling" not in second["params"] and "body_connectivity" not in second["params"]
    # the SSL-ALPNet options are new cache entries, named in the printed params
    assert main([*cmd, "--scaling", "none", "--body-connectivity", "8"]) == 0
    third = json.loads(capsys.readouterr().out)
    assert third["cache_misses"] == 8 and (third["params"]["scaling"], third["params"]["body_connectivity"]) == ("none", 8)


def test_pretrain_genesis_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "g.pt"
    cmd = ["pretrain-genesis", "--dataset", "phantom-ct", "--backbone", "cbr-tiny", "--steps", "3"]
    assert main([*cmd, "--batch-size", "2", "--size", "48", "--out", str(out)]) == 0
    assert out.is_file() and "--init genesis" in capsys.readouterr().out
    from fewshot.backbones import create_backbone

    bb = create_backbone("cbr-tiny", init="genesis", weights=out)
    assert bb.init_report is not None and bb.init_report.loaded
    cut = tmp_path / "g_cut.pt"
    assert main([*cmd, "--truncate", "block3", "--output-stride", "4", "--size", "48", "--out", str(cut)]) == 0
    assert "--truncate block3 (and model.backbone.output_stride: 4)" in capsys.readouterr().out
    bb = create_backbone("cbr-tiny", init="genesis", weights=cut, truncate="block3", output_stride=4)
    assert bb.init_report is not None and bb.init_report.randomized == []


def test_pretrain_mim_stops_at_its_time_limit_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``fewshot pretrain --objective mim --time-limit``: exit 75 with the state kept in ``<out>.partial``, then the
    same command resumes and writes weights that ``--init mim`` loads."""
    out = tmp_path / "m.pt"
    cmd = ["pretrain", "--objective", "mim", "--dataset", "phantom-ct", "--backbone", "cbr-tiny", "--steps", "3",
           "--batch-size", "2", "--size", "48", "--out", str(out)]
    assert main([*cmd, "--time-limit", "1e-9"]) == 75
    text = capsys.readouterr().out
    assert "stopped by --time-limit at step 1 of 3" in text and "run the same command again" in text
    assert (tmp_path / "m.pt.partial").is_file() and not out.exists()
    assert main(cmd) == 0
    text = capsys.readouterr().out
    assert "(resumed at step 1)" in text and "masked-patch L1" in text and "--init mim --weights" in text
    assert not (tmp_path / "m.pt.partial").exists()
    from fewshot.backbones import create_backbone

    bb = create_backbone("cbr-tiny", init="mim", weights=out)
    assert bb.init_report is not None and bb.init_report.randomized == []


def test_pretrain_on_one_folds_training_scans(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--fold K``: only the fold's training scans (the split fit and evaluate use) are pretrained on, so its
    support and query scans stay unseen; without it, every scan."""
    from episodes.data.datasets import load_dataset
    from episodes.data.preprocess import unit_slices
    from episodes.protocol import Protocol
    from fewshot.genesis import slices_sha256
    from fewshot.pipeline import split_volumes

    cmd = ["pretrain", "--dataset", "phantom-ct", "--backbone", "cbr-tiny", "--steps", "1", "--batch-size", "2",
           "--size", "48"]
    assert main([*cmd, "--fold", "1", "--out", str(tmp_path / "f1.pt")]) == 0
    assert "fold 1: pretraining on its 5 training scans" in capsys.readouterr().out
    assert main([*cmd, "--out", str(tmp_path / "all.pt")]) == 0
    volumes = load_dataset("phantom-ct", None)
    split, train, _ = split_volumes(Protocol(dataset="phantom-ct", fold=1), volumes)
    assert len(train) == 5 and split.support not in {v.subject for v in train}
    meta = {n: torch.load(tmp_path / f"{n}.pt", weights_only=True)["meta"] for n in ("f1", "all")}
    assert meta["f1"]["data_sha256"] == slices_sha256(unit_slices(train, 48))
    assert meta["all"]["data_sha256"] == slices_sha256(unit_slices(volumes, 48)) != meta["f1"]["data_sha256"]
    # setting 2 by hand: --exclude-organs leaves out every slice of those organs, as fit --setting 2 does
    assert main([*cmd, "--fold", "1", "--exclude-organs", "liver,spleen", "--out", str(tmp_path / "s2.pt")]) == 0
    kept = unit_slices(train, 48, exclude_organs=("liver", "spleen"))
    assert f"left out: every slice with liver, spleen ({len(kept)} slices kept)" in capsys.readouterr().out
    s2 = torch.load(tmp_path / "s2.pt", weights_only=True)["meta"]["data_sha256"]
    assert s2 == slices_sha256(kept) != meta["f1"]["data_sha256"]
    assert main([*cmd, "--exclude-organs", "lung", "--out", str(tmp_path / "bad.pt")]) == 2
    assert "--exclude-organs: unknown organ 'lung'" in capsys.readouterr().err
    assert not (tmp_path / "bad.pt").exists()


def test_study_pretrains_mim_on_each_folds_training_scans(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--inits mim`` without weights: the study pretrains the encoder by masked image modelling on the fold's
    training slices first, and trains from that file."""
    out = tmp_path / "study"
    cmd = ["study", "--backbones", "cbr-tiny", "--inits", "mim", "--seeds", "0", "--genesis-steps", "2"]
    assert main([*cmd, "--steps", "1", "--out", str(out), *TINY]) == 0
    assert "| cbr-tiny | mim | alpnet | 1 |" in capsys.readouterr().out
    (made,) = (out / "mim").glob("*.pt")
    meta = torch.load(made, map_location="cpu", weights_only=True)["meta"]
    assert (meta["objective"], meta["steps"]) == ("mim", 2)


def test_pack_command_and_training_from_a_pack(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``fewshot pack`` writes a data set as one file; ``--data PACK.npz`` trains from it as from the folder."""
    from episodes.data.pack import read_pack, write_pack

    pack = tmp_path / "phantom.npz"
    assert main(["pack", "--dataset", "phantom-ct", "--out", str(pack)]) == 0
    out = capsys.readouterr().out
    assert f"packed 8 scans (256 slices) of phantom-ct into {pack}" in out and f"--data {pack}" in out
    assert [v.subject for v in read_pack(pack, dataset="phantom-ct")] == [str(i) for i in range(8)]
    assert main(["pack", "--dataset", "phantom-ct", "--out", str(pack)]) == 2
    assert f"already there: {pack}; pass --overwrite" in capsys.readouterr().err
    assert main(["pack", "--dataset", "phantom-ct", "--out", str(tmp_path / "p.zip")]) == 2
    assert "ends in .npz" in capsys.readouterr().err
    # in parts: the single file it replaces is removed (it would hide them), and --data PACK reads the parts;
    # another pack whose name starts alike is not this pack's part and stays
    other = tmp_path / "phantom.old.1-of-2.npz"
    other.write_bytes(b"another pack")
    assert main(["pack", "--dataset", "phantom-ct", "--out", str(pack), "--parts", "3", "--overwrite"]) == 0
    assert "in parts: phantom.1-of-3.npz " in capsys.readouterr().out and not pack.exists()
    assert other.read_bytes() == b"another pack"
    assert [v.subject for v in read_pack(pack, dataset="phantom-ct")] == [str(i) for i in range(8)]
    assert main(["pack", "--dataset", "phantom-ct", "--out", str(pack), "--parts", "0", "--overwrite"]) == 2
    assert "--parts must be >= 1" in capsys.readouterr().err

    from episodes.data.datasets import load_dataset

    args = {"n_subjects": 6, "shape": [12, 64, 64]}  # TINY's data.loader_args
    (tiny,) = write_pack(load_dataset("phantom-ct", None, **args), tmp_path / "tiny.npz", dataset="phantom-ct",
                         loader_args=args)  # fmt: skip
    run = tmp_path / "run"
    cmd = ["train", "--config", "demo_phantom", "--dataset", "phantom-ct", "--data", str(tiny), "--steps", "1"]
    assert main([*cmd, "--out", str(run), *TINY]) == 0
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert main([*cmd, "--out", str(tmp_path / "run2"), *TINY, "--set", "data.loader_args={n_subjects: 5}"]) == 2
    assert "cannot be applied to a pack" in capsys.readouterr().err


def test_study_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    cmd = ["study", "--backbones", "cbr-tiny", "--inits", "random,random:xavier", "--seeds", "0,1"]
    assert main([*cmd, "--steps", "1", "--out", str(out), *TINY]) == 0
    table = capsys.readouterr().out
    assert "| cbr-tiny | random | alpnet | 2 |" in table and "±" in table
    data = json.loads((out / "study.json").read_text())
    assert len(data["runs"]) == 4 and (out / "study.png").is_file()


def test_user_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--dataset", "chaos-mr", "--data", str(tmp_path / "missing"), "--steps", "1"]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["train", "--set", "model.nope=1"]) == 2
    assert "valid keys" in capsys.readouterr().err
    assert main(["study", "--seeds", "0,x", "--out", str(tmp_path / "study")]) == 2
    assert "--seeds: 'x' is not a valid int (in '0,x')" in capsys.readouterr().err
    assert not (tmp_path / "study").exists()


def test_comma_list_converts_and_names_the_option_it_rejects() -> None:
    assert comma_list(" 1, 3,,5 ", int, option="--shots", minimum=1) == [1, 3, 5]
    assert comma_list("liver,spleen", str, option="--organs") == ["liver", "spleen"]
    assert comma_list("0.5,0.9", float, option="--thresholds") == [0.5, 0.9]
    with pytest.raises(CLIError, match="--shots: expected a comma list, got ' , '"):
        comma_list(" , ", int, option="--shots")
    with pytest.raises(CLIError, match=r"--shots: '1\.5' is not a valid int"):
        comma_list("1,1.5", int, option="--shots")
    with pytest.raises(CLIError, match="--shots: every item must be >= 1, got '0'"):
        comma_list("3,0", int, option="--shots", minimum=1)


def test_study_without_matplotlib_writes_the_table_and_names_the_extra(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """matplotlib is the optional ``plots`` extra: without it the study still runs and says how to get the plot."""
    import sys

    from fewshot.study import NO_MATPLOTLIB, _plot

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    summary = [{"backbone": "cbr-tiny", "init": "random", "head": "alpnet", "runs": 1, "mean": (0.5, 0.0)}]
    assert _plot(summary, tmp_path / "study.png") is False and not (tmp_path / "study.png").exists()
    assert "pip install 'fewshot-medseg[plots]'" in NO_MATPLOTLIB
