"""The shard-pass engine answers Ctrl-C: never lost, the handler always put back."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

import pytest

from atst_prep.engine import Folder, run_pass


@dataclass
class _Task:
    folder: str
    index: int


class _Memory(Folder):
    def __init__(self) -> None:
        self.results, self.saves = [], 0

    def record(self, result: dict) -> None:
        self.results.append(result["index"])

    def save(self, complete: bool) -> None:
        self.saves += 1


class _InterruptsWhileFreed:
    """Ctrl-C arriving while Python runs this object's finalizer: Python drops the KeyboardInterrupt."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        self.freed = True  # the pending signal's handler runs here, inside the finalizer


def _work(task: _Task, ran: list, interrupt_at: int, how: str) -> dict:
    ran.append(task.index)
    if task.index == interrupt_at:
        if how == "finalizer":
            _InterruptsWhileFreed()
        else:
            os.kill(os.getpid(), signal.SIGINT)
    return {"folder": task.folder, "index": task.index}


@pytest.mark.parametrize("how", ["finalizer", "plain"])
def test_ctrl_c_stops_the_pass_even_when_it_lands_in_a_finalizer(how, capfd):
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    folder, ran = _Memory(), []
    tasks = [_Task("f", i) for i in range(6)]
    with pytest.raises(KeyboardInterrupt):
        run_pass(_work, tasks, ran, 1, how, folders={"f": folder})
    assert ran == [0, 1]  # stopped at the task it came in, not run to the end
    assert folder.results == ([0, 1] if how == "finalizer" else [0])  # the finished task is recorded
    assert "Exception ignored" not in capfd.readouterr().err  # and no traceback from the finalizer
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler put back


def test_a_pass_without_ctrl_c_runs_every_task_and_puts_the_handler_back():
    folder, ran = _Memory(), []
    run_pass(_work, [_Task("f", i) for i in range(4)], ran, -1, "plain", folders={"f": folder})
    assert ran == folder.results == [0, 1, 2, 3]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
