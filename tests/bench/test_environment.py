"""A benchmark's Environment line says how busy the machine was: the CPUs that other
processes kept busy during the run, from /proc/stat less this process's own CPU time."""

import pytest

from extmem.bench import timing


def test_other_processes_cpu_is_the_machine_busy_time_less_our_own(monkeypatch):
    # machine busy seconds, our CPU seconds, wall clock: 2 s of wall time in which the machine
    # was busy 3 CPU-seconds, 1 of them ours -> others kept 1.0 CPU busy
    readings = iter([[100.0, 10.0, 50.0], [103.0, 11.0, 52.0]])
    monkeypatch.setattr(timing, "cpu_seconds", lambda: next(readings))
    env = timing.environment()
    timing.finish_environment(env)
    assert env["other_cpus_busy"] == pytest.approx(1.0)
    assert "cpu_seconds_start" not in env  # the raw reading is not reported
    assert env["load_average_end"] is None or len(env["load_average_end"]) == 3
    assert f"other processes kept 1.0 of {env['cpu_count']} CPUs busy during the run" in \
        timing.load_text(env)


def test_without_proc_stat_the_line_leaves_the_figure_out(monkeypatch):
    monkeypatch.setattr(timing, "cpu_seconds", lambda: None)
    env = timing.environment()
    timing.finish_environment(env)
    assert "other_cpus_busy" not in env
    assert timing.load_text(env).endswith(" at end")


def test_a_real_reading_is_seconds_and_a_clock():
    reading = timing.cpu_seconds()
    if reading is None:
        pytest.skip("no /proc/stat here")
    busy, own, clock = reading
    assert busy > 0 and own > 0 and clock > 0
