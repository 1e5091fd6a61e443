"""Mutation testing of the modules where a wrong number is silent (docs/development.md "Mutation testing").

Runs ``mutmut run`` with the ``[tool.mutmut]`` settings of pyproject.toml (which files are mutated, which
test files run), then prints the score of each mutated module: mutants killed (a test failed, or the
mutant timed out) out of all mutants, and the survivors by name. Run it from the repository root::

    python tools/mutation.py                 # run (reuses earlier verdicts in mutants/), then report
    python tools/mutation.py --report        # report only, from mutants/
    python tools/mutation.py --fresh         # delete mutants/ first: every mutant is tested again
    python tools/mutation.py "fewshot.evaluation.metrics.*"   # (re)test these mutants only

``mutmut show NAME`` prints a mutant's diff.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: mutmut's exit codes of a tested mutant (mutmut.stats.status_by_exit_code).
KILLED = {1, 3}
TIMEOUT = {36, -24, 24, 152, 255}
SURVIVED = {0}
NO_TESTS = {5, 33}


def _status(code: int | None) -> str:
    if code is None:
        return "not checked"
    if code in KILLED:
        return "killed"
    if code in TIMEOUT:
        return "timeout"
    if code in SURVIVED:
        return "survived"
    if code in NO_TESTS:
        return "no tests"
    return "other"


def report(root: Path = ROOT) -> tuple[list[tuple[str, Counter[str]]], list[str]]:
    """Per-module status counts and the names of the surviving (or untested) mutants, from mutants/*.meta."""
    rows: list[tuple[str, Counter[str]]] = []
    survivors: list[str] = []
    for meta in sorted((root / "mutants").rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        module = str(meta.relative_to(root / "mutants")).removesuffix(".meta")
        counts = Counter(_status(c) for c in codes.values())
        rows.append((module, counts))
        survivors += sorted(k for k, c in codes.items() if _status(c) in ("survived", "no tests", "other"))
    return rows, survivors


def format_report(rows: list[tuple[str, Counter[str]]], survivors: list[str]) -> str:
    lines = [
        "| module | killed / total | score | survived | no tests | timeout |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    all_killed = all_total = 0
    for module, c in rows:
        total = sum(c.values())
        killed = c["killed"] + c["timeout"]
        all_killed += killed
        all_total += total
        lines.append(
            f"| `{module}` | {killed} / {total} | {100 * killed / max(total, 1):.1f} % | {c['survived']} | "
            f"{c['no tests']} | {c['timeout']} |"
        )
        if c["not checked"] or c["other"]:
            lines[-1] += f" ({c['not checked']} not checked, {c['other']} other)"
    lines.append(f"| all | {all_killed} / {all_total} | {100 * all_killed / max(all_total, 1):.1f} % | | | |")
    lines += ["", f"{len(survivors)} survivors:"] + [f"  {s}" for s in survivors]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mutants", nargs="*", help="mutant name globs to (re)test (default: all untested)")
    parser.add_argument("--report", action="store_true", help="only print the scores of the last run")
    parser.add_argument("--fresh", action="store_true", help="delete mutants/ first")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2, help="parallel mutants")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    if not args.report:
        if args.fresh:
            shutil.rmtree(ROOT / "mutants", ignore_errors=True)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the mutated copy must be imported
        env.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
        mutmut = shutil.which("mutmut", path=str(Path(sys.executable).parent)) or "mutmut"
        cmd = [mutmut, "run", "--max-children", str(args.max_children), *args.mutants]
        (ROOT / "mutants").mkdir(exist_ok=True)
        with open(ROOT / "mutants" / "run.log", "w") as log:
            rc = subprocess.call(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        if rc != 0:
            print(f"mutmut run exited with {rc}: see mutants/run.log", file=sys.stderr)
            return rc
    rows, survivors = report()
    if not rows:
        print("no results in mutants/: run without --report first", file=sys.stderr)
        return 1
    print(format_report(rows, survivors))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
