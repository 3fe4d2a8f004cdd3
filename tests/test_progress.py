"""Progress lines: the rate and ETA count training steps only, evaluations left out."""

from __future__ import annotations

import pytest

from resnet.train import progress


def test_rate_after_an_evaluation_counts_only_the_steps_after_it(monkeypatch, capsys):
    clock = iter([0.0, 5.0, 106.0, 110.0])  # start, step 50, end of an evaluation at step 60, step 100
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    bar = progress.Progress(total=200, force_bar=False, log_every=50)
    bar.update(50, 0, lambda: {"img/s": 12345.6})
    assert bar.step_time() == pytest.approx(0.1)
    bar.log_row({"step": 60, "train_error": 0.5, "test_top1_error": 0.4, "test_top5_error": 0.1,
                 "images_per_sec": 1280.0})
    bar.update(100, 0, lambda: {"img/s": 1280.0})
    assert bar.step_time() == pytest.approx(4.0 / 40)  # steps 60..100 in 4 s, not 50..100
    lines = capsys.readouterr().out.splitlines()
    assert "img/s 12346" in lines[0]  # whole numbers, not 1.235e+04
    assert lines[-1].endswith("eta 0:00:10")  # 100 steps left at 0.1 s each


def test_last_logged_step_reads_what_progress_printed(tmp_path, monkeypatch, capsys):
    log = tmp_path / "train.log"
    assert progress.last_logged_step(log) is None  # no log yet
    clock = iter([0.0, 10.0, 20.0, 30.0])  # start, step 50, after its evaluation, step 100
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    bar = progress.Progress(total=1000, force_bar=False, log_every=50)
    bar.update(50, 0, lambda: {"loss": 0.5})
    bar.log_row({"step": 50, "train_error": 0.5, "images_per_sec": 640.0})  # an evaluation line in between
    bar.update(100, 0, lambda: {"loss": 0.4})
    printed = capsys.readouterr().out
    assert printed.splitlines()[-1].endswith("eta 0:02:59")  # 900 steps left at ~0.2 s each
    log.write_text("x" * 10_000 + "\n" + printed)  # only the tail is read
    assert progress.last_logged_step(log) == (100, "0:02:59")


def test_where_a_running_run_is_between_evaluations(tmp_path):
    from resnet.reproduce.suite import _where

    run = tmp_path / "resnet20-s0"
    run.mkdir()
    assert _where(run, 64000) == "resnet20-s0 starting"
    (run / "train.log").write_text("step 50/64000  epoch 1  loss 2.1  eta 2:10:00\n")
    assert _where(run, 64000) == "resnet20-s0 step 50/64000, eta 2:10:00"
    (run / "metrics.jsonl").write_text('{"step": 3200, "epoch": 7.4, "train_error": 0.1, "test_top1_error": 0.182}\n')
    assert _where(run, 64000) == "resnet20-s0 step 3200/64000 (test err 18.20% at step 3200)"  # log not past it
    with open(run / "train.log", "a") as f:
        f.write("step 3200  train err 10.00%  test err 18.20%  990 img/s\nstep 3250/64000  epoch 8  eta 1:58:02\n")
    assert _where(run, 64000) == "resnet20-s0 step 3250/64000, eta 1:58:02 (test err 18.20% at step 3200)"
