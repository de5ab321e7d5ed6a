"""The one progress line of every long step (#12 item 9)."""
from __future__ import annotations

from device.progress import Progress, duration


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_done_lines_count_rate_and_eta():
    clock, lines = Clock(), []
    p = Progress(4, "runs", lines.append, clock=clock)
    p.started("a: converting")
    clock.now += 30
    p.done("a", "val acc 80.0%")
    clock.now += 30
    p.done("b")
    assert lines == ["[1/4] a: converting ...",
                     "[1/4] a: val acc 80.0%; 2.0 runs/min, elapsed 30s, ETA 1m30s",
                     "[2/4] b; 2.0 runs/min, elapsed 1m00s, ETA 1m00s"]


def test_update_is_rate_limited_but_always_reports_the_end():
    clock, lines = Clock(), []
    p = Progress(480, "images", lines.append, every_s=10, label="fetch", clock=clock)
    for i in range(1, 481):
        clock.now += 0.125
        p.update(i, "ok")
    assert [line.split(" ")[1] for line in lines] == ["80/480", "160/480", "240/480", "320/480", "400/480", "480/480"]
    assert lines[-1] == "fetch: 480/480 (100%) ok; 8.0 images/s, elapsed 1m00s, ETA 0s"


def test_a_resumed_step_leaves_earlier_items_out_of_the_rate():
    clock = Clock()
    p = Progress(8, "epochs", lambda _: None, already=6, clock=clock)
    clock.now += 20
    assert p.advance() == "3.0 epochs/min, elapsed 20s, ETA 20s"
    assert Progress(3, "jobs", lambda _: None, clock=clock).timing().startswith("? jobs/s")


def test_duration():
    assert [duration(s) for s in (0, 59.4, 61, 3725, float("nan"))] == ["0s", "59s", "1m01s", "1h02m", "?"]
