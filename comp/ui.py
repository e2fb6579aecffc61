"""Terminal output shared by long-running library code: one rich console (stderr, so stdout stays
clean for `--json`) and a progress bar that disappears when output is not a terminal."""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")
console = Console(stderr=True)


def progress_enabled() -> bool:
    return console.is_terminal and not os.environ.get("COMP_NO_PROGRESS")


def make_progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True,
                    disable=not progress_enabled())


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Like rich.progress.track, on comp's console, silent when not a terminal."""
    with make_progress() as bar:
        task = bar.add_task(description, total=total if total is not None else len(items), info="")  # type: ignore[arg-type]
        for x in items:
            yield x
            bar.advance(task)
