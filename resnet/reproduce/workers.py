"""Runs of a suite in worker processes (`reproduce --jobs N`) that Ctrl-C, SIGTERM and a lost parent always end.

Each run is one Python process (`worker_main`) in a process group of its own, told what to run
over its stdin and answering over a pipe of its own: no lock, queue or pool is shared between the processes,
so no signal can leave one waiting on a lock another holds (the deadlock of ProcessPoolExecutor under Ctrl-C).
Because a worker is outside the parent's group, a Ctrl-C (or `kill -INT -- -PGID`) reaches only the parent,
which forwards it to every worker exactly once: each worker's training loop saves a checkpoint and stops, as
one `resnet train` does (a second signal stops them at once, keeping the last checkpoint). A worker that still
runs STOP_GRACE seconds later is sent the signal again, and is killed after KILL_GRACE more. A worker whose
parent has died stops itself the same way (SIGTERM to itself), so no run is left orphaned holding its lock.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from resnet.errors import expected_failures, one_line
from resnet.reproduce.runs import run_one
from resnet.train.loop import Interrupted

STOP_GRACE = 30.0  # seconds a worker gets to save its checkpoint and exit after the first signal
KILL_GRACE = 10.0  # then seconds after the second signal (stop without saving) before SIGKILL
POLL = 0.2  # seconds between looks at the workers
MESSAGE_LIMIT = 4000  # characters of a worker's error kept (the pipe's buffer holds far more)
# The worker's first lines, before anything heavy is imported: a signal that arrives while torch loads is noted,
# and the worker then answers "interrupted" without starting its run.
BOOT = ("import signal, sys\n"
        "pending = []\n"
        "for s in (signal.SIGINT, signal.SIGTERM):\n"
        "    signal.signal(s, lambda n, f: pending.append(n))\n"
        "from resnet.reproduce.workers import worker_main\n"
        "sys.exit(worker_main(int(sys.argv[1]), pending))\n")


@dataclass
class Worker:
    """One run in its own process: the process, the read end of its answer pipe, and when it was stopped."""

    name: str
    process: subprocess.Popen
    answers: int  # file descriptor
    signalled: list[float] = field(default_factory=list)  # times the stop signal was sent

    def answer(self) -> dict:
        """What the worker reported ({"result"}, {"interrupted"} or {"error", "expected"}), once it has exited."""
        chunks = []
        while chunk := os.read(self.answers, 65536):
            chunks.append(chunk)
        os.close(self.answers)
        try:
            return json.loads(b"".join(chunks).decode())
        except ValueError:  # killed before it could answer
            code = self.process.returncode
            if code is not None and code < 0:
                return {"interrupted": 128 - code}
            return {"error": f"{self.name}: its worker process ended with status {code} without a result "
                             f"(see {self.name}/train.log)", "expected": False}


def start(name: str, job: tuple, env: dict | None = None) -> Worker:
    """Start a worker for `job` (run_one's arguments) in a process group of its own."""
    read, write = os.pipe()
    process = subprocess.Popen([sys.executable, "-c", BOOT, str(write)], stdin=subprocess.PIPE, pass_fds=(write,),
                               process_group=0, env=env)
    os.close(write)
    try:
        process.stdin.write(pickle.dumps(job))  # our own objects, to our own child: not a file anyone else made
        process.stdin.close()
    except BrokenPipeError:  # it died at once; its answer (none) says so
        pass
    return Worker(name, process, read)


class Forwarder:
    """While active: SIGINT/SIGTERM to this process are recorded and forwarded to every running worker."""

    def __init__(self, workers: Callable[[], list[Worker]]) -> None:
        self.workers = workers
        self.signum = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> Forwarder:
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: no forwarding (nor any signal) here
                pass
        return self

    def _handle(self, signum: int, frame) -> None:
        self.signum = self.signum or signum
        for worker in self.workers():
            send(worker, signum)

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def send(worker: Worker, signum: int) -> None:
    """Send `signum` to a worker that is still running, and note when."""
    if worker.process.poll() is None:
        try:
            worker.process.send_signal(signum)
        except ProcessLookupError:
            return
        worker.signalled.append(time.monotonic())


def escalate(workers: list[Worker], signum: int) -> None:
    """While stopping (`signum` not 0): the signal to workers not yet told (one started as the signal came), again
    after STOP_GRACE to those slow to stop (stop now, no save), and SIGKILL after KILL_GRACE more."""
    if not signum:
        return
    now = time.monotonic()
    for worker in workers:
        if worker.process.poll() is not None:
            continue
        if not worker.signalled:
            send(worker, signum)
            continue
        waited = now - worker.signalled[-1]
        if len(worker.signalled) == 1 and waited > STOP_GRACE:
            send(worker, signum)
        elif len(worker.signalled) >= 2 and waited > KILL_GRACE:
            worker.process.kill()


def reap(workers: list[Worker]) -> None:
    """End every worker still running (the parent is leaving because of an error of its own) and wait for them."""
    for worker in workers:
        send(worker, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    for worker in workers:
        try:
            worker.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()


# ----------------------------------------------------------------------------- the worker's side


class Terminated(KeyboardInterrupt):
    """SIGTERM outside the training loop's own handler (before training starts or after it ends)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.exit_code = 128 + signum


def _raise_terminated(signum: int, frame) -> None:
    raise Terminated(signum)


def _watch_parent(parent: int) -> None:
    """Stop this worker (as SIGTERM does: save and exit) when the parent that started it is gone."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


def worker_main(answer_fd: int, pending: list[int] | None = None) -> int:
    """Run one job read from stdin; write the outcome as JSON to `answer_fd`; return the exit status.

    `pending` holds the signals that arrived while the worker started (see BOOT): then the run is not started."""
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    code = 0
    try:
        signal.signal(signal.SIGTERM, _raise_terminated)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if pending:
            raise Terminated(pending[0])
        job = pickle.load(sys.stdin.buffer)
        outcome: dict = {"result": run_one(*job)}
    except Interrupted as error:
        outcome, code = {"interrupted": error.exit_code}, error.exit_code
    except KeyboardInterrupt as error:  # a signal outside the loop's handler, or a second one (StopNow)
        code = getattr(error, "exit_code", 128 + signal.SIGINT)
        outcome = {"interrupted": code}
    except expected_failures() as error:
        outcome, code = {"error": one_line(error)[:MESSAGE_LIMIT], "expected": True}, 2
    except BaseException as error:  # noqa: BLE001 - a bug: its traceback goes to the run's log (our stderr)
        import traceback

        traceback.print_exc()
        outcome, code = {"error": f"{type(error).__name__}: {error}"[:MESSAGE_LIMIT], "expected": False}, 1
    os.write(answer_fd, json.dumps(outcome).encode())
    os.close(answer_fd)
    return code


