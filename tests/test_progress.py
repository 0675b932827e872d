"""Progress of long jobs in their logs : a line at least every $CLDSGM_PROGRESS_EVERY seconds when
the output is a file (a bar only on a terminal), with the count, the rate and the time left."""

import io
import re

import pytest

from cldsgm.shards import ShardPlan, fill_shards
from cldsgm.training import train
from cldsgm.utils.progress import EVERY_ENV, Progress, format_seconds, line_interval

from conftest import toy_config

LINE = re.compile(r"^(?P<desc>[\w .-]+): (?P<done>\d+)/(?P<total>\d+) (?P<unit>\w+) \((?P<pct>\d+)%\), "
                  r"(?P<rate>[\d.e+]+) \w+/s, ETA (?P<eta>[\dhms?]+), elapsed [\dhms]+(?P<values>.*)$")


class _Clock:
    """time.monotonic for cldsgm.utils.progress, advanced by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_line_per_interval_with_count_rate_and_time_left(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr("cldsgm.utils.progress.time.monotonic", clock)
    out = io.StringIO()  # not a terminal: lines, no bar
    bar = Progress("train", 100, initial=20, unit="it", every=5.0, stream=out)
    for _ in range(10):  # 10 steps of 1 s: a line after 5 s and after 10 s
        clock.now += 1.0
        bar.update(1)
    bar.set_values(loss=0.123456)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines  # at 5 s, at 10 s, and the closing line
    first = LINE.match(lines[0]).groupdict()
    assert (first["done"], first["total"], first["pct"]) == ("25", "100", "25")
    assert float(first["rate"]) == pytest.approx(1.0) and first["eta"] == "1m15s"  # 75 steps left at 1 it/s
    assert LINE.match(lines[-1])["values"] == ", loss 0.1235"


def test_nothing_when_disabled_and_no_line_for_no_work():
    out = io.StringIO()
    Progress("sample", 10, enabled=False, stream=out, every=1e-9).update(5)
    idle = Progress("sample", 10, stream=out)
    idle.close()
    assert out.getvalue() == ""


@pytest.mark.parametrize("raw", ["0", "-3", "soon", "nan"])
def test_a_bad_interval_is_refused_naming_the_variable(monkeypatch, raw):
    monkeypatch.setenv(EVERY_ENV, raw)
    with pytest.raises(ValueError, match=EVERY_ENV):
        line_interval()


def test_format_seconds():
    assert [format_seconds(s) for s in (0, 42.4, 185, 3720)] == ["0s", "42s", "3m05s", "1h02m"]


def test_training_logs_step_loss_rate_and_eta_into_a_file(diamond_data, tmp_path, monkeypatch):
    monkeypatch.setenv(EVERY_ENV, "0.05")
    log = tmp_path / "train.log"
    with open(log, "w") as stream:
        monkeypatch.setattr("sys.stderr", stream)
        train(toy_config(diamond_data, train={"steps": 300, "batch_size": 64, "checkpoint_every": 300,
                                              "log_every": 10}), tmp_path / "run", progress=True)
    lines = [LINE.match(line) for line in log.read_text().splitlines() if line.startswith("train:")]
    assert len(lines) >= 3 and all(lines), log.read_text()[-2000:]
    steps = [int(m["done"]) for m in lines]
    assert steps == sorted(steps) and steps[-1] == 300 and lines[-1]["total"] == "300"
    assert all(m["values"].startswith(", loss ") for m in lines[1:])  # the loss once the first one is read


def test_a_line_per_shard(tmp_path, monkeypatch):
    import numpy as np

    monkeypatch.setenv(EVERY_ENV, "3600")  # no line from the interval: only the shards'
    out = io.StringIO()
    monkeypatch.setattr("sys.stderr", out)

    def make_shard(a, b, bar):
        bar.update(b - a)
        return np.zeros((b - a, 2), np.float32), 1.0

    fill_shards(tmp_path / "set", {"what": "test"}, "points", [2], make_shard, ShardPlan(30, 0, 30, 10, 0, 1))
    lines = out.getvalue().splitlines()
    assert [LINE.match(line)["done"] for line in lines] == ["10", "20", "30"]  # one per shard, no repeat at the close
    assert lines[0].startswith("points set: ")
