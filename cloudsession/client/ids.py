"""Identifiers the durable client chooses: UUIDv7 op ids and deterministic batch ids."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable

# uuid5 namespace for batch ids: the same ops in the same order always make the same batch id.
_BATCH_NAMESPACE = uuid.UUID("2f1c7a52-4b1e-4c5e-9d0a-6f1f4f3e7b21")
_last_ms = 0
_counter = 0


def uuid7() -> str:
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds, then randomness. Ids minted by one process
    in the same millisecond stay ordered through a 12-bit counter in ``rand_a``."""
    global _last_ms, _counter
    ms = time.time_ns() // 1_000_000
    if ms <= _last_ms:
        _counter += 1
        if _counter > 0xFFF:  # counter exhausted: borrow the next millisecond
            _last_ms += 1
            _counter = 0
        ms = _last_ms
    else:
        _last_ms, _counter = ms, 0
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms << 80) | (0x7 << 76) | (_counter << 64) | (0b10 << 62) | rand_b
    return str(uuid.UUID(int=value))


def batch_id(op_ids: Iterable[str]) -> str:
    return str(uuid.uuid5(_BATCH_NAMESPACE, ",".join(op_ids)))
