"""The detectors: for each id in gateway/dlp/__init__.py, where to look (anchors), what a match is, how to check it.

A detector is cheap to skip: its *anchors* are literal byte strings that every match contains, looked for in
one of three views of the scanned text (as written; lower-cased; or its *shape*, digits as `0` and capitals as
`A`, so `GB82 WEST 1234` is `AA00 AAAA 0000`). Only near an anchor does the scanner run the patterns, and
only a match the validator accepts (Luhn, ISO 7064 mod 97, libphonenumber, python-stdnum, JWT structure,
entropy) is a finding.

Secret patterns are detect-secrets' own (`denylist` of its plugins, Yelp/detect-secrets 1.5), so upgrading the
library upgrades them; the formats it lacks (Anthropic, Google, OpenAI project keys, GitHub fine-grained
tokens, whole PEM blocks) are written here in the same style.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import import_module
from typing import Any

from gateway.dlp import NATIONAL_ID_COUNTRIES

TEXT, FOLDED, SHAPE = "text", "folded", "shape"  # the views anchors are looked for in
SHAPE_TABLE = bytes.maketrans(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"0" * 10 + b"A" * 26)


@dataclass(frozen=True, slots=True)
class Detector:
    """One kind of sensitive value; `group` names the regex group that is the value (0: the whole match)."""

    id: str
    anchors: tuple[bytes, ...]
    patterns: tuple[re.Pattern[bytes], ...]
    view: str = TEXT
    group: int = 0
    valid: Callable[[str, bytes], bool] | None = None  # (value, the line it is on) -> is it really one
    reach: int = 0  # > 0: a match may run this many bytes past its anchor's line (a PEM block spans lines)
    back: int | None = None  # a match starts exactly this many bytes before its anchor (None: anywhere near)
    around: tuple[int, int] = (1024, 1024)  # otherwise: bytes before and after an anchor a match may span


def _b(pattern: str, flags: int = 0) -> re.Pattern[bytes]:
    return re.compile(pattern.encode(), flags)


def _library(plugin: str, cls: str, *which: int) -> tuple[re.Pattern[bytes], ...]:
    """detect-secrets' `denylist` regexes of one plugin, recompiled for bytes (flags kept, str-only ones dropped)."""
    denylist = getattr(import_module(f"detect_secrets.plugins.{plugin}"), cls).denylist
    chosen = [denylist[i] for i in which] if which else list(denylist)
    keep = re.IGNORECASE | re.MULTILINE | re.DOTALL | re.VERBOSE
    return tuple(re.compile(p.pattern.encode(), p.flags & keep) for p in chosen)


# --- validators ------------------------------------------------------------------------------------------


def _entropy(value: str) -> float:
    from detect_secrets.plugins.high_entropy_strings import Base64HighEntropyString

    return float(Base64HighEntropyString().calculate_shannon_entropy(value))


def _assigned_secret(value: str, line: bytes) -> bool:
    """An assigned value that looks random: detect-secrets' filters against templates and references pass."""
    from detect_secrets.filters import heuristic

    if heuristic.is_templated_secret(value) or heuristic.is_sequential_string(value):
        return False
    if heuristic.is_indirect_reference(line.decode("utf-8", "replace")):
        return False
    has_digit, has_alpha = any(c.isdigit() for c in value), any(c.isalpha() for c in value)
    return has_digit and has_alpha and _entropy(value) >= 3.5


def _jwt(value: str, line: bytes) -> bool:
    from detect_secrets.plugins.jwt import JwtTokenDetector

    return bool(JwtTokenDetector.is_formally_valid(value))


# What documentation writes where a password goes (postgresql://gateway:PASSWORD@db/...): no secret.
_PLACEHOLDER_PASSWORDS = frozenset(
    {"password", "passwd", "secret", "changeme", "yourpassword", "your_password", "example", "placeholder"}
)


def _url_password(value: str, line: bytes) -> bool:
    from detect_secrets.filters import heuristic

    # shorter than 6 is a placeholder (user:pw@), and replacing it everywhere would hit unrelated text
    return (
        len(value) >= 6
        and not heuristic.is_templated_secret(value)
        and value.strip("*xX.") != ""
        and value[0] != "$"
        and value.strip("<>{}[]").lower() not in _PLACEHOLDER_PASSWORDS
    )


# Card networks' IIN ranges (ISO/IEC 7812): a Luhn check alone passes one random digit string in ten (13-digit
# millisecond timestamps in logs among them); a known network prefix and length make that rare.
_CARD = re.compile(
    r"4\d{12}(?:\d{3}){0,2}|5[1-5]\d{14}|2(?:2[2-9][1-9]|2[3-9]\d|[3-6]\d\d|7[01]\d|720)\d{12}|3[47]\d{13}"
    r"|3(?:0[0-5]|[68]\d)\d{11}|6(?:011|5\d\d|4[4-9]\d)\d{12,15}|35(?:2[89]|[3-8]\d)\d{12}"
)


def _card(value: str, line: bytes) -> bool:
    from stdnum import luhn

    digits = re.sub(r"[ -]", "", value)
    return _CARD.fullmatch(digits) is not None and luhn.is_valid(digits)


def _iban(value: str, line: bytes) -> bool:
    from stdnum import iban

    return bool(iban.is_valid(value))


_FILE_SUFFIXES = frozenset({"png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "js", "ts", "css", "py", "md", "json"})


def _email(value: str, line: bytes) -> bool:
    return value.rsplit(".", 1)[1].lower() not in _FILE_SUFFIXES  # logo@2x.png is a file


def _phone(regions: tuple[str, ...]) -> Callable[[str, bytes], bool]:
    import phonenumbers  # a heavy library (its metadata), loaded only when a phone detector is configured

    def valid(value: str, line: bytes) -> bool:
        digits = sum(c.isdigit() for c in value)
        if not 8 <= digits <= 15:
            return False
        for region in (None,) if value.startswith("+") else regions:
            try:
                if phonenumbers.is_valid_number(phonenumbers.parse(value, region)):
                    return True
            except phonenumbers.NumberParseException:
                continue
        return False

    return valid


def _stdnum(module: str) -> Callable[[str, bytes], bool]:
    checker: Any = import_module(f"stdnum.{module}")
    return lambda value, line: bool(checker.is_valid(value))


# --- the catalogue -----------------------------------------------------------------------------------------

_PEM = r"-----BEGIN[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----"
_AWS_PREFIXES = (b"A3T", b"ABIA", b"ACCA", b"AKIA", b"ASIA")
_ANTHROPIC = r"sk-ant-(?:api|admin|oat|ort)\d{2}-[A-Za-z0-9_-]{80,}"
_JWT = r"eyJ[A-Za-z0-9_=-]+\.[A-Za-z0-9_=-]+\.?[A-Za-z0-9_.+/=-]*"
# The body stops at the first `-----` (a key's base64 and headers have none): tried from each of thousands of
# BEGIN lines, a body that could run on to any END would search 16 KB per line (seconds on the event loop).
_PEM_BLOCK = _PEM + r"(?:[^-]|-(?!----)){0,16384}-----END[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----"
_SECRET_WORDS = r"(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credential)"
# a secret word, up to 20 more name characters, an assignment (= : := =>), then the value (group 1)
_SECRET_ASSIGNMENT = (
    _SECRET_WORDS + r"[A-Za-z0-9_.-]{0,20}[\"']?\s*(?::=|=>|=|:)\s*[\"']?([A-Za-z0-9+/=_\-.~!@#$%^&*]{12,200})"
)
_SECRET_ANCHORS = (
    b"passw",  # password, passwd
    b"pwd",
    b"secret",
    b"token",
    b"api_key",
    b"apikey",
    b"api-key",
    b"access_key",
    b"access-key",
    b"private_key",
    b"private-key",
    b"privatekey",
    b"credential",
)
# (country, anchors in the shape view, candidate pattern, python-stdnum module)
_NATIONAL_IDS: dict[str, tuple[tuple[bytes, ...], str, str]] = {
    "us": ((b"000-00-0000",), r"(?<![\d-])\d{3}-\d{2}-\d{4}(?![\d-])", "us.ssn"),
    "gb": ((b"000 000 0000", b"000-000-0000"), r"(?<![\d-])\d{3}([ -])\d{3}\1\d{4}(?![\d-])", "gb.nhs"),
    "de": ((b"00000000000", b"00 000 000 000"), r"(?<!\d)\d{2} ?\d{3} ?\d{3} ?\d{3}(?! ?\d)", "de.idnr"),
    "fr": (
        (b"000000000000000", b"0 00 00 00 000 000 00", b"0 00 00 0A 000 000 00"),
        r"(?<!\d)[12] ?\d{2} ?\d{2} ?(?:\d{2}|2[AB]) ?\d{3} ?\d{3} ?\d{2}(?!\d)",
        "fr.nir",
    ),
    "es": ((b"00000000A", b"00000000-A"), r"(?<![\dA-Z])\d{8}-?[A-Z](?![\dA-Za-z])", "es.dni"),
    "it": (
        (b"AAAAAA00A00A000A",),
        r"(?<![A-Z0-9])[A-Z]{6}\d{2}[A-Z]\d{2}[A-Z]\d{3}[A-Z](?![A-Z0-9])",
        "it.codicefiscale",
    ),
    "nl": ((b"000000000", b"0000.00.000"), r"(?<![\d.])\d{4}\.?\d{2}\.?\d{3}(?![\d.])", "nl.bsn"),
    "in": ((b"0000 0000 0000", b"000000000000"), r"(?<!\d)(?<!\d )\d{4} ?\d{4} ?\d{4}(?! ?\d)", "in_.aadhaar"),
    "br": ((b"000.000.000-00", b"00000000000"), r"(?<![\d.])\d{3}\.?\d{3}\.?\d{3}-?\d{2}(?![\d-])", "br.cpf"),
}
assert tuple(_NATIONAL_IDS) == NATIONAL_ID_COUNTRIES


def _secrets() -> list[Detector]:
    ds = _library
    return [
        Detector("private_key", (b"PRIVATE KEY",), (_b(_PEM_BLOCK), _b(_PEM + r"[A-Za-z0-9+/=\s:,\\-]*")), reach=16384),
        Detector("aws_access_key", _AWS_PREFIXES, ds("aws", "AWSKeyDetector", 0), back=0),
        Detector("aws_secret_key", (b"aws",), ds("aws", "AWSKeyDetector", 1), view=FOLDED, group=1, back=0),
        Detector(
            "github_token",
            (b"ghp_", b"gho_", b"ghu_", b"ghs_", b"ghr_", b"github_pat_"),
            (*ds("github_token", "GitHubTokenDetector"), _b(r"github_pat_[A-Za-z0-9_]{82}")),
            back=0,
        ),
        Detector(
            "gitlab_token",
            (b"glpat-", b"gldt-", b"glft-", b"glsoat-", b"glrt-", b"GR1348941", b"glcbt-", b"glimt-"),
            ds("gitlab_token", "GitLabTokenDetector"),
            back=0,
        ),
        Detector("slack_token", (b"xox",), ds("slack", "SlackDetector", 0), view=FOLDED, back=0),
        Detector("slack_webhook", (b"hooks.slack.com",), ds("slack", "SlackDetector", 1), view=FOLDED, back=8),
        Detector("stripe_key", (b"sk_live_", b"rk_live_"), ds("stripe", "StripeDetector"), back=0),
        Detector(
            "openai_key",
            (b"T3BlbkFJ", b"sk-proj-", b"sk-svcacct-", b"sk-admin-"),
            (*ds("openai", "OpenAIDetector"), _b(r"sk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{40,}")),
        ),
        Detector("anthropic_key", (b"sk-ant-",), (_b(_ANTHROPIC),), back=0),
        Detector("google_api_key", (b"AIza",), (_b(r"AIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])"),), back=0),
        Detector("sendgrid_key", (b"SG.",), ds("sendgrid", "SendGridDetector"), back=0),
        Detector("twilio_key", (b"AC", b"SK"), ds("twilio", "TwilioKeyDetector"), back=0),
        Detector("mailchimp_key", (b"-us",), ds("mailchimp", "MailchimpDetector"), back=32),
        Detector("square_oauth", (b"sq0csp-",), ds("square_oauth", "SquareOAuthDetector"), back=0),
        Detector("azure_storage_key", (b"AccountKey=",), ds("azure_storage_key", "AzureStorageKeyDetector"), back=0),
        Detector("pypi_token", (b"pypi-AgE",), ds("pypi_token", "PypiTokenDetector"), back=0),
        Detector("npm_token", (b"npm_",), (_b(r"npm_[A-Za-z0-9]{36}(?![A-Za-z0-9])"),), back=0),
        # detect-secrets' JWT pattern with a greedy tail, so the signature is redacted too; its own validator
        Detector("jwt", (b"eyJ",), (_b(_JWT),), valid=_jwt, back=0),
        Detector(
            "url_credentials", (b"://",), ds("basic_auth", "BasicAuthDetector"), group=1, valid=_url_password, back=0
        ),
        Detector(
            "secret_assignment",
            _SECRET_ANCHORS,
            (_b(_SECRET_ASSIGNMENT, re.IGNORECASE),),
            view=FOLDED,
            group=1,
            valid=_assigned_secret,
            back=0,
        ),
    ]


def _personal(regions: tuple[str, ...]) -> list[Detector]:
    email = r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![A-Za-z0-9-])"  # noqa: E501
    phone = r"(?<![\w+.-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]\d{1,8}){0,5}(?!\w|[.-]\d)"
    return [
        Detector("email", (b"@",), (_b(email),), valid=_email, around=(64, 256)),
        Detector(
            "payment_card",
            (b"0000",),
            (_b(r"(?<![\d-])\d{4}[ -]?\d{4,6}[ -]?\d{4,5}(?:[ -]?\d{1,4}){0,2}(?![\d-])"),),
            view=SHAPE,
            valid=_card,
            around=(24, 32),
        ),
        Detector(
            "iban",
            (b"AA00",),
            (_b(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![A-Za-z0-9])"),),
            view=SHAPE,
            valid=_iban,
            back=0,
        ),
        Detector(
            "phone",
            (b"+0", b"(000)", b"000-000-0000", b"000.000.0000", b"000 000 0000"),
            (_b(phone),),
            view=SHAPE,
            valid=_phone(regions),
            around=(8, 32),
        ),
    ]


def _national_ids() -> list[Detector]:
    return [
        Detector(f"national_id_{country}", anchors, (_b(pattern),), view=SHAPE, valid=_stdnum(module), around=(8, 24))
        for country, (anchors, pattern, module) in _NATIONAL_IDS.items()
    ]


@lru_cache(maxsize=8)
def all_detectors(phone_regions: tuple[str, ...] = ("US",)) -> tuple[Detector, ...]:
    """Every detector, most specific first (an overlapping finding of a later one is dropped); built once."""
    personal = _personal(phone_regions)  # email, payment card, iban, phone
    return (*_secrets(), *personal[1:3], *_national_ids(), personal[3], personal[0])


def detectors_for(ids: Sequence[str], phone_regions: tuple[str, ...] = ("US",)) -> tuple[Detector, ...]:
    """The detectors with these ids, in catalogue order."""
    wanted = set(ids)
    return tuple(d for d in all_detectors(phone_regions) if d.id in wanted)
