"""One pass over a request's texts: every detector's anchors first, its patterns only on the lines around a hit.

The texts are joined into one UTF-8 buffer (a separator line between them, so no match spans two), and each
view a detector needs (lower-cased, shape) is made once with a C-speed bytes method. Every anchor of every
detector is found in one Aho-Corasick pass per view (ahocorasick-rs); a detector whose anchors are absent costs
nothing more. A hit costs one anchored match of the detector's patterns, or for detectors whose match may start
anywhere near the anchor, one search of the few bytes around it.

    scanner = Scanner(detectors_for(["email", "aws_access_key"]), allow={"email": [re.compile("@acme\\.test$")]})
    scanner.scan(["mail bob@corp.io", "key AKIA..."])  # -> [Hit("email", 0, "bob@corp.io"), Hit(...)]
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ahocorasick_rs import BytesAhoCorasick

from gateway.dlp.detectors import FOLDED, SHAPE_TABLE, TEXT, Detector

SEPARATOR = b"\n\x00\n"
# Candidates one detector may examine per request. A real prompt has a handful; a flood of anchors ("AKIA" a
# million times) would cost a core for seconds, so it is refused instead (TooManyCandidates).
MAX_CANDIDATES = 10_000
# Anchors overlap (a 12-digit number holds nine `0000`s) and one near an anchor already examined costs nothing, so
# MAX_CANDIDATES counts the examined ones: a CSV of 1,200 order numbers is no flood. This many raw anchors of one
# detector is refused before they are even sorted.
MAX_ANCHORS = 16 * MAX_CANDIDATES
# Characters that show as nothing (zero-width, joiners, soft hyphen, direction marks, BOM): written inside a value
# (AKIA<U+200B>...) they split it for the patterns but not for a reader, so texts holding one are scanned again
# without them.
_INVISIBLE_RANGES = (  # soft hyphen, grapheme joiner, Arabic mark, Mongolian separator, zero-width and bidi marks
    (0xAD, 0xAD), (0x34F, 0x34F), (0x61C, 0x61C), (0x180E, 0x180E), (0x200B, 0x200F), (0x202A, 0x202E),
    (0x2060, 0x2064), (0x2066, 0x206F), (0xFEFF, 0xFEFF),
)  # fmt: skip
_INVISIBLE_CHARS = [chr(c) for first, last in _INVISIBLE_RANGES for c in range(first, last + 1)]
INVISIBLE = re.compile(f"[{''.join(_INVISIBLE_CHARS)}]")
_INVISIBLE_SET = frozenset(_INVISIBLE_CHARS)


class TooManyCandidates(Exception):
    """The texts hold more candidates of one detector than MAX_CANDIDATES; the message names the detector."""


class TooBusyInline(Exception):
    """The scan examined more candidates than its `max_examined`: run it again where it may take longer (a thread)."""


@dataclass(frozen=True, slots=True)
class Hit:
    """A validated, not allowlisted value: which detector, in which of the scanned texts, and the value itself."""

    detector: str
    text: int
    value: str


class Scanner:
    """The detectors of one policy, compiled once; `scan(texts)` is pure and safe to share between requests."""

    def __init__(self, detectors: Sequence[Detector], allow: Mapping[str, Sequence[re.Pattern[str]]]) -> None:
        self._detectors = tuple(detectors)
        self._allow = {d.id: tuple(allow.get(d.id, ())) for d in detectors}
        # One Aho-Corasick automaton per view finds every anchor of every detector in one pass (22 µs for the
        # 12 KB a Claude Code turn has to scan, against 4 µs per anchor searched one by one).
        self._anchors: dict[str, tuple[BytesAhoCorasick, list[int]]] = {}
        for view in {d.view for d in detectors} | {TEXT}:
            words = [(a, i) for i, d in enumerate(detectors) if d.view == view for a in d.anchors]
            if view == TEXT:  # the invisible characters, owned by no detector (index len(detectors))
                words += [(c.encode(), len(detectors)) for c in _INVISIBLE_CHARS]
            self._anchors[view] = (BytesAhoCorasick([a for a, _ in words]), [i for _, i in words])

    @property
    def detector_ids(self) -> tuple[str, ...]:
        return tuple(d.id for d in self._detectors)

    def scan(self, texts: Sequence[str], max_examined: int | None = None) -> list[Hit]:
        """Every finding in `texts`, a value overlapping an earlier detector's finding left to that one.

        `max_examined` bounds the candidates of all detectors together (validating one costs up to 50 µs), past
        which TooBusyInline is raised; TooManyCandidates past one detector's MAX_CANDIDATES in any case.
        """
        hits, invisible = self._scan(texts, max_examined)
        return hits + self._behind_invisible(texts, hits, max_examined) if invisible else hits

    def _behind_invisible(self, texts: Sequence[str], hits: list[Hit], max_examined: int | None) -> list[Hit]:
        """Values with invisible characters inside: found in the texts without them, and given back as written
        (so the placeholder replaces the whole span)."""
        which = [i for i, t in enumerate(texts) if INVISIBLE.search(t)]
        stripped = [INVISIBLE.sub("", texts[i]) for i in which]
        known = {(h.detector, h.text, h.value) for h in hits}
        out: list[Hit] = []
        kept_of: dict[int, list[int]] = {}  # per text: stripped position -> original position
        for hit in self._scan(stripped, max_examined)[0]:
            i, text, plain = which[hit.text], texts[which[hit.text]], stripped[hit.text]
            if i not in kept_of:
                kept_of[i] = [j for j, c in enumerate(text) if c not in _INVISIBLE_SET]
            kept = kept_of[i]
            at = plain.find(hit.value)
            while at >= 0:
                written = text[kept[at] : kept[at + len(hit.value) - 1] + 1]
                if (hit.detector, i, written) not in known:
                    known.add((hit.detector, i, written))
                    out.append(Hit(hit.detector, i, written))
                at = plain.find(hit.value, at + len(hit.value))
        return out

    def _scan(self, texts: Sequence[str], max_examined: int | None) -> tuple[list[Hit], bool]:
        """scan() in one pass, and whether the texts hold an invisible character."""
        encoded = [t.encode("utf-8", "surrogatepass") for t in texts]
        starts, offset = [], 0
        for chunk in encoded:
            starts.append(offset)
            offset += len(chunk) + len(SEPARATOR)
        buf = SEPARATOR.join(encoded)
        at: dict[int, list[int]] = {}  # detector index -> anchor positions
        for view, (automaton, owners) in self._anchors.items():
            seen = buf if view == TEXT else buf.lower() if view == FOLDED else buf.translate(SHAPE_TABLE)
            for word, start, _ in automaton.find_matches_as_indexes(seen, overlapping=True):
                at.setdefault(owners[word], []).append(start)
        invisible = at.pop(len(self._detectors), None) is not None
        taken = _Spans()  # spans already found, by a more specific detector
        hits: list[Hit] = []
        budget = MAX_CANDIDATES if max_examined is None else max_examined
        for index in sorted(at):
            detector = self._detectors[index]
            if len(at[index]) > MAX_ANCHORS:
                raise TooManyCandidates(detector.id)
            limit = min(MAX_CANDIDATES, budget)
            try:
                found, examined = _matches(detector, sorted(at[index]), buf, limit)
            except TooManyCandidates:
                if limit < MAX_CANDIDATES:
                    raise TooBusyInline from None
                raise
            if max_examined is not None:
                budget -= examined
            for start, end, value in found:
                if taken.overlaps(start, end) or self._allowed(detector.id, value):
                    continue
                taken.add(start, end)
                hits.append(Hit(detector.id, bisect.bisect_right(starts, start) - 1, value))
        return hits, invisible

    def _allowed(self, detector: str, value: str) -> bool:
        return any(rule.search(value) for rule in self._allow[detector])


class _Spans:
    """Disjoint [start, end) spans, kept sorted: overlap tests in O(log n), so a flood of findings stays linear."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def overlaps(self, start: int, end: int) -> bool:
        i = bisect.bisect_left(self._starts, end)  # spans starting before `end`; the last of them may overlap
        return i > 0 and self._ends[i - 1] > start

    def add(self, start: int, end: int) -> None:
        i = bisect.bisect_left(self._starts, start)
        self._starts.insert(i, start)
        self._ends.insert(i, end)


def _matches(detector: Detector, anchors: list[int], buf: bytes, limit: int) -> tuple[list[tuple[int, int, str]], int]:
    """Validated matches of `detector` near its anchors, as (start, end, value), and how many anchors were examined;
    TooManyCandidates past `limit` of them."""
    found: list[tuple[int, int, str]] = []
    seen: set[int] = set()
    scanned_to, examined = -1, 0
    for at in anchors:
        if at < scanned_to:  # searched already, from an earlier anchor
            continue
        examined += 1
        if examined > limit:
            raise TooManyCandidates(detector.id)
        lo, hi = _window(detector, buf, at)
        if detector.back is None:
            scanned_to = hi
            matches = [m for p in detector.patterns for m in p.finditer(buf, lo, hi)]
        else:  # the match starts at a known distance from the anchor: one anchored try, no search
            matches = [m for p in detector.patterns if (m := p.match(buf, at - detector.back, hi))]
            scanned_to = max((m.end() for m in matches), default=scanned_to)  # anchors inside a match are in it
        for match in matches:
            start, end = match.span(detector.group)
            if start < 0 or start in seen:
                continue
            value = buf[start:end].decode("utf-8", "replace")
            if detector.valid is None or detector.valid(value, buf[lo:hi]):
                seen.add(start)
                found.append((start, end, value))
    return found, examined


def _window(detector: Detector, buf: bytes, at: int) -> tuple[int, int]:
    """The bytes a match around the anchor at `at` may span: its line, cut to the detector's reach."""
    before, after = detector.around
    start = max(0, at - before)  # every search is bounded: an unbounded one per anchor is quadratic on one long line
    lo = buf.rfind(b"\n", start, at) + 1 or start
    if detector.reach:
        text_end = buf.find(SEPARATOR, at, at + detector.reach)
        return lo, min(len(buf), at + detector.reach) if text_end < 0 else text_end
    line_end = buf.find(b"\n", at, at + after)
    return lo, min(len(buf), at + after) if line_end < 0 else line_end
