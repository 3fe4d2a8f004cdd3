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
