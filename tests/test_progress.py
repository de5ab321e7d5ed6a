"""The one progress line of every long step (#12 item 9)."""
from __future__ import annotations

import time

from device.progress import Progress, StepTimer, duration


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


def test_step_timer_credits_nested_steps_once_and_beats_while_a_step_runs():
    # #24 item 2: no silent stretch in a long step; each second counted for the innermost step
    lines = []
    timer = StepTimer("model-int8", lines.append, every_s=0.05)
    with timer.step("convert"):
        time.sleep(0.05)
        with timer.step("build"):
            time.sleep(0.3)
        time.sleep(0.05)
    assert set(timer.seconds) == {"convert", "build"}
    assert 0.25 <= timer.seconds["build"] < 1.0 and 0.08 <= timer.seconds["convert"] < 0.5, timer.seconds
    assert sum(timer.seconds.values()) <= timer.total()
    beats = [line for line in lines if line.startswith("  ... model-int8: ")]
    # the inner step speaks while it runs, naming itself
    assert sum("build" in line for line in beats) >= 3, lines
    assert all(" so far (" in line and line.endswith("on this item)") for line in beats)
    quiet = StepTimer("x", lines.append, every_s=0)
    with quiet.step("a"):
        pass
    assert quiet.seconds["a"] >= 0 and len(lines) == len(beats)
