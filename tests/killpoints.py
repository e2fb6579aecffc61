"""SIGKILL at every file operation: run a call in a forked child that kills itself just before its K-th
write (open for writing, rename, link, unlink, mkdir, rmtree, copy, torch.save, safetensors) made inside a
given function, then let the test check what a later command makes of the files left behind.

A Python-level kill point sits between two operations, so every state a real kill can leave between
them is reached; a file half-written by a kill inside one write is only ever a temporary (comp writes
everything to a temporary first), which the same checks cover.
"""
from __future__ import annotations

import builtins
import contextlib
import os
import shutil
import signal
from collections.abc import Callable

import safetensors.torch
import torch

_WRITE_MODES = set("wax+")


def _targets():
    return [(os, "replace"), (os, "rename"), (os, "link"), (os, "unlink"), (os, "remove"), (os, "mkdir"),
            (os, "rmdir"), (shutil, "rmtree"), (shutil, "copyfile"), (torch, "save"),
            (safetensors.torch, "serialize_file"), (builtins, "open")]


@contextlib.contextmanager
def counting(scope: tuple[object, str], kill_at: int | None, counter: list[int]):
    """Counts file operations made inside `scope` (module, function name); SIGKILLs this process before
    operation number `kill_at` (0-based). Only for forked children: the kill is real."""
    inside = [0]
    saved = [(obj, name, getattr(obj, name)) for obj, name in _targets()]
    module, fname = scope
    real_scope = getattr(module, fname)

    def hook(fn: Callable, name: str) -> Callable:
        def wrapped(*args, **kwargs):
            if inside[0] and (name != "open" or _WRITE_MODES & set(str(args[1] if len(args) > 1 else kwargs.get("mode", "r")))):
                if counter[0] == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                counter[0] += 1
            return fn(*args, **kwargs)
        return wrapped

    def scoped(*args, **kwargs):
        inside[0] += 1
        try:
            return real_scope(*args, **kwargs)
        finally:
            inside[0] -= 1

    for obj, name, fn in saved:
        setattr(obj, name, hook(fn, name))
    setattr(module, fname, scoped)
    try:
        yield
    finally:
        for obj, name, fn in saved:
            setattr(obj, name, fn)
        setattr(module, fname, real_scope)


def _fork(call: Callable[[], None], scope: tuple[object, str] | None, kill_at: int | None) -> tuple[int, int]:
    """Forks a child running `call` (counting / killing inside `scope` when given); (pid, read end of the
    pipe on which it reports its operation count)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(read)
            counter = [0]
            with counting(scope, kill_at, counter) if scope else contextlib.nullcontext():
                call()
            os.write(write, str(counter[0]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    return pid, read


def _reap(pid: int, read: int) -> tuple[int, int]:
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read) as fh:
        ops = int(fh.read() or -1)
    return (-os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)), ops


def run_forked(call: Callable[[], None], scope: tuple[object, str] | None, kill_at: int | None) -> tuple[int, int]:
    """Runs `call` in a forked child, killed before its `kill_at`-th file operation inside `scope` (None:
    never). Returns (how the child ended: -9 killed, else its exit code, operations counted)."""
    return _reap(*_fork(call, scope, kill_at))


def run_forked_together(jobs: list[tuple[Callable[[], None], tuple[object, str] | None, int | None]]) -> list[tuple[int, int]]:
    """run_forked for several jobs at once (one per core): all forked, then all awaited."""
    started = [_fork(*job) for job in jobs]
    return [_reap(*s) for s in started]
