"""SSE framing has one home, gateway/dialects/sse.py (README, design: why aiohttp-sse is not used).

Every frame the gateway writes itself is built by `sse.frame`, `sse.data_frame` or `sse.DONE_FRAME`; a bytes
literal that starts an SSE field anywhere else is a second framer, which this test refuses.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"
HOME = GATEWAY / "dialects" / "sse.py"
FIELD = re.compile(rb"(^|\n)(data|event|id|retry):")


def framing_literals(path: Path) -> list[bytes]:
    return [
        node.value
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, bytes) and FIELD.search(node.value)
    ]


def test_no_sse_framing_outside_its_module() -> None:
    elsewhere = {str(p.relative_to(GATEWAY)): framing_literals(p) for p in GATEWAY.rglob("*.py") if p != HOME}
    assert {path: found for path, found in elsewhere.items() if found} == {}


def test_the_home_is_where_the_frames_are() -> None:
    # the detector finds sse.py's own literals, so an empty list elsewhere means something
    assert b"data: " in framing_literals(HOME) and b"event: " in framing_literals(HOME)
