"""One progress reporter for every long loop (superpixels, training, evaluation).

On a terminal it draws a tqdm bar; otherwise (CI logs, ``nohup``, notebooks) it writes one plain
line each time another ``every`` percent is done, e.g.
``superpixels: 40% (58/144 slices, 12.1 slices/s, 00:05 elapsed, ETA 00:07)``, and never a ``\\r``;
disabled, it writes nothing.
"""

from __future__ import annotations

import math
import sys
import time
from typing import IO, Any

__all__ = ["Progress", "format_seconds", "is_terminal"]


def is_terminal(stream: IO[str] | None = None) -> bool:
    """Whether ``stream`` (default ``sys.stderr``) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def format_seconds(seconds: float) -> str:
    """``MM:SS``, or ``H:MM:SS`` from one hour on."""
    s = max(0, round(seconds))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m:02d}:{s % 60:02d}"


class Progress:
    """Progress of ``total`` units of work, reported on ``stream`` (default ``sys.stderr``).

    Args:
        total: units of the whole job (the bar ends at ``total``).
        desc: name at the start of each line (``"superpixels"``).
        unit: plural unit name (``"slices"``).
        enabled: ``False``: report nothing.
        every: percent between two plain lines (the line at 100 % is always written).
        initial: units already done before this run (a resumed training); rates and ETA count
            only the units done here.
        tty: force the bar (``True``) or the plain lines (``False``); default: ``stream``'s
            :func:`is_terminal`.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        *,
        unit: str = "items",
        enabled: bool = True,
        every: float = 10.0,
        initial: int = 0,
        stream: IO[str] | None = None,
        tty: bool | None = None,
    ) -> None:
        if every <= 0:
            raise ValueError(f"every must be > 0 percent, got {every}")
        self.total, self.desc, self.unit, self.every = int(total), desc, unit, float(every)
        self.enabled = enabled and self.total > 0
        self.done = self.initial = int(initial)
        self.stream = sys.stderr if stream is None else stream
        self._t0 = time.perf_counter()
        self._next = (math.floor(self._percent() / self.every) + 1) * self.every
        self._bar: Any = None
        if self.enabled and (is_terminal(self.stream) if tty is None else tty):
            try:
                from tqdm import tqdm
            except ImportError:  # plain lines instead
                pass
            else:
                self._bar = tqdm(
                    total=self.total,
                    initial=self.initial,
                    desc=desc,
                    unit=unit,
                    file=self.stream,
                    dynamic_ncols=True,
                )

    def _percent(self) -> float:
        return 100.0 * self.done / self.total if self.total > 0 else 100.0

    def update(self, n: int = 1, note: str | None = None) -> None:
        """``n`` more units done; ``note`` (e.g. ``"liver"`` or ``"loss 0.50"``) goes into the line/bar."""
        self.set_done(self.done + n, note)

    def set_done(self, done: int, note: str | None = None) -> None:
        """``done`` units done in all (never decreases)."""
        n = min(int(done), self.total) - self.done
        if n <= 0 or not self.enabled:
            return
        self.done += n
        if self._bar is not None:
            if note:
                self._bar.set_postfix_str(note, refresh=False)
            self._bar.update(n)
        elif self._percent() >= self._next or self.done == self.total:
            self._next = (math.floor(self._percent() / self.every) + 1) * self.every
            print(self.line(note), file=self.stream, flush=True)

    def line(self, note: str | None = None) -> str:
        """The plain progress line of the current state."""
        elapsed = time.perf_counter() - self._t0
        rate = (self.done - self.initial) / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.done}/{self.total} {self.unit}", *([note] if note else [])]
        parts += [f"{rate:.1f} {self.unit}/s", f"{format_seconds(elapsed)} elapsed"]
        if self.done < self.total and rate > 0:
            parts.append(f"ETA {format_seconds((self.total - self.done) / rate)}")
        return f"{self.desc}: {math.floor(self._percent()):.0f}% ({', '.join(parts)})"

    def close(self) -> None:
        """Close the bar (plain lines need no closing)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
