"""Steps: a generator decides, a driver does the I/O it asks for — called by ``drive``, awaited by ``drive_async``.

The publisher's rules (what to send, when to queue, what a failure means) are written once, as generators that
yield each request and receive its answer; an exception the I/O raised is thrown back into the generator at
the ``yield``, so the rules catch it where they asked. The sync and async publishers differ only in their driver.

    def steps() -> Generator[str, int, int]:
        length = yield "hello"
        return length * 2

    drive(steps(), len) == 10
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from functools import partial
from typing import Generic, TypeVar

Request = TypeVar("Request")
Answer = TypeVar("Answer")
Result = TypeVar("Result")


def drive(steps: Generator[Request, Answer, Result], perform: Callable[[Request], Answer]) -> Result:
    """Run ``steps`` to their end, doing each request with ``perform``."""
    walk = _Walk(steps)
    while walk.advance():
        try:
            walk.answer(perform(walk.request))
        except BaseException as failure:  # handed to the steps, which decide (or let it propagate)
            walk.fail(failure)
    return walk.result


async def drive_async(
    steps: Generator[Request, Answer, Result], perform: Callable[[Request], Awaitable[Answer]]
) -> Result:
    """``drive`` for asynchronous I/O: each request is awaited."""
    walk = _Walk(steps)
    while walk.advance():
        try:
            walk.answer(await perform(walk.request))
        except BaseException as failure:  # handed to the steps, which decide (or let it propagate)
            walk.fail(failure)
    return walk.result


class _Walk(Generic[Request, Answer, Result]):
    """Where a driver is in its steps: the request to do now, then the result once they returned."""

    request: Request
    result: Result

    def __init__(self, steps: Generator[Request, Answer, Result]) -> None:
        self._steps = steps
        self._resume: Callable[[], Request] = partial(next, steps)

    def advance(self) -> bool:
        """Resume the steps (outside the driver's ``except``, so an error they let go carries no extra context)."""
        try:
            self.request = self._resume()
        except StopIteration as done:
            self.result = done.value
            return False
        return True

    def answer(self, answer: Answer) -> None:
        self._resume = partial(self._steps.send, answer)

    def fail(self, failure: BaseException) -> None:
        self._resume = partial(self._steps.throw, failure)
