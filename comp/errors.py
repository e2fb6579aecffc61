"""One exception type for user-facing failures.

Anything the user can fix (bad data, bad CSV, bad config, missing weights) raises `CompError` with one
line per problem: what file/row, what is wrong, what to do. The CLI prints the lines and exits with 2;
library callers (tests, notebooks) catch the exception.
"""
from __future__ import annotations


class CompError(Exception):
    exit_code = 2

    def __init__(self, *lines: str):
        self.lines = [_original(str(x)) for x in lines if x]
        super().__init__("\n".join(self.lines))


def _original(line: str) -> str:
    """A CompError raised in a DataLoader worker comes back as one message holding the worker's whole
    traceback; the user needs only its last line, the original message."""
    if "Original Traceback" not in line:
        return line
    last = line.rstrip().splitlines()[-1]
    return last.split("CompError: ", 1)[-1]
