"""Helpers for the hostile-input suite: every case runs under a time limit and a memory bound.

Each test here builds its hostile input itself (tiny files written to ``tmp_path``, forged in code, nothing
downloaded) and asserts either the one-line error a user gets or the documented handling. Every test in this
folder is marked ``adversarial`` automatically (``pytest -m adversarial`` runs just them; ``-m "not adversarial"``
leaves them out).

Reusable helpers, as fixtures:

``bounded``
    ``bounded(fn, *args, timeout_s=20, memory_mb=768, **kwargs) -> Outcome`` calls ``fn(*args, **kwargs)`` in a
    forked child process whose address space may grow by at most ``memory_mb`` over the parent's (``RLIMIT_AS``)
    and which is killed after ``timeout_s`` seconds. A case that hangs fails the test with "did not finish within";
    one that allocates past the bound comes back as a ``MemoryError`` outcome (or a killed child), which the
    assertions below then report. ``fn`` must be a module-level function or closure usable after ``fork``; its
    return value must pickle (return something small: a shape, a message, a count).

``Outcome``
    What came back: ``value`` on success, else ``error_type`` (the exception's class name), ``error_message``
    (``str(exc)``) and ``error_types`` (the names of its classes, MRO order, so ``"ValueError"`` matches an
    ``ImageLoadError``). ``outcome.raised("ValueError", match=r"regex")`` asserts a one-line error of that kind
    whose message matches; ``outcome.ok()`` asserts success and returns the value.

Checkpoint cases (later) use the same two: write the forged file into ``tmp_path``, then
``bounded(longclip.load, path).raised("ValueError", match="...")``.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import resource
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

DEFAULT_TIMEOUT_S = 20.0
DEFAULT_MEMORY_MB = 768


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.path).startswith(here + os.sep):
            item.add_marker(pytest.mark.adversarial)


@dataclass
class Outcome:
    """The result of a bounded call: a value, or the exception it raised (as names and text)."""

    value: Any = None
    error_type: str | None = None
    error_message: str = ""
    error_types: list[str] = field(default_factory=list)
    detail: str = ""  # the child's traceback, shown when an assertion fails

    def ok(self) -> Any:
        """Assert the call succeeded and return its value."""
        assert self.error_type is None, f"expected success, got {self.error_type}: {self.error_message}\n{self.detail}"
        return self.value

    def raised(self, kind: str, match: str | None = None) -> str:
        """Assert the call raised ``kind`` (a class name in the exception's MRO) with a one-line matching message."""
        assert self.error_type is not None, f"expected {kind}, but the call returned {self.value!r}"
        assert kind in self.error_types, f"expected {kind}, got {self.error_type}: {self.error_message}\n{self.detail}"
        assert self.error_type not in ("MemoryError", "RecursionError"), f"unbounded: {self.detail}"
        assert "\n" not in self.error_message.strip(), f"the message is not one line: {self.error_message!r}"
        if match is not None:
            assert re.search(match, self.error_message), f"{self.error_message!r} does not match {match!r}"
        return self.error_message


def _address_space_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _child(connection: Any, memory_bytes: int, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    # A child forked from a process whose OpenMP pool already ran (any earlier test that used torch) hangs at its
    # first parallel region: GNU OpenMP's team does not survive fork(). One thread never enters a parallel region.
    import torch

    torch.set_num_threads(1)
    limit = _address_space_bytes() + memory_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        result: tuple = ("ok", fn(*args, **kwargs))
    except BaseException as exc:  # everything, MemoryError included, goes back to the parent as names and text
        names = [cls.__name__ for cls in type(exc).__mro__]
        result = ("error", type(exc).__name__, str(exc), names, traceback.format_exc(limit=-8))
    try:
        connection.send(result)
    except Exception as exc:  # an unpicklable value
        connection.send(("error", "PicklingError", str(exc), ["PicklingError"], ""))
    connection.close()


def run_bounded(
    fn: Callable[..., Any],
    *args: Any,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_mb: int = DEFAULT_MEMORY_MB,
    **kwargs: Any,
) -> Outcome:
    """Run ``fn(*args, **kwargs)`` in a forked child under a time limit and an address-space bound."""
    if not hasattr(os, "fork"):
        pytest.skip("the bounded runner needs fork() (Linux, macOS)")
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(sender, memory_mb * 2**20, fn, args, kwargs), daemon=True)
    process.start()
    sender.close()
    try:
        if not receiver.poll(timeout_s):
            process.kill()
            process.join()
            pytest.fail(f"{getattr(fn, '__name__', fn)} did not finish within {timeout_s} s (a hang)")
        try:
            message = receiver.recv()
        except EOFError:
            process.join()
            pytest.fail(f"the child died without an answer (exit code {process.exitcode}): killed for memory?")
    finally:
        receiver.close()
        process.join(timeout=5)
    if message[0] == "ok":
        return Outcome(value=message[1])
    _, kind, text, names, detail = message
    return Outcome(error_type=kind, error_message=text, error_types=names, detail=detail)


@pytest.fixture
def bounded() -> Callable[..., Outcome]:
    """The :func:`run_bounded` helper (see the module docstring)."""
    return run_bounded
