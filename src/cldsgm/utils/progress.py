"""Progress of a long job: a tqdm bar on a terminal, else a log line every few seconds.

A job of the workflow writes to a log file, where a tqdm bar is one line rewritten in place (or nothing at all),
so that a multi-day training's log stayed empty until it ended. `Progress` keeps the bar for a terminal and,
when the output is a file, writes a plain line at most every `every` seconds (and whenever `line()` is called,
e.g. after each shard): what is done of the total, the rate, the time left, and the latest values (the loss).
"""

from __future__ import annotations

import os
import sys
import time

__all__ = ["DEFAULT_EVERY_S", "EVERY_ENV", "Progress", "format_seconds", "line_interval"]

DEFAULT_EVERY_S = 30.0  # a log line at least this often: a job that is alive says so twice a minute
EVERY_ENV = "CLDSGM_PROGRESS_EVERY"  # seconds between lines, for every job of a run (e.g. 5 to watch a short one)


def line_interval() -> float:
    """Seconds between progress lines: $CLDSGM_PROGRESS_EVERY, else 30; a value that is not a positive number
    raises ValueError naming the variable."""
    raw = os.environ.get(EVERY_ENV)
    if raw is None or raw == "":
        return DEFAULT_EVERY_S
    try:
        every = float(raw)
    except ValueError:
        every = -1.0
    if not every > 0:  # also refuses nan
        raise ValueError(f"{EVERY_ENV}={raw!r} is not a positive number of seconds")
    return every


def format_seconds(seconds: float) -> str:
    """'1h02m', '3m05s' or '42s'."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """Counts `total` units of work from `initial`; a bar on a terminal, lines in a log, nothing when disabled.

    desc: what is counted ('train', 'sample', 'nll'); unit: its unit ('it', 'img'); every: seconds between lines
    (at least; a line is written at the first update after that; default `line_interval()`). `stream` defaults
    to standard error.
    """

    def __init__(self, desc: str, total: int, *, initial: int = 0, unit: str = "it", enabled: bool = True,
                 every: float | None = None, stream=None):
        if every is None:  # $CLDSGM_PROGRESS_EVERY is read (and checked) only by a Progress that shows something
            every = line_interval() if enabled else DEFAULT_EVERY_S
        if not every > 0:
            raise ValueError(f"the progress interval must be positive seconds, got {every}")
        self.desc, self.total, self.unit, self.every = desc, total, unit, every
        self.stream = stream if stream is not None else sys.stderr
        self.done = self.initial = initial
        self.values: dict[str, str] = {}
        self.said = (initial, {})  # what the last line showed: the close repeats nothing
        self.bar = None
        self.lines = False
        if enabled:
            if getattr(self.stream, "isatty", lambda: False)():
                from tqdm import tqdm

                self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, smoothing=0.1, file=self.stream)
            else:
                self.lines = True
        self.started = self.last_line = time.monotonic()

    def update(self, n: int = 1) -> None:
        """n more units done; a line if `every` seconds passed since the last one."""
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.lines and time.monotonic() - self.last_line >= self.every:
            self.line()

    def set_values(self, **values) -> None:
        """Values shown with the count from now on (e.g. loss=0.123), formatted with 4 significant digits."""
        self.values.update({k: f"{v:.4g}" if isinstance(v, float) else str(v) for k, v in values.items()})
        if self.bar is not None:
            self.bar.set_postfix(self.values)

    def line(self) -> None:
        """Write one line now (in line mode): done / total, percentage, rate, time left, values."""
        if not self.lines:
            return
        now = time.monotonic()
        elapsed = now - self.started
        rate = (self.done - self.initial) / elapsed if elapsed > 0 else 0.0
        left = f"ETA {format_seconds((self.total - self.done) / rate)}" if rate > 0 else "ETA ?"
        percent = 100.0 * self.done / self.total if self.total else 100.0
        values = "".join(f", {k} {v}" for k, v in self.values.items())
        print(f"{self.desc}: {self.done}/{self.total} {self.unit} ({percent:.0f}%), {rate:.3g} {self.unit}/s, "
              f"{left}, elapsed {format_seconds(elapsed)}{values}", file=self.stream, flush=True)
        self.last_line, self.said = now, (self.done, dict(self.values))

    def close(self) -> None:
        """The last line (in line mode, if the count or the values changed since the last line) or the bar closed."""
        if self.bar is not None:
            self.bar.close()
        elif self.lines and self.said != (self.done, self.values):
            self.line()
        self.lines = False
