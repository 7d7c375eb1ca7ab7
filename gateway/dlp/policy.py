"""gateway.yaml's `dlp:` section, resolved once per model alias into a compiled scanner and each detector's action.

    effective action of detector D for alias A:  dlp.aliases.A.detectors.D.action
                                                 else dlp.detectors.D.action
                                                 else the default (secrets: redact, personal data: audit)
    allowlist:  built-in + dlp.detectors.D.allow + dlp.aliases.A.detectors.D.allow

The stage runs before routing, so a model id that is not an alias is resolved here by the same rules as
gateway/stages/route.py (routing.rules in order, then routing.default); an id sent straight to a provider
follows the section's own `enabled`. The place a team policy will slot in is `_rules` (a team layer between
the section's and the alias's) once keys carry a team.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.config import DetectorRule, DlpConfig, DlpPolicy, ModelAlias, RoutingConfig
from gateway.dlp import DETECTOR_IDS, default_action
from gateway.dlp.detectors import detectors_for
from gateway.dlp.scanner import Scanner

Rules = tuple[tuple[str, str, tuple[str, ...]], ...]  # (detector, action, allowlist) for each active detector
MAX_REMEMBERED_IDS = 1024  # as in the route stage: model ids come from callers, the memo stays bounded

# Values that are well-formed but public by definition: RFC 2606 / 6761 reserved domains, the address Claude
# Code writes into every commit it co-authors, SSH remotes, and the example keys of AWS's documentation.
BUILTIN_ALLOW: dict[str, tuple[str, ...]] = {
    "email": (
        r"@(?:[\w-]+\.)*example\.(?:com|org|net)$",
        r"\.(?:example|test|invalid|localhost)$",
        r"^noreply@anthropic\.com$",
        r"@users\.noreply\.github\.com$",
        r"^git@",
    ),
    "aws_access_key": (r"EXAMPLE$",),
    "aws_secret_key": (r"EXAMPLEKEY$",),
}


@dataclass(frozen=True, slots=True)
class Inspector:
    """A ready policy: the scanner of its active detectors and what each one's findings lead to."""

    scanner: Scanner
    actions: Mapping[str, str]  # detector id -> block | redact | audit


class PolicyBook:
    """Which Inspector (or None: DLP off) applies to a request, by the model it names; built at startup."""

    def __init__(self, cfg: DlpConfig, models: Mapping[str, ModelAlias], routing: RoutingConfig) -> None:
        self._cfg = cfg
        built: dict[Rules, Inspector] = {}  # aliases with equal rules share one Inspector
        self._aliases = {name: self._inspector(self._cfg.aliases.get(name), built) for name in models}
        self._direct = self._inspector(None, built)  # model ids routed straight to a provider
        self._rules = [(re.compile(fnmatch.translate(r.match)), r) for r in routing.rules]
        self._default = routing.default
        self._memo: dict[str, Inspector | None] = {}

    def for_model(self, model: str) -> Inspector | None:
        if model in self._aliases:
            return self._aliases[model]
        if model in self._memo:
            return self._memo[model]
        found = self._resolve(model)
        if len(self._memo) < MAX_REMEMBERED_IDS:
            self._memo[model] = found
        return found

    def _resolve(self, model: str) -> Inspector | None:
        for pattern, rule in self._rules:
            if pattern.match(model):
                return self._aliases[rule.alias] if rule.alias is not None else self._direct
        return self._aliases[self._default] if self._default is not None else None  # None: route answers 404

    def _inspector(self, policy: DlpPolicy | None, built: dict[Rules, Inspector]) -> Inspector | None:
        enabled = policy.enabled if policy is not None and policy.enabled is not None else self._cfg.enabled
        if not enabled:
            return None
        rules = tuple((d, action, allow) for d, action, allow in self._rules_of(policy) if action != "off")
        if rules not in built:
            detectors = detectors_for([d for d, _, _ in rules], self._cfg.phone_regions)
            allow = {d: [re.compile(a) for a in allow] for d, _, allow in rules}
            built[rules] = Inspector(Scanner(detectors, allow), {d: action for d, action, _ in rules})
        return built[rules]

    def _rules_of(self, policy: DlpPolicy | None) -> list[tuple[str, str, tuple[str, ...]]]:
        own: Mapping[str, DetectorRule] = policy.detectors if policy is not None else {}
        out = []
        for detector in DETECTOR_IDS:
            section, alias = self._cfg.detectors.get(detector), own.get(detector)
            action = (
                (alias.action if alias else None)
                or (section.action if section else None)
                or default_action(detector, self._cfg.national_ids)
            )
            allow = BUILTIN_ALLOW.get(detector, ()) + (section.allow if section else ())
            allow += alias.allow if alias else ()
            out.append((detector, action, allow))
        return out
