"""One exception type for user-facing failures.

Anything the user can fix (bad data, bad CSV, bad config, missing weights) raises `CompError` with one
line per problem: what file/row, what is wrong, what to do. The CLI prints the lines and exits with 2;
library callers (tests, notebooks) catch the exception.
"""
from __future__ import annotations


class CompError(Exception):
    exit_code = 2

    def __init__(self, *lines: str):
        self.lines = [str(x) for x in lines if x]
        super().__init__("\n".join(self.lines))
