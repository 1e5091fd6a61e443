"""The k-shot benchmark end to end on a tiny phantom run (cross-validation is a library command: tests/fewshot/recipes)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import yaml

from tests.fewshot.phantom_args import TINY

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _check_reuse_rule(run: Path) -> None:
    """A finished member run is reused (``fewshot fit`` / ``cv`` skip it) for the same training config, whatever its
    inference-only keys or folder; another training setting or more steps means training (resuming)."""
    from fewshot.config import load_config
    from fewshot.recipes.runs import MemberRun, is_finished

    def member(overrides: dict[str, Any], folder: Path = run) -> MemberRun:
        cfg = load_config(run / "config.yaml", overrides).to_dict()
        return MemberRun(member="m", index=0, organs=("liver",), group=0, out_dir=folder, config=cfg)

    assert is_finished(member({}))
    assert is_finished(member({"model.fg_threshold": 0.8}))
    assert is_finished(member({"model.head.shot_fusion": "scores"}))  # 1-shot training: nothing to fuse
    assert is_finished(member({"model.tta": "flip"}))
    assert is_finished(member({"model.intensity_prior": 0.5}))
    assert is_finished(member({"out_dir": str(run.parent / "moved")}))  # a copied run
    assert not is_finished(member({"optim.lr": 0.5}))
    assert not is_finished(member({"train.steps": 3}))
    assert not is_finished(member({}, run.parent / "missing"))


def test_shot_benchmark_checks_its_lists_before_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad comma list is named in one line before the checkpoint is read (here it does not exist)."""
    bench = _load("bench_shots")
    missing = str(tmp_path / "missing.ckpt")
    assert bench.cli(["--checkpoint", missing, "--shots", "1,0", "--out", str(tmp_path / "o")]) == 2
    assert "bench_shots.py: error: --shots: every item must be >= 1, got '0'" in capsys.readouterr().err
    assert bench.cli(["--checkpoint", missing, "--thresholds", "0.5,high", "--out", str(tmp_path / "o")]) == 2
    assert "--thresholds: 'high' is not a valid float" in capsys.readouterr().err
    assert bench.cli(["--checkpoint", missing, "--out", str(tmp_path / "o")]) == 2
    assert "missing.ckpt" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_shot_benchmark_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fewshot.cli import main

    run = tmp_path / "run"
    tiny = [
        "--set", "data.loader_args={n_subjects: 6, shape: [12, 64, 64]}", "--set", "data.size=64",
        "--set", "data.protocol.organs=[liver]", "--set", "model.backbone.name=cbr-tiny",
        "--set", "model.backbone.truncate=block2", "--set", "model.head.feature_dim=8",
        "--set", "train.num_workers=0", "--set", "train.progress_bar=false", "--set", "train.accelerator=cpu",
    ]  # fmt: skip
    assert main(["train", "--config", "demo_phantom", "--steps", "2", "--out", str(run), *tiny]) == 0
    bench = _load("bench_shots")
    out = tmp_path / "shots"
    ckpt = str(run / "checkpoints" / "last.ckpt")
    _check_reuse_rule(run)
    assert bench.main(["--checkpoint", ckpt, "--shots", "1,3", "--out", str(out)]) == 0
    table = (out / "shots.md").read_text()
    assert "| 1 | - | 0.5 | none |" in table and "| 3 | prototypes | 0.5 | lcc |" in table
    assert "| 3 | scores | 0.5 | none |" in table
    assert table.count("\n| ") == 3 * 2  # (k=1), (k=3, prototypes), (k=3, scores), each without and with LCC
    # a threshold sweep: a higher foreground threshold can only remove foreground, so recall cannot rise
    out2 = tmp_path / "thresholds"
    assert (
        bench.main(["--checkpoint", ckpt, "--shots", "1", "--thresholds", "0.5,0.9", "--out", str(out2)]) == 0
    )
    rows = json.loads((out2 / "shots.json").read_text())["rows"]
    assert [r["threshold"] for r in rows] == [0.5, 0.9]
    assert rows[1]["none"]["recall"]["mean"] <= rows[0]["none"]["recall"]["mean"]
    assert "| 1 | - | 0.9 | none |" in (out2 / "shots.md").read_text()
    assert (
        yaml.safe_load((out2 / "k1_prototypes_t0.9" / "config.yaml").read_text())["model"]["fg_threshold"]
        == 0.9
    )
    with pytest.raises(ValueError, match="fg_threshold"):
        bench.main(
            ["--checkpoint", ckpt, "--shots", "1", "--thresholds", "0.5,1.5", "--out", str(tmp_path / "bad")]
        )
    assert not (tmp_path / "bad" / "k1_prototypes_t0.5").exists()  # refused before any evaluation
    # ALP test window and cell threshold: each row evaluated (and its saved config) with its own setting
    out3 = tmp_path / "alp"
    argv = [
        "--checkpoint",
        ckpt,
        "--shots",
        "1",
        "--windows",
        "1,2",
        "--alp-thresholds",
        "0.5",
        "--out",
        str(out3),
    ]
    assert bench.main(argv) == 0
    rows = json.loads((out3 / "shots.json").read_text())["rows"]
    assert [(r["window"], r["alp_threshold"]) for r in rows] == [(1, 0.5), (2, 0.5)]
    saved = yaml.safe_load((out3 / "k1_prototypes_w1" / "config.yaml").read_text())
    assert saved["model"]["head"]["window_test"] == 1 and saved["model"]["head"]["threshold"] == 0.5
    assert "| 1 | - | 0.5 | 2 | 0.5 | none |" in (out3 / "shots.md").read_text()


def test_shot_benchmark_reports_user_errors_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = _load("bench_shots")
    assert bench.cli(["--checkpoint", "no/such/last.ckpt", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "bench_shots.py: error: checkpoint no/such/last.ckpt not found" in err
    assert "Traceback" not in err and err.count("error:") == 1
    assert not (tmp_path / "out").exists()  # nothing written


def test_training_cost_benchmark_on_the_phantom(tmp_path: Path) -> None:
    """Profile, bare loop and a variant on tiny phantom runs: the tables are written and the bare loop computed what
    Lightning computed (equal weights)."""
    bench = _load("bench_training_cost")
    argv = [
        "--recipes",
        "phantom",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--rounds",
        "1",
        "--out",
        str(tmp_path),
        *TINY,  # the CLI tests' tiny demo config
    ]
    threads = torch.get_num_threads()
    variants = ["--variant", "t2:threads=2,train.log_every=1", "--variant", "cc:compile=backbone"]
    assert bench.main([*argv, *variants]) == 0
    # the arms ran in this process: its thread count is given back (a leaked count of 1 made later tests' in-process
    # training use other kernels than their subprocesses, and the bit-exact resume tests failed in the full suite)
    assert torch.get_num_threads() == threads
    report = json.loads((tmp_path / "training_cost.json").read_text())
    (cost,) = report["configs"]
    assert cost["config"] == "demo_phantom" and cost["gflop_per_step"] > 0 and cost["peak_gflops"] > 0
    arms = cost["arms"]
    assert list(arms) == ["lightning", "bare", "t2", "cc"]
    assert arms["bare"]["weights_equal_lightning"]  # the bare loop computed what Lightning computed
    assert arms["cc"]["max_abs_diff"] < 1e-3  # torch.compile'd backbone: the same weights up to rounding
    assert all(arms["lightning"]["ms"][phase] > 0 for phase in ("forward", "backward", "optimizer"))
    assert arms["bare"]["ms"]["framework"] == pytest.approx(0.0, abs=1.0) and arms["lightning"]["ckpt_ms"] > 0
    table = (tmp_path / "training_cost.md").read_text()
    assert "| demo_phantom | bare |" in table and "| demo_phantom | t2 |" in table and "GFLOP/step" in table


def test_training_cost_benchmark_refuses_a_bad_variant_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = _load("bench_training_cost")
    for variant in ("nobody", "c:compile=everything"):
        with pytest.raises(SystemExit) as exit_info:
            bench.main(["--recipes", "phantom", "--variant", variant, "--out", str(tmp_path / "o")])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "error: argument --variant" in err and err.count("error:") == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # refused before anything was written


def _run(init: str, fold: int, seed: int, curve: dict[int, float], minutes: tuple[float, float]) -> dict[str, Any]:
    last = max(curve)
    dice = {"liver": curve[last], "mean": curve[last]}
    return {
        "backbone": "cbr-small", "init": init, "head": "alpnet", "fold": fold, "seed": seed, "dice": dice,
        "curve": [{"step": s, "dice": {"liver": d, "mean": d}} for s, d in sorted(curve.items())],
        "pretrain_minutes": minutes[0], "train_minutes": minutes[1],
    }  # fmt: skip


def test_compute_matched_pairs_each_run_with_the_longer_arm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load("bench_compute_matched")
    study, arm = [], []
    for fold in range(3):
        for seed in (0, 1):
            base = 0.5 + 0.05 * fold + 0.01 * seed
            study.append(_run("random", fold, seed, {2: base, 4: base + 0.02}, (0.0, 10.0)))
            study.append(_run("genesis", fold, seed, {2: base + 0.04, 4: base + 0.05}, (15.0, 10.0)))
            # the arm continues the random run: the same Dice at steps 2 and 4, then 0.04 more at step 8
            arm.append(_run("random", fold, seed, {2: base, 4: base + 0.02, 8: base + 0.06}, (0.0, 22.0)))
    study.append(_run("genesis", 4, 0, {2: 0.9, 4: 0.9}, (15.0, 10.0)))  # no arm run to pair with: left out
    paths = {}
    for name, runs in (("study", study), ("arm", arm)):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps({"runs": runs}))
    out = tmp_path / "matched"
    assert bench.main(["--study", str(paths["study"]), "--arm", str(paths["arm"]), "--label", "long", "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    gains = {g["init"]: g for g in result["gains"]}
    assert gains["genesis"]["gain"][0] == pytest.approx(0.05 - 0.06) and gains["genesis"]["above"] == 0
    assert gains["random"]["gain"][0] == pytest.approx(-0.04) and len(gains["random"]["pairs"]) == 6
    assert gains["genesis"]["folds_1_4"][0] == pytest.approx(-0.01)
    assert result["same_start"] == {"pairs": 12, "steps": [2, 4], "max_abs_diff": 0.0}
    counts = {s["init"]: s["runs"] for s in result["summary"]}
    assert counts == {"random": 6, "genesis": 6, "long": 6}  # the unpaired fold-4 run is left out
    table = capsys.readouterr().out
    assert "| genesis | 6 |" in table and "15.0 + 10.0" in table and "at most 0.00 points (12 comparisons)" in table
    arm.append(_run("genesis", 0, 0, {2: 0.5}, (1.0, 1.0)))
    paths["arm"].write_text(json.dumps({"runs": arm}))
    with pytest.raises(SystemExit, match="only random runs"):
        bench.main(["--study", str(paths["study"]), "--arm", str(paths["arm"])])
