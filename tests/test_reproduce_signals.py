"""`resnet reproduce --jobs 2` under Ctrl-C and SIGTERM: every process ends within seconds, each run keeps a
checkpoint, the exit status is 128 + signal, and a run resumes (no stale lock). Before the fix the parent and
its ProcessPoolExecutor workers deadlocked on a multiprocessing lock (SIGINT) or the workers were orphaned
(SIGTERM). Also: damaged suite files and bad values are one line, exit 2, before anything is written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import alive
from resnet import checkpoint
from resnet.cli import main
from resnet.train import rundir

RUNS = ("plain20-s0", "resnet20-s0")
STOP_SECONDS = 20  # the most a stop may take once the signal is sent (a step, a checkpoint, the exit)


def reproduce_argv(data: Path, out: Path, budget: float = 0.002) -> list[str]:
    return ["reproduce", "table6", "--data", "fashion-mnist", "--data-dir", str(data), "--depths", "20", "--budget",
            str(budget), "--jobs", "2", "--device", "cpu", "--out", str(out), "--no-progress"]


def resnet(argv: list[str]) -> subprocess.Popen:
    """`python -m resnet ARGV` in a session of its own (as a terminal's foreground job is a group of its own)."""
    return subprocess.Popen([sys.executable, "-m", "resnet", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def wait_until(condition, proc: subprocess.Popen, seconds: float = 150) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"it ended first (status {proc.returncode}): {proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting")
        time.sleep(0.2)


def holder(run: Path) -> int:
    """The PID a run directory's lock file names (the worker training it)."""
    return int((run / rundir.LOCK_FILE).read_text().split()[0])


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_group_ends_every_process_with_checkpoints_saved(tiny_fashion, tmp_path, signum):
    out = tmp_path / "suite"
    proc = resnet(reproduce_argv(tiny_fashion, out))
    # both workers past their first evaluation (every 6 of 128 steps): each is in its training loop
    wait_until(lambda: all((out / run / "metrics.jsonl").exists() for run in RUNS), proc)
    workers = [holder(out / run) for run in RUNS]
    assert proc.pid not in workers and all(alive(pid) for pid in workers)
    os.killpg(proc.pid, signum)  # what Ctrl-C (SIGINT) or docker stop / Slurm (SIGTERM) do
    start = time.monotonic()
    _, err = proc.communicate(timeout=STOP_SECONDS + 10)
    while any(alive(pid) for pid in workers) and time.monotonic() - start < STOP_SECONDS:
        time.sleep(0.2)
    assert time.monotonic() - start < STOP_SECONDS and not any(alive(pid) for pid in workers), err[-3000:]
    assert proc.returncode == 128 + signum, err[-3000:]
    assert "continue with: resnet reproduce table6" in err and "Traceback" not in err
    for run in RUNS:
        _, state = checkpoint.last_checkpoint(out / run / "checkpoints")
        assert state["step"] >= 6
        assert "checkpoint saved" in (out / run / "train.log").read_text()
    resumed = resnet(["train", "--resume", str(out / RUNS[0]), "--no-progress"])  # not refused by a stale lock
    for line in resumed.stdout:
        if line.startswith("resuming"):
            break
    os.killpg(resumed.pid, signal.SIGINT)
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 130 and "in use by another" not in err, err[-3000:]


def test_damaged_suite_files_are_one_line_naming_the_file(tiny_fashion, tmp_path, capsys):
    from resnet.reproduce import reproduce

    out = tmp_path / "suite"
    reproduce("table6", "fashion-mnist", depths=(20,), budget=6 / 64_000, out=out, device="cpu",
              data_dir=str(tiny_fashion), progress=False)
    argv = reproduce_argv(tiny_fashion, out, budget=6 / 64_000)
    argv[argv.index("--jobs") + 1] = "1"
    result = out / RUNS[1] / "result.json"
    good_result, good_suite = result.read_text(), (out / "suite.json").read_text()
    cases = [(result, good_result[: len(good_result) // 2], "not valid JSON"), (result, "", "is empty"),
             (result, "[1, 2]", "holds a JSON list, not an object"),
             (result, json.dumps({"name": RUNS[1]}), "has no 'label'"),
             (out / "suite.json", "[]", "holds a JSON list"), (out / "suite.json", "{\"data\": ", "not valid JSON"),
             (out / "suite.json", json.dumps({"data": "fashion-mnist"}), "has no 'budget'")]
    for path, text, words in cases:
        path.write_text(text)
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{path}: " in err and words in err and "delete it" in err, err
        result.write_text(good_result)
        (out / "suite.json").write_text(good_suite)
    assert main(argv) == 0  # both files intact again: the suite is complete


def test_a_run_that_returns_no_test_error_is_summarised_from_its_metrics(tmp_path):
    from resnet.reproduce.experiments import plan
    from resnet.reproduce.runs import summarize

    spec = plan("table6", (20,))[0]
    run = tmp_path / spec.name
    run.mkdir()
    rows = [{"epoch": 0.5, "step": 5, "train_error": 0.6, "train_loss": 1.0, "test_top1_error": 0.5, "wall_time": 1.0},
            {"epoch": 1.0, "step": 10, "train_error": 0.4, "train_loss": 0.9, "test_top1_error": 0.3, "wall_time": 2.0}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = summarize(run, spec, {})  # what a resumed, already complete run returned before the engine's fix
    assert (summary["test_error"], summary["iterations"], summary["train_seconds"]) == (0.3, 10, 2.0)


@pytest.mark.parametrize("option, value, words", [("--jobs", "0", "must be at least 1"),
                                                   ("--depths", "21", "no CIFAR net of depth 21"),
                                                   ("--seeds", "0", "must be at least 1"),
                                                   ("--budget", "nan", "finite number above 0")])
def test_bad_values_are_refused_at_parse_time_before_anything_is_written(tmp_path, capsys, option, value, words):
    out = tmp_path / "suite"
    argv = reproduce_argv(tmp_path / "no-data", out)
    if option in argv:
        argv[argv.index(option) + 1] = value
    else:
        argv += [option, value]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and words in capsys.readouterr().err and not out.exists()


def test_the_api_refuses_an_unknown_depth_and_jobs_0_before_writing(tmp_path):
    from resnet.reproduce import reproduce

    for options, words in (({"depths": (21,)}, "unknown model 'resnet21'"), ({"jobs": 0}, "invalid --jobs 0")):
        with pytest.raises(ValueError, match=words):
            reproduce("table6", "fashion-mnist", budget=0.001, out=tmp_path / "s", device="cpu", **options)
        assert not (tmp_path / "s").exists()
