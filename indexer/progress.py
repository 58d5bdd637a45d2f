"""Progress reporting for long jobs, kept out of library logic.

Library functions take a :data:`ProgressFactory`; the CLI passes one that draws
progress bars, tests and the server pass :func:`no_progress`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

__all__ = ["Advance", "ProgressFactory", "no_progress"]

#: ``advance(n)``: n more units of the current stage are done.
Advance = Callable[[int], None]
#: ``factory(description, total)`` opens a stage; the context yields its ``advance``.
ProgressFactory = Callable[[str, int], AbstractContextManager[Advance]]


@contextmanager
def no_progress(description: str, total: int) -> Iterator[Advance]:
    """A :data:`ProgressFactory` that reports nothing."""
    yield lambda n: None
