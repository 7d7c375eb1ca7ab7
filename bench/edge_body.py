"""Micro-benchmark of the edge's work on the 77.6 KB Claude Code body: sketch (or parse) and model patch.

    python -m bench.edge_body             # best of 9 runs of 2,000 iterations, CPU microseconds per request

What the gateway does between reading a /v1/messages body and handing it to the provider, without the
network: `read_json_body`'s parse step (`body_sketch`, else orjson) and `with_model`. Timed in process CPU time,
so other processes on the machine disturb it less; still, compare runs back to back (before/after a change).
"""

from __future__ import annotations

import inspect
import statistics
import sys
import time
import timeit
from pathlib import Path
from typing import Any

import orjson

from gateway.app import body_sketch
from gateway.relays.model_patch import with_model

# A sketched body's model key was proven unique at the edge (when this version of the gateway checks that).
_SKETCHED = {"unique": True} if "unique" in inspect.signature(with_model).parameters else {}
BODY = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "claude_code_stream.json"


def edge(raw: bytes) -> bytes:
    """The body's path through the edge: sketch (full parse when it cannot be sketched), then the patch."""
    sketch = body_sketch(raw)
    body: dict[str, Any] = sketch if sketch is not None else orjson.loads(raw)
    assert body["model"] == "claude-fast"
    sketched = _SKETCHED if sketch is not None else {}
    return with_model(raw, lambda: orjson.loads(raw), "claude-haiku-4-5-20251001", **sketched)


def main(runs: int = 9, number: int = 2000) -> None:
    raw = BODY.read_bytes()
    times = timeit.Timer(lambda: edge(raw), timer=time.process_time).repeat(number=number, repeat=runs)
    per_call = [t / number * 1e6 for t in times]
    print(f"claude code body {len(raw)} B: best {min(per_call):.1f} us, median {statistics.median(per_call):.1f} us")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
