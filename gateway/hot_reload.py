"""What a configuration reload swaps, and the reload itself (SIGHUP or `gateway reload`).

Handlers read `app[RUNTIME]` once per request, so a request in flight keeps the chain it started with while
new requests get the new one. Aliases, routing, providers, pricing, budgets and the pipeline reload live;
the server, database, auth, usage_log and logging sections are read at start only (a change is logged as
needing a restart, and the rest of the new file still applies).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import structlog

from gateway.composition import Services
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.pipeline import Exchange, Next, build_stages, chain
from gateway.relays import relay

log = structlog.get_logger("gateway.reload")

RESTART_ONLY = ("server", "database", "auth", "usage_log", "logging", "metrics", "console", "sso", "caller_jwt")


async def _authenticated(ex: Exchange) -> None:
    return None


AUTH_STAGES = ("auth", "key_mapping")  # read headers only: they run before the body is read


@dataclass
class Runtime:
    config: GatewayConfig
    pipeline: Next  # auth -> key mapping -> budget -> route -> usage log -> relay
    auth_pipeline: Next  # auth and key mapping only (models list, management API, and first on model routes)
    served: Next = _authenticated  # the stages after auth and key mapping, then the relay (model routes)
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))  # when `config` was read (console)


def build_runtime(cfg: GatewayConfig, svc: Services) -> Runtime:
    stages = build_stages(cfg, svc)
    auth_only = [s for name, s in zip(cfg.pipeline, stages, strict=True) if name in AUTH_STAGES]
    after_auth = [s for name, s in zip(cfg.pipeline, stages, strict=True) if name not in AUTH_STAGES]
    return Runtime(cfg, chain(stages, relay), chain(auth_only, _authenticated), chain(after_auth, relay))


def reload_config(runtime: Runtime, svc: Services, path: Path | str | None = None) -> bool:
    """Re-read the config file; on success swap it in for new requests, else keep the old one and say why."""
    old = runtime.config
    try:
        new = load_config(path or old.source)
    except ConfigError as exc:
        log.error("config_reload_refused", error=str(exc), kept=old.source)
        return False
    if changed := [name for name in RESTART_ONLY if getattr(new, name) != getattr(old, name)]:
        log.warning("config_needs_restart", sections=changed, hint="these sections apply at the next start")
    svc.apply_config(new)
    fresh = build_runtime(new, svc)
    runtime.config, runtime.pipeline, runtime.auth_pipeline = new, fresh.pipeline, fresh.auth_pipeline
    runtime.served = fresh.served
    runtime.loaded_at = fresh.loaded_at
    log.info("config_reloaded", source=new.source, aliases=sorted(new.models))
    return True
