"""The shared progress reporter: plain lines off a terminal, a bar on one, nothing when disabled."""

from __future__ import annotations

import io
import re

import pytest

from episodes.progress import Progress, format_seconds, is_terminal


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _percents(text: str, desc: str) -> list[int]:
    return [int(m) for m in re.findall(rf"^{desc}: (\d+)% ", text, flags=re.M)]


def test_plain_lines_every_ten_percent() -> None:
    out = io.StringIO()
    with Progress(144, "superpixels", unit="slices", stream=out) as bar:
        for _ in range(144):
            bar.update(1)
    text = out.getvalue()
    assert "\r" not in text
    assert _percents(text, "superpixels") == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    first = text.splitlines()[0]
    assert re.fullmatch(
        r"superpixels: 10% \(15/144 slices, [\d.]+ slices/s, 00:00 elapsed(, ETA \d\d:\d\d)?\)", first
    ), first
    assert text.splitlines()[-1].startswith("superpixels: 100% (144/144 slices, ")
    assert "ETA" not in text.splitlines()[-1]


def test_big_steps_notes_custom_interval_and_resume() -> None:
    out = io.StringIO()
    bar = Progress(12, "evaluate", unit="scans", every=30, stream=out)
    for organ in ("liver", "liver", "liver", "liver", "spleen"):
        bar.update(1, note=organ)
    bar.set_done(12, note="spleen")  # a jump over several thresholds gives one line
    bar.set_done(12)  # nothing new: no line
    lines = out.getvalue().splitlines()
    assert _percents(out.getvalue(), "evaluate") == [33, 100]
    assert lines[0].startswith("evaluate: 33% (4/12 scans, liver, ")
    assert lines[-1].startswith("evaluate: 100% (12/12 scans, spleen, ")
    # resumed at 50%: lines from 60% on, the rate counts this run's units only
    out = io.StringIO()
    bar = Progress(10, "train", unit="steps", initial=5, stream=out)
    for step in range(6, 11):
        bar.set_done(step)
    assert _percents(out.getvalue(), "train") == [60, 70, 80, 90, 100]


def test_disabled_or_empty_writes_nothing() -> None:
    for bar in (
        Progress(10, "x", enabled=False, stream=(out := io.StringIO())),
        Progress(0, "x", stream=out),
    ):
        bar.update(5)
        bar.set_done(10)
        bar.close()
    assert out.getvalue() == ""
    term = _Terminal()
    Progress(10, "x", enabled=False, stream=term).update(10)
    assert term.getvalue() == ""
    with pytest.raises(ValueError, match="every"):
        Progress(10, "x", every=0)


def test_terminal_gets_a_bar() -> None:
    term = _Terminal()
    assert is_terminal(term) and not is_terminal(io.StringIO())
    with Progress(4, "superpixels", unit="slices", stream=term) as bar:
        bar.update(4, note="done")
    assert "\r" in term.getvalue() and "4/4" in term.getvalue()
    assert format_seconds(65) == "01:05" and format_seconds(3725) == "1:02:05"
