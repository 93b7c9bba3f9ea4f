"""Which kernel path ran: a per-context record that the patcher opens around one attention call.

Kernels call `note_path` with a short label without spaces (``"tiled(4x8)"``, ``"masked-sdpa"``, ...); whoever wants to
know opens `record_paths` around the call and reads the labels afterwards. A context variable, so
threads (and asyncio tasks) each see only their own calls, and kernels cost nothing when no one records.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

_RECORD: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("diffattn_kernel_paths", default=None)


@contextlib.contextmanager
def record_paths() -> Iterator[list[str]]:
    """Collect the labels of the kernel paths run inside the ``with`` block, in call order."""
    seen: list[str] = []
    token = _RECORD.set(seen)
    try:
        yield seen
    finally:
        _RECORD.reset(token)


def note_path(label: str) -> None:
    """Record that a kernel ran ``label`` (no-op outside `record_paths`)."""
    seen = _RECORD.get()
    if seen is not None:
        seen.append(label)
