"""The value types of gateway.yaml's schema (gateway/config.py), each with its rule and its message.

YAML scalars and `${VAR}` strings are read as the gateway always read them: numbers from strings (env values
are strings), no `true` where a number belongs, yes/no/on/off as booleans, numbers where text belongs as text.
A rule's message is the second half of a config error; gateway/config_yaml.py puts the YAML path before it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, model_validator

from gateway.dlp import DETECTOR_IDS

PIPELINE_STAGES = ("auth", "key_mapping", "rate_limit", "budget", "dlp", "route", "usage_log")  # the only order
REQUIRED_STAGES = frozenset({"auth", "route"})
EFFORTS = ("minimal", "low", "medium", "high", "xhigh", "max")  # OpenAI's reasoning_effort values


class Section(BaseModel):
    """A mapping of gateway.yaml: frozen, unknown keys refused; `key: ~` (or `section:` alone) means the default."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        if data is None:
            return {}
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


def rule(ok: Callable[[Any], bool], problem: str) -> AfterValidator:
    """A check on a parsed value; `problem` is formatted with the value as `v`: `rule(ok, "{v} is not a port")`."""

    def check(value: Any) -> Any:
        if not ok(value):
            raise ValueError(problem.format(v=value))
        return value

    return AfterValidator(check)


def one_of(allowed: tuple[str, ...], what: str = "") -> AfterValidator:
    """One of `allowed`: `'maybe' is not one of open, closed`, or with `what`: `'x' is not a provider type (...)`."""
    listed = ", ".join(allowed)
    return rule(
        lambda v: v in allowed, f"{{v!r}} is not {what} ({listed})" if what else f"{{v!r}} is not one of {listed}"
    )


def each_of(allowed: tuple[str, ...]) -> AfterValidator:
    """A list whose every item is one of `allowed`; the error names the list: `dlp.bypass_roles: 'root' is not ...`."""

    def check(items: tuple[str, ...]) -> tuple[str, ...]:
        if unknown := [item for item in items if item not in allowed]:
            raise ValueError(f"{unknown[0]!r} is not one of {', '.join(allowed)}")
        return items

    return AfterValidator(check)


def _no_bool(kind: str) -> BeforeValidator:
    def check(value: Any) -> Any:
        if isinstance(value, bool):  # pydantic's lax mode would read `true` as 1
            raise ValueError(f"expected {kind}, got {value!r}")
        return value

    return BeforeValidator(check)


def _as_bool(value: Any) -> bool:
    text = str(value).strip().lower()  # env values are strings; YAML 1.1 reads yes/no/on/off itself
    if isinstance(value, bool) or text in ("true", "1", "yes", "on", "false", "0", "no", "off"):
        return value if isinstance(value, bool) else text in ("true", "1", "yes", "on")
    raise ValueError(f"expected true or false, got {value!r}")


def _regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{pattern!r} is not a regular expression ({exc})") from None
    return pattern


def _networks(raw: Any) -> tuple[str, ...]:
    """A list of CIDRs (or single addresses), each checked with ipaddress; a comma-separated string from the env."""
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple):
        raise ValueError(f"expected a list of CIDRs like 10.0.0.0/8, got {type(raw).__name__}")
    networks = []
    for item in items:
        try:
            networks.append(str(ipaddress.ip_network(str(item).strip(), strict=False)))
        except ValueError:
            raise ValueError(f"{item!r} is not an address or CIDR (e.g. 10.0.0.0/8, ::1/128)") from None
        if networks[-1].endswith("/0"):  # every peer a proxy: any client could name itself in X-Forwarded-For
            raise ValueError(f"{item!r} trusts every address; list your proxies' addresses (e.g. 10.0.0.0/8)")
    return tuple(networks)


def _pipeline(raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list | tuple) or not all(isinstance(s, str) for s in raw):
        raise ValueError("expected a list of stage names")
    if unknown := [name for name in raw if name not in PIPELINE_STAGES]:
        raise ValueError(f"unknown stage {unknown[0]!r} (stages: {', '.join(PIPELINE_STAGES)})")
    if missing := sorted(REQUIRED_STAGES - set(raw)):
        raise ValueError(f"stage {missing[0]!r} is required")
    if list(raw) != [s for s in PIPELINE_STAGES if s in raw]:
        raise ValueError(f"stages must keep the order {' -> '.join(PIPELINE_STAGES)}")
    return tuple(raw)


def _regions(regions: tuple[str, ...]) -> tuple[str, ...]:
    if odd := [r for r in regions if not re.fullmatch(r"[A-Z]{2}", r)]:
        raise ValueError(f"{odd[0]!r} is not a two-letter region code such as US or GB")
    if regions:
        import phonenumbers  # only when regions are given: 60 ms at start otherwise spent for nothing

        if unknown := [r for r in regions if r not in phonenumbers.SUPPORTED_REGIONS]:
            raise ValueError(f"{unknown[0]!r} is not a region libphonenumber knows (the UK is GB)")
    return regions


def _key_in(allowed: tuple[str, ...]) -> AfterValidator:
    return rule(lambda v: v in allowed, f"unknown key (allowed: {', '.join(sorted(allowed))})")


def _nonblank(problem: str) -> AfterValidator:
    return rule(lambda v: bool(v.strip()), problem)


def _text(value: Any) -> Any:
    if isinstance(value, bytes):  # YAML's !!binary: pydantic's lax mode would take the bytes as text
        raise ValueError(f"expected str, got {value!r}")
    return str(value) if isinstance(value, int | float) else value  # `host: 10` as text


Str = Annotated[str, BeforeValidator(_text)]
Int = Annotated[int, _no_bool("int")]
# Seconds and amounts: a negative one has no meaning, and NaN compares false with everything (a NaN monthly
# limit would never be reached, a NaN cool-down never end).
Float = Annotated[float, _no_bool("float"), rule(lambda v: v >= 0, "must be 0 or more, got {v!r}")]
Bool = Annotated[bool, BeforeValidator(_as_bool)]
Positive = Annotated[int, _no_bool("int"), rule(lambda v: v > 0, "must be positive, got {v!r}")]
PositiveFloat = Annotated[float, _no_bool("float"), rule(lambda v: v > 0, "must be positive, got {v!r}")]
NonNegative = Annotated[int, _no_bool("int"), rule(lambda v: v >= 0, "must be 0 or more, got {v}")]
Port = Annotated[int, _no_bool("int"), rule(lambda v: 0 <= v <= 65535, "{v} is not a TCP port")]
Cost = Annotated[float, _no_bool("float"), rule(lambda v: v >= 0, "a price cannot be negative")]
Lower = Annotated[Str, AfterValidator(str.lower)]
# An empty name or path: `host: ''` listened on every interface, `model: ''` (an unset `${CLAUDE_FAST_MODEL:-}`)
# failed every request upstream, an empty directory meant the checkout's root.
Given = Annotated[Str, _nonblank("empty")]
NonEmpty = Annotated[Str, _nonblank("empty (leave the key out for the default)")]
Secret = Annotated[
    Str, rule(lambda v: not v or len(v) >= 32, "needs at least 32 characters (try: openssl rand -hex 32)")
]
BaseUrl = Annotated[
    Str,
    AfterValidator(lambda v: v.rstrip("/")),
    rule(lambda v: v.startswith(("http://", "https://")), "{v!r} is not an http(s) URL"),
]
Regex = Annotated[str, AfterValidator(_regex)]
Networks = Annotated[tuple[str, ...], BeforeValidator(_networks)]
Pipeline = Annotated[tuple[str, ...], BeforeValidator(_pipeline)]
PhoneRegions = Annotated[tuple[str, ...], AfterValidator(_regions)]
Effort = Annotated[str, _key_in(EFFORTS)]
DetectorId = Annotated[str, _key_in(DETECTOR_IDS)]
