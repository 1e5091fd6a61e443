"""The benchmark scripts' tables and the k-shot benchmark end to end on a tiny phantom run."""

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

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _scores(base: float) -> dict[str, dict[str, float]]:
    organs = ("liver", "right_kidney", "left_kidney", "spleen")
    one = {o: base for o in organs} | {"mean": base}
    return {"dice": one, "precision": one, "recall": one}


def _record(fold: int, dice: float) -> dict[str, Any]:
    sc = _scores(dice)
    return {
        "dataset": "chaos-mr", "setting": 1, "fold": fold, "config_name": "cpu_chaos_30min",
        "model": {"backbone": "cbr-small", "truncate": "block3", "init": "random", "head": "alpnet", "size": 128},
        **sc, "postprocess": {"none": sc, "lcc": _scores(dice + 0.02)}, "resolution": "native labels (256x256 px)",
        "commit": "abc123", "train": {"steps": 10, "stopped_by_time_limit": False, "wall_seconds": 60.0,
                                      "steps_per_s": 1.0},
        "eval": {"scans_per_s": 1.0}, "total_wall_seconds": 90.0,
        "peak_memory_mb": {"cpu_rss_self_mb": 100.0, "cpu_rss_children_mb": 50.0},
    }


def test_accuracy_report_has_fold_rows_mean_std_lcc_and_provenance() -> None:
    bench = _load("bench_accuracy")
    text = bench.markdown_report([_record(0, 0.60), _record(1, 0.70)])
    assert "| **ours, folds 0,1: mean ± std** | 65.00 ± 7.07 |" in text
    assert "p > " not in text  # the argmax is not labelled
    assert ", p > 0.8 |" in bench.markdown_report([_record(0, 0.60) | {"fg_threshold": 0.8}])
    assert "slices" not in text  # tiled input (and records from before slice_input) are not labelled
    adjacent = _record(0, 0.60)
    adjacent["model"] = adjacent["model"] | {"slice_input": "adjacent"}
    assert "alpnet, 128 px, adjacent slices, 10 steps |" in bench.markdown_report([adjacent])
    assert "training" not in text  # float32 (and records without a config) are not labelled
    bf16 = _record(0, 0.60) | {"config": {"train": {"precision": "bf16-mixed"}}}
    assert "128 px, 10 steps, bf16-mixed training |" in bench.markdown_report([bf16])
    assert "Host: not recorded." in text  # records from before hosts were recorded: not this machine's
    assert "| **ours, folds 0,1: mean ± std + LCC post-processing** | 67.00 ± 7.07 |" in text
    assert "SSL-ALPNet (ECCV'20), published 5-fold (no post-processing) | 76.10 |" in text
    assert "Config: cpu_chaos_30min; commit abc123." in text and "native labels (256x256 px)" in text


def test_accuracy_report_names_overrides_and_the_recorded_hosts() -> None:
    """Merged results from two machines name both (not the machine that merges), and --set overrides
    appear beside the config name."""
    bench = _load("bench_accuracy")
    cpu = {"node": "laptop", "cpus": 2, "cpu": "Xeon", "cpu_capability": "AVX512", "cpu_bf16": "native", "gpu": None}
    gpu = cpu | {"node": "box", "cpus": 16, "gpu": "NVIDIA H200"}
    a = _record(0, 0.60) | {"host": cpu, "load_average_end": "1.00 1.00 1.00"}
    b = _record(1, 0.70) | {"host": gpu, "overrides": {"data.size": 256, "model.backbone.name": "resnet50"}}
    text = bench.markdown_report([a, b])
    assert "Host: laptop, 2 CPUs (Xeon, AVX512, hardware bf16); box, 16 CPUs (Xeon, AVX512, hardware bf16), GPU NVIDIA H200" in text
    assert "load average at each fold's end: fold 0 1.00 1.00 1.00." in text
    assert "Config: cpu_chaos_30min; cpu_chaos_30min with data.size=256, model.backbone.name=resnet50; commit abc123." in text
    h = bench.host()
    assert h["cpus"] >= 1 and set(h) == {"node", "cpus", "cpu", "cpu_capability", "cpu_bf16", "gpu"}


def test_accuracy_merge_combines_fold_records(tmp_path: Path) -> None:
    bench = _load("bench_accuracy")
    for fold, dice in ((1, 0.70), (0, 0.60)):
        part = tmp_path / f"run{fold}"
        part.mkdir()
        (part / "results.json").write_text(json.dumps({"argv": [], "folds": [_record(fold, dice)]}))
    out = tmp_path / "merged"
    parts = [str(tmp_path / "run1" / "results.json"), str(tmp_path / "run0" / "results.json")]
    assert bench.main(["--merge", *parts, "--out", str(out)]) == 0
    merged = json.loads((out / "results.json").read_text())["folds"]
    assert [r["fold"] for r in merged] == [0, 1]
    assert "| **ours, folds 0,1: mean ± std** | 65.00 ± 7.07 |" in (out / "results.md").read_text()
    with pytest.raises(ValueError, match="appears twice"):
        bench.main(["--merge", parts[0], parts[0], "--out", str(out)])


def _check_reuse_rule(run: Path) -> None:
    """bench_accuracy --reuse: a finished checkpoint is reused for the same training config, whatever its
    inference-only keys; another training setting or more steps means retraining."""
    from fewshot.config import load_config

    acc = _load("bench_accuracy")
    ckpt = run / "checkpoints" / "last.ckpt"
    trained = load_config(run / "config.yaml")
    assert acc._reusable(ckpt, trained)
    assert acc._reusable(ckpt, load_config(run / "config.yaml", {"model.fg_threshold": 0.8}))
    assert acc._reusable(ckpt, load_config(run / "config.yaml", {"model.head.shot_fusion": "scores"}))  # 1-shot
    assert acc._reusable(ckpt, load_config(run / "config.yaml", {"model.tta": "flip"}))
    assert acc._reusable(ckpt, load_config(run / "config.yaml", {"model.intensity_prior": 0.5}))
    assert acc._reusable(ckpt, load_config(run / "config.yaml", {"out_dir": str(run.parent / "moved")}))  # a copied run
    assert not acc._reusable(ckpt, load_config(run / "config.yaml", {"optim.lr": 0.5}))
    assert not acc._reusable(ckpt, load_config(run / "config.yaml", {"train.steps": 3}))
    assert not acc._reusable(run / "missing.ckpt", trained)


def test_shot_benchmark_checks_its_lists_before_loading(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
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
    assert bench.main(["--checkpoint", ckpt, "--shots", "1", "--thresholds", "0.5,0.9", "--out", str(out2)]) == 0
    rows = json.loads((out2 / "shots.json").read_text())["rows"]
    assert [r["threshold"] for r in rows] == [0.5, 0.9]
    assert rows[1]["none"]["recall"]["mean"] <= rows[0]["none"]["recall"]["mean"]
    assert "| 1 | - | 0.9 | none |" in (out2 / "shots.md").read_text()
    assert yaml.safe_load((out2 / "k1_prototypes_t0.9" / "config.yaml").read_text())["model"]["fg_threshold"] == 0.9
    with pytest.raises(ValueError, match="fg_threshold"):
        bench.main(["--checkpoint", ckpt, "--shots", "1", "--thresholds", "0.5,1.5", "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad" / "k1_prototypes_t0.5").exists()  # refused before any evaluation
    # ALP test window and cell threshold: each row evaluated (and its saved config) with its own setting
    out3 = tmp_path / "alp"
    argv = ["--checkpoint", ckpt, "--shots", "1", "--windows", "1,2", "--alp-thresholds", "0.5", "--out", str(out3)]
    assert bench.main(argv) == 0
    rows = json.loads((out3 / "shots.json").read_text())["rows"]
    assert [(r["window"], r["alp_threshold"]) for r in rows] == [(1, 0.5), (2, 0.5)]
    saved = yaml.safe_load((out3 / "k1_prototypes_w1" / "config.yaml").read_text())
    assert saved["model"]["head"]["window_test"] == 1 and saved["model"]["head"]["threshold"] == 0.5
    assert "| 1 | - | 0.5 | 2 | 0.5 | none |" in (out3 / "shots.md").read_text()


def test_setting2_trains_one_model_per_label_group() -> None:
    """SSL-ALPNet's setting 2: one training run excluding (and testing) the kidneys, one for liver + spleen."""
    from fewshot.config import load_config
    from fewshot.configs import config_path

    bench = _load("bench_accuracy")
    s1 = load_config(config_path("cpu_chaos_30min"))
    s2 = load_config(config_path("cpu_chaos_30min"), {"data.protocol.setting": 2})
    assert bench.setting_groups(s1) == [("liver", "right_kidney", "left_kidney", "spleen")]
    assert bench.setting_groups(s2) == [("right_kidney", "left_kidney"), ("liver", "spleen")]
    kidneys = load_config(config_path("cpu_chaos_30min"), {"data.protocol.setting": 2, "data.protocol.organs": ["left_kidney"]})
    assert bench.setting_groups(kidneys) == [("left_kidney",)]
    assert set(kidneys.data.train_exclusions()) == {"right_kidney", "left_kidney"}


def _group_record(fold: int, organs: tuple[str, ...], dice: float) -> dict[str, Any]:
    rec = _record(fold, dice) | {"setting": 2, "checkpoint": f"ckpt_{organs[0]}", "reused": False}
    for key in ("dice", "precision", "recall"):
        rec[key] = {o: dice for o in organs} | {"mean": dice}
    rec["postprocess"] = {"none": {k: rec[k] for k in ("dice", "precision", "recall")}}
    rec["train"] |= {"fit_seconds": 50.0, "genesis_seconds": 0.0, "steps": 10}
    rec["eval"] |= {"seconds": 2.0, "wall_seconds": 3.0, "scans": 4}
    return rec


def test_combine_groups_joins_organs_and_recomputes_means() -> None:
    bench = _load("bench_accuracy")
    a = _group_record(0, ("right_kidney", "left_kidney"), 0.8)
    b = _group_record(0, ("liver", "spleen"), 0.4)
    rec = bench.combine_groups([a, b])
    assert rec["dice"] == pytest.approx({"right_kidney": 0.8, "left_kidney": 0.8, "liver": 0.4, "spleen": 0.4, "mean": 0.6})
    assert rec["postprocess"]["none"]["recall"]["mean"] == pytest.approx(0.6)
    assert rec["train"]["fit_seconds"] == 100.0 and rec["train"]["steps_per_s"] == pytest.approx(0.2)
    assert rec["eval"]["scans"] == 8 and rec["eval"]["scans_per_s"] == pytest.approx(2.0)
    assert rec["checkpoint"] == ["ckpt_right_kidney", "ckpt_liver"] and rec["groups"] == [a, b]
    assert bench.combine_groups([a]) == a
    assert "| ours fold 0: " in bench.markdown_report([rec])
    assert bench._group_record(rec, ("spleen", "liver")) == b and bench._group_record(None, ("liver",)) is None


def test_setting2_main_runs_each_group_and_reports_the_fold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fewshot.pipeline

    bench = _load("bench_accuracy")
    calls: list[tuple[int, tuple[str, ...] | None]] = []

    def fake_run_fold(dataset: str, budget: str, setting: int, fold: int, out: Path, **kw: Any) -> dict[str, Any]:
        organs = kw["organs"]
        calls.append((fold, organs))
        return _group_record(fold, tuple(organs), 0.8 if "left_kidney" in organs else 0.4)

    monkeypatch.setattr(fewshot.pipeline, "load_volumes", lambda data: [])
    monkeypatch.setattr(bench, "run_fold", fake_run_fold)
    assert bench.main(["--dataset", "chaos-mr", "--setting", "2", "--folds", "0,1", "--out", str(tmp_path)]) == 0
    assert calls == [(f, g) for f in (0, 1) for g in (("right_kidney", "left_kidney"), ("liver", "spleen"))]
    folds = json.loads((tmp_path / "results.json").read_text())["folds"]
    assert [len(r["groups"]) for r in folds] == [2, 2] and folds[0]["dice"]["mean"] == pytest.approx(0.6)
    assert "| **ours, folds 0,1: mean ± std** | 40.00 ± 0.00 | 80.00 ± 0.00 |" in (tmp_path / "results.md").read_text()


TINY = [
    "data.loader_args={n_subjects: 6, shape: [12, 64, 64]}", "data.size=64", "data.protocol.organs=[liver]",
    "model.backbone.name=cbr-tiny", "model.backbone.truncate=block2", "model.head.feature_dim=8",
    "train.num_workers=0", "train.progress_bar=false", "train.accelerator=cpu",
]  # fmt: skip


def test_run_fold_adds_kshot_scores_and_table(tmp_path: Path) -> None:
    """bench_accuracy --shots: every checkpoint is also evaluated with k > 1 support slices per chunk; a k that
    the support scan cannot give is recorded with its reason; --reuse evaluates k-shot again."""
    from fewshot.config import load_config, parse_overrides
    from fewshot.configs import config_path
    from fewshot.pipeline import load_volumes

    bench = _load("bench_accuracy")
    over = parse_overrides(TINY)
    volumes = load_volumes(load_config(config_path("demo_phantom"), over).data)

    def fold(**kw: Any) -> dict[str, Any]:
        return bench.run_fold(
            "phantom-ct", "cpu", 1, 0, tmp_path, volumes=volumes, steps=2, overrides=over, config="demo_phantom", **kw
        )

    rec = fold(shots=(1, 2, 4, 50))  # the support scan's liver covers 9 slices: 4-shot x 3 chunks share some
    assert set(rec["kshot"]) == {"2", "4", "50"}
    assert "needs 150 distinct support slices" in rec["kshot"]["50"]["error"]
    two, four = rec["kshot"]["2"], rec["kshot"]["4"]
    assert set(two) == {"none", "lcc"} and 0.0 <= two["none"]["dice"]["liver"] <= 1.0
    assert four["shared"].endswith("covers only 9 slice(s) (3 per chunk)") and 0.0 <= four["none"]["dice"]["liver"] <= 1.0
    plan = json.loads((tmp_path / "phantom-ct_setting1_fold0" / "eval_4shot" / "plan.json").read_text())
    assert plan["protocol"]["share_support_slices"] and plan["organs"][0]["support_slices"][1][0] == 3
    assert (tmp_path / "phantom-ct_setting1_fold0" / "eval_2shot").is_dir()
    text = "\n".join(bench.kshot_table([rec, rec | {"fold": 1, "kshot": {"2": two}}]))
    assert "| shots | folds | liver | mean | mean + LCC |" in text
    assert f"| 1 | 0,1 | {100 * rec['dice']['liver']:.2f} ± 0.00 |" in text
    assert f"| 2 | 0,1 | {100 * two['none']['dice']['liver']:.2f} ± 0.00 |" in text
    assert "| 50 | 0 |" not in text and "Not possible: 50-shot, fold 0: " in text
    assert "| 4 | 0 |" in text and "Shared support slices: 4-shot, fold 0: support subject '1'" in text
    assert "(3 per chunk); scored with neighbouring chunks sharing slices (each chunk: the 4 organ slices" in text
    m1, m2 = 100 * rec["dice"]["mean"], 100 * two["none"]["dice"]["mean"]
    assert "| shots | fold 0 | fold 1 |" in text and f"| 1 | {m1:.2f} | {m1:.2f} |" in text
    assert f"| 2 | {m2:.2f} | {m2:.2f} |" in text and "| 50 | n/a | n/a |" not in text
    assert f"| 4 | {100 * four['none']['dice']['mean']:.2f} | n/a |" in text
    again = fold(shots=(1, 2), previous=rec)
    assert again["reused"] and again["kshot"] == {"2": two}  # the same checkpoint, plan and threshold
    assert bench.kshot_table([again | {"kshot": {}}]) == []


def test_run_fold_resume_continues_training_to_more_steps(tmp_path: Path) -> None:
    """bench_accuracy --resume: a fold trained for fewer steps (or interrupted) continues from its last.ckpt; without
    it the fold trains from step 0; a changed training config is refused, not silently retrained."""
    from fewshot.config import load_config, parse_overrides
    from fewshot.configs import config_path
    from fewshot.pipeline import load_volumes

    bench = _load("bench_accuracy")
    over = parse_overrides(TINY)
    volumes = load_volumes(load_config(config_path("demo_phantom"), over).data)

    def fold(steps: int, **kw: Any) -> dict[str, Any]:
        return bench.run_fold(
            "phantom-ct", "cpu", 1, 0, tmp_path, volumes=volumes, steps=steps, config="demo_phantom", **kw
        )

    first = fold(2, overrides=over)
    assert (first["train"]["steps"], first["train"]["steps_run"], first["train"]["resumed_from"]) == (2, 2, None)
    more = fold(3, overrides=over, resume=True)
    assert (more["train"]["steps"], more["train"]["steps_run"]) == (3, 1)
    assert more["train"]["resumed_from"].endswith("last.ckpt")
    rec = _record(0, 0.6)
    report = bench.markdown_report([rec | {"train": {**rec["train"], **{k: more["train"][k] for k in more["train"]
                                                                       if k.startswith(("steps", "resumed"))}}}])
    assert "| 0 | 3 (resumed at 2) |" in report and "count the steps of its last run only" in report
    assert "resumed" not in bench.markdown_report([rec])
    done = rec | {"train": {**rec["train"], "steps_run": 0, "resumed_from": "last.ckpt"}}
    assert "| 0 | 10 (resumed at 10) | 1.0 | n/a |" in bench.markdown_report([done])  # no step ran: no speed
    assert fold(3, overrides=over)["train"]["steps_run"] == 3  # no --resume: from step 0
    with pytest.raises(ValueError, match=r"cannot resume .*the config changed"):
        fold(4, overrides={**over, "optim.lr": 0.5}, resume=True)


def test_combine_groups_joins_kshot_per_k() -> None:
    bench = _load("bench_accuracy")
    a = _group_record(0, ("right_kidney", "left_kidney"), 0.8) | {
        "kshot": {"3": {"none": _scores(0.9), "lcc": _scores(0.9)}, "5": {"error": "too few kidney slices"}}
    }
    b = _group_record(0, ("liver", "spleen"), 0.4) | {
        "kshot": {"3": {"none": _scores(0.5), "lcc": _scores(0.5)}, "5": {"none": _scores(0.5), "lcc": _scores(0.5)}}
    }
    for part, organs in ((a, ("right_kidney", "left_kidney")), (b, ("liver", "spleen"))):
        for sc in part["kshot"]["3"].values():
            for key in ("dice", "precision", "recall"):
                sc[key] = {o: sc[key][o] for o in organs} | {"mean": sc[key]["mean"]}
    kshot = bench.combine_groups([a, b])["kshot"]
    assert kshot["3"]["none"]["dice"] == pytest.approx(
        {"right_kidney": 0.9, "left_kidney": 0.9, "liver": 0.5, "spleen": 0.5, "mean": 0.7}
    )
    assert kshot["5"] == {"error": "too few kidney slices"}


def test_run_tasks_in_two_processes_matches_one_process_and_names_a_failed_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """bench_accuracy --jobs 2: folds trained side by side in spawned workers (one torch thread each, logs in
    out/logs) give the same records as one after another in this process; a failing run stops the run after the
    running ones finish and names its log."""
    import torch

    from fewshot.config import parse_overrides

    bench = _load("bench_accuracy")
    over = parse_overrides([*TINY, "train.num_workers=1"])  # a DataLoader worker inside each worker process

    def tasks(out: Path, folds: tuple[int, ...]) -> list[Any]:
        return [
            bench.FoldTask(
                label=f"fold {f}", fold_key=("phantom-ct", f), groups=1, config_name="demo_phantom",
                kwargs=dict(dataset="phantom-ct", budget="cpu", setting=1, fold=f, out=out, steps=2,
                            overrides=over, config="demo_phantom", shots=(1,)),
            )
            for f in folds
        ]  # fmt: skip

    one: list[list[dict[str, Any]]] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        bench.run_tasks(tasks(tmp_path / "one", (0, 1)), jobs=1, out=tmp_path / "one", on_fold=one.append)
    finally:
        torch.set_num_threads(threads)
    two: list[list[dict[str, Any]]] = []
    with pytest.raises(RuntimeError, match=r"fold 99 failed: .*its log: .*phantom-ct_setting1_fold99\.log"):
        bench.run_tasks(
            tasks(tmp_path / "two", (0, 1, 99)), jobs=2, out=tmp_path / "two", on_fold=two.append, threads=1,
            poll_s=0.5,
        )
    assert sorted(r[0]["fold"] for r in two) == [0, 1]
    by_fold = {r[0]["fold"]: r[0] for r in two}
    for (rec,) in one:
        assert by_fold[rec["fold"]]["dice"] == rec["dice"] and by_fold[rec["fold"]]["postprocess"] == rec["postprocess"]
    log = (tmp_path / "two" / "logs" / "phantom-ct_setting1_fold0.log").read_text()
    assert "== fold 0, 1 torch thread(s)" in log and "Dice" in log
    assert (tmp_path / "two" / "phantom-ct_setting1_fold1" / "train" / "checkpoints" / "last.ckpt").is_file()
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--jobs", "0", "--out", str(tmp_path / "bad")])
    assert exit_info.value.code == 2 and "--jobs: expected a positive integer, got 0" in capsys.readouterr().err
    assert bench.cli(["--shots", "1,0", "--out", str(tmp_path / "bad")]) == 2
    assert "bench_accuracy.py: error: --shots: every item must be >= 1, got '0'" in capsys.readouterr().err
    assert bench.cli(["--folds", "0,one", "--out", str(tmp_path / "bad")]) == 2
    assert "--folds: 'one' is not a valid int" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    ("script", "argv", "message"),
    [
        ("bench_accuracy", ["--config", "no/such/recipe.yaml"], "config 'no/such/recipe.yaml' is neither a YAML file nor a packaged config"),
        ("bench_accuracy", ["--set", "train.steps=abc"], "train.steps must be an integer, got 'abc'"),
        ("bench_accuracy", ["--set", "nosuch.key=1"], "unknown key(s) ['nosuch']"),
        ("bench_shots", ["--checkpoint", "no/such/last.ckpt"], "checkpoint no/such/last.ckpt not found"),
    ],
)
def test_benchmark_scripts_report_user_errors_in_one_line(
    script: str, argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = _load(script)
    assert bench.cli([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{script}.py: error: {message}" in err
    assert "Traceback" not in err and err.count("error:") == 1
    assert not (tmp_path / "out").exists()  # nothing trained or written


def test_ensemble_scores_the_runs_of_each_fold_as_one_model(tmp_path: Path) -> None:
    """bench_accuracy --ensemble: two runs of one fold (seeds 0 and 1) are scored as one ensemble, with the
    digits of fewshot's own ensemble evaluation, and its training cost is the two runs' together."""
    from fewshot.config import load_config, parse_overrides
    from fewshot.configs import config_path
    from fewshot.evaluation import run_evaluation
    from fewshot.pipeline import load_volumes

    bench = _load("bench_accuracy")
    runs = []
    for seed in (0, 1):
        over = parse_overrides([*TINY, f"seed={seed}"])
        volumes = load_volumes(load_config(config_path("demo_phantom"), over).data)
        rec = bench.run_fold(
            "phantom-ct", "cpu", 1, 0, tmp_path / f"seed{seed}", volumes=volumes, steps=2, overrides=over,
            config="demo_phantom",
        )
        (tmp_path / f"seed{seed}" / "results.json").write_text(json.dumps({"argv": [], "folds": [rec]}))
        runs.append(rec)
    assert runs[0]["dice"] != runs[1]["dice"]  # two different models
    parts = [str(tmp_path / f"seed{s}" / "results.json") for s in (0, 1)]
    out = tmp_path / "ens"
    assert bench.main(["--ensemble", *parts, "--out", str(out)]) == 0
    (ens,) = json.loads((out / "results.json").read_text())["folds"]
    direct = run_evaluation([r["checkpoint"] for r in runs], volumes=volumes, postprocess=("none", "lcc"))
    assert ens["dice"] == pytest.approx(dict(direct.dice))
    assert [e["seed"] for e in ens["ensemble"]] == [0, 1] and ens["checkpoint"] == [r["checkpoint"] for r in runs]
    assert ens["train"]["wall_seconds"] == pytest.approx(sum(r["train"]["wall_seconds"] for r in runs))
    report = (out / "results.md").read_text()
    assert "2 steps, ensemble of 2 (seeds 0, 1)" in report
    alone = [100 * r["dice"]["mean"] for r in runs]
    gain = 100 * ens["dice"]["mean"] - sum(alone) / 2
    assert f"| 0 | {alone[0]:.2f} | {alone[1]:.2f} | {sum(alone) / 2:.2f} | {100 * ens['dice']['mean']:.2f} | {gain:+.2f} |" in report
    assert (out / "phantom-ct_setting1_fold0" / "eval" / "results.json").is_file()
    with pytest.raises(SystemExit):
        bench.main(["--ensemble", parts[0], "--out", str(out)])
    # --set changes the ensemble's inference settings only (a trained setting would misname the models)
    prior = tmp_path / "prior"
    assert bench.main(["--ensemble", *parts, "--out", str(prior), "--set", "model.intensity_prior=2"]) == 0
    (ens_prior,) = json.loads((prior / "results.json").read_text())["folds"]
    direct = run_evaluation([r["checkpoint"] for r in runs], volumes=volumes, intensity_prior=2.0)
    assert ens_prior["intensity_prior"] == 2.0 and ens["intensity_prior"] == 0.0
    assert ens_prior["dice"]["mean"] == pytest.approx(direct.dice["mean"]) and ens_prior["dice"] != ens["dice"]
    assert ", intensity prior 2" in (prior / "results.md").read_text()
    assert "Each model alone is scored as its own run was" not in report
    assert ("here with other inference settings than the ensemble's (fg_threshold 0.5, tta none, intensity_prior 2.0): "
            "seed 0: intensity_prior 0.0; seed 1: intensity_prior 0.0.") in (prior / "results.md").read_text()
    # a member whose config stored another intensity prior (e.g. trained after the config gained it): scored with
    # the first run's settings, or --set's, and the report names the member that differs
    from fewshot.checkpoint import CHECKPOINT_KEY
    ckpt = torch.load(runs[1]["checkpoint"], map_location="cpu", weights_only=False)
    ckpt[CHECKPOINT_KEY]["config"]["model"]["intensity_prior"] = 0.5
    torch.save(ckpt, tmp_path / "later.ckpt")
    later_rec = {**runs[1], "checkpoint": str(tmp_path / "later.ckpt"),
                 "config": {**runs[1]["config"], "model": {**runs[1]["config"]["model"], "intensity_prior": 0.5}}}
    (tmp_path / "later.json").write_text(json.dumps({"argv": [], "folds": [later_rec]}))
    assert bench.main(["--ensemble", parts[0], str(tmp_path / "later.json"), "--out", str(tmp_path / "later")]) == 0
    (later_first,) = json.loads((tmp_path / "later" / "results.json").read_text())["folds"]
    assert later_first["dice"] == ens["dice"] and later_first["config"]["model"]["intensity_prior"] == 0.0
    assert "(fg_threshold 0.5, tta none, intensity_prior 0.0): seed 1: intensity_prior 0.5." in (
        tmp_path / "later" / "results.md").read_text()
    assert bench.main(["--ensemble", parts[0], str(tmp_path / "later.json"), "--out", str(tmp_path / "later2"),
                       "--set", "model.intensity_prior=2"]) == 0
    (later_ens,) = json.loads((tmp_path / "later2" / "results.json").read_text())["folds"]
    assert later_ens["dice"] == ens_prior["dice"]
    with pytest.raises(SystemExit):
        bench.main(["--ensemble", *parts, "--out", str(prior), "--set", "model.backbone.name=cbr-small"])
    # members of different backbones: the label, the member table and the config line name each kind
    over = parse_overrides([*TINY, "model.backbone.name=cbr-small"])
    rec = bench.run_fold(
        "phantom-ct", "cpu", 1, 0, tmp_path / "small", volumes=volumes, steps=3, overrides=over, config="demo_phantom",
    )
    (tmp_path / "small" / "results.json").write_text(json.dumps({"argv": [], "folds": [rec]}))
    mixed = tmp_path / "mixed"
    assert bench.main(["--ensemble", parts[0], str(tmp_path / "small" / "results.json"), "--out", str(mixed)]) == 0
    report = (mixed / "results.md").read_text()
    assert "ours fold 0: init random, " in report
    assert "ensemble of 2 (cbr-tiny/block2 2 steps: seed 0; cbr-small/block2 3 steps: seed 0)" in report
    assert "| cbr-tiny/block2 2 steps, seed 0 | cbr-small/block2 3 steps, seed 0 |" in report
    assert "| 0 | 2 + 3 | " in report
    assert "Config: demo_phantom with " in report and "model.backbone.name=cbr-small" in report
    other = tmp_path / "fold1.json"
    other.write_text(json.dumps({"argv": [], "folds": [runs[1] | {"fold": 1}]}))
    with pytest.raises(ValueError, match=r"no \(dataset, setting, fold\) is in all of"):
        bench.main(["--ensemble", parts[0], str(other), "--out", str(out)])


def test_members_train_each_config_on_each_fold_then_score_them_as_one_ensemble(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """bench_accuracy --member A --member B: each member trains as its own plain run would (same digits), into
    OUT/member<i>/ with its own results, and each fold is scored as one ensemble of the members."""
    from fewshot.config import load_config
    from fewshot.evaluation import run_evaluation
    from fewshot.pipeline import load_volumes

    bench = _load("bench_accuracy")
    sets = [x for t in TINY for x in ("--set", t)]
    base = ["--dataset", "phantom-ct", "--folds", "0", "--steps", "2", *sets]
    out = tmp_path / "members"
    assert bench.main([*base, "--member", "demo_phantom", "seed=0", "--member", "demo_phantom", "seed=1",
                       "--out", str(out)]) == 0  # fmt: skip
    (m0,), (m1,) = (json.loads((out / f"member{i}" / "results.json").read_text())["folds"] for i in (0, 1))
    assert (m0["config"]["seed"], m1["config"]["seed"]) == (0, 1) and m0["dice"] != m1["dice"]
    assert (out / "member1" / "results.md").is_file()
    plain = tmp_path / "plain"
    assert bench.main([*base, "--set", "seed=1", "--out", str(plain)]) == 0
    assert json.loads((plain / "results.json").read_text())["folds"][0]["dice"] == m1["dice"]
    (ens,) = json.loads((out / "results.json").read_text())["folds"]
    assert ens["checkpoint"] == [m0["checkpoint"], m1["checkpoint"]] and [e["seed"] for e in ens["ensemble"]] == [0, 1]
    volumes = load_volumes(load_config(m0["config"]).data)
    direct = run_evaluation([m0["checkpoint"], m1["checkpoint"]], volumes=volumes, postprocess=("none", "lcc"))
    assert ens["dice"] == pytest.approx(dict(direct.dice))
    assert "ensemble of 2 (seeds 0, 1)" in (out / "results.md").read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        bench.main([*base, "--member", "demo_phantom", "--out", str(tmp_path / "one")])
    assert exit_info.value.code == 2 and "--member: give at least 2 members" in capsys.readouterr().err
    assert bench.cli([*base, "--member", "demo_phantom", "--member", "no_such_recipe", "--out", str(tmp_path / "bad")]) == 2
    assert "config 'no_such_recipe' is neither a YAML file nor a packaged config" in capsys.readouterr().err
    assert not (tmp_path / "one").exists() and not (tmp_path / "bad").exists()


def test_members_in_setting2_are_one_ensemble_per_label_group(tmp_path: Path) -> None:
    """Setting 2 with --member: each member trains one model per label group, and each group's organs are scored
    by the ensemble of that group's models (the digits of fewshot's own ensemble evaluation); the fold joins the
    groups as a plain setting-2 run does. Records with and without label groups are refused as one ensemble."""
    from fewshot.config import load_config
    from fewshot.evaluation import run_evaluation
    from fewshot.pipeline import load_volumes

    bench = _load("bench_accuracy")
    tiny = [t for t in TINY if not t.startswith("data.protocol.organs")] + ["data.protocol.organs=[liver, left_kidney]"]
    sets = [x for t in tiny for x in ("--set", t)]
    base = ["--dataset", "phantom-ct", "--setting", "2", "--folds", "0", "--steps", "2", *sets]
    out = tmp_path / "s2"
    assert bench.main([*base, "--member", "demo_phantom", "seed=0", "--member", "demo_phantom", "seed=1",
                       "--out", str(out)]) == 0  # fmt: skip
    (m0,), (m1,) = (json.loads((out / f"member{i}" / "results.json").read_text())["folds"] for i in (0, 1))
    assert [len(m["groups"]) for m in (m0, m1)] == [2, 2] and m0["dice"] != m1["dice"]
    # each group tests its own organs, also when --set data.protocol.organs names both groups' organs
    assert [sorted(set(g["dice"]) - {"mean"}) for g in m0["groups"]] == [["left_kidney"], ["liver"]]
    (ens,) = json.loads((out / "results.json").read_text())["folds"]
    assert ens["setting"] == 2 and len(ens["groups"]) == 2
    assert [e["dice_mean"] for e in ens["ensemble"]] == [m0["dice"]["mean"], m1["dice"]["mean"]]
    volumes = load_volumes(load_config(m0["config"]).data)
    for g0, g1, ge in zip(m0["groups"], m1["groups"], ens["groups"]):
        protocol = load_config(g0["config"]).data.protocol
        direct = run_evaluation([g0["checkpoint"], g1["checkpoint"]], protocol=protocol, volumes=volumes,
                                postprocess=("none", "lcc"))  # fmt: skip
        assert set(ge["dice"]) == set(protocol.organs) | {"mean"} and ge["dice"] == pytest.approx(dict(direct.dice))
    organs = {o: d for g in ens["groups"] for o, d in g["dice"].items() if o != "mean"}
    assert set(organs) == {"liver", "left_kidney"} and ens["dice"]["mean"] == pytest.approx(sum(organs.values()) / 2)
    assert ens["train"]["wall_seconds"] == pytest.approx(m0["train"]["wall_seconds"] + m1["train"]["wall_seconds"])
    assert "ensemble of 2 (seeds 0, 1)" in (out / "results.md").read_text()
    lone = {k: v for k, v in m1.items() if k != "groups"}
    with pytest.raises(ValueError, match="cannot be one ensemble"):
        bench.ensemble_fold([m0, lone], tmp_path / "bad", volumes=volumes)


def test_member_genesis_steps_pretrain_that_member_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--member CONFIG genesis_steps=N: that member's encoder starts from N Models Genesis steps on the fold's
    training scans (as a plain run with --genesis-steps N), the other member from random init; the report names
    each member's init and counts the pretraining in train min. A bad value is a one-line error."""
    bench = _load("bench_accuracy")
    sets = [x for t in TINY for x in ("--set", t)]
    base = ["--dataset", "phantom-ct", "--folds", "0", "--steps", "2", *sets]
    out = tmp_path / "members"
    assert bench.main([*base, "--member", "demo_phantom", "genesis_steps=2", "--member", "demo_phantom",
                       "--out", str(out)]) == 0  # fmt: skip
    (m0,), (m1,) = (json.loads((out / f"member{i}" / "results.json").read_text())["folds"] for i in (0, 1))
    assert (m0["model"]["init"], m0["train"]["genesis_steps"], m1["model"]["init"], m1["train"]["genesis_steps"]) == (
        "genesis", 2, "random", 0
    )
    fold_dirs = [out / f"member{i}" / "phantom-ct_setting1_fold0" for i in (0, 1)]
    assert (fold_dirs[0] / "genesis.pt").is_file() and not (fold_dirs[1] / "genesis.pt").exists()
    assert m0["train"]["genesis_seconds"] > 0
    plain = tmp_path / "plain"
    assert bench.main([*base, "--genesis-steps", "2", "--out", str(plain)]) == 0
    assert json.loads((plain / "results.json").read_text())["folds"][0]["dice"] == m0["dice"]
    (ens,) = json.loads((out / "results.json").read_text())["folds"]
    assert [e["genesis_steps"] for e in ens["ensemble"]] == [2, 0]
    assert ens["train"]["genesis_seconds"] == pytest.approx(m0["train"]["genesis_seconds"])
    report = (out / "results.md").read_text()
    assert "ensemble of 2 (cbr-tiny/block2 2 steps after 2 Genesis steps: seed 0; cbr-tiny/block2 2 steps: seed 0)" in report
    assert "ours fold 0: init" not in report  # members of different inits: the row names no one init for both
    assert "Train min includes the Models Genesis pretraining" in report
    capsys.readouterr()
    bad = [*base, "--member", "demo_phantom", "genesis_steps=many", "--member", "demo_phantom"]
    assert bench.cli([*bad, "--out", str(tmp_path / "bad")]) == 2
    assert "--member genesis_steps='many': give a whole number of steps" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
