"""What a configuration reload swaps, and the reload itself (SIGHUP or `gateway reload`).

Handlers read the Runtime's chain once per request (the model routes through gateway/edge.py's Serving, the
others through `app[RUNTIME]`), so a request in flight keeps the chain it started with while new requests get
the new one. Aliases, routing, providers, pricing, budgets and the pipeline reload live;
the server, database, auth, usage_log and logging sections are read at start only (a change is logged as
needing a restart, and the rest of the new file still applies).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import structlog

from gateway.authentication import Authentication
from gateway.composition import Services, build_request_path
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.pipeline import Next

log = structlog.get_logger("gateway.reload")

RESTART_ONLY = ("server", "database", "auth", "usage_log", "logging", "metrics", "console", "sso", "caller_jwt")


@dataclass
class Runtime:
    """The config in force and the request path built from it (gateway/composition.py, build_request_path)."""

    config: GatewayConfig
    authenticate: Authentication  # auth and key mapping (model routes first, /v1/models, /metrics, admin API...)
    served: Next  # the stages after auth and key mapping, then the relay (model routes)
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))  # when `config` was read (console)


def build_runtime(cfg: GatewayConfig, svc: Services) -> Runtime:
    path = build_request_path(cfg, svc)
    return Runtime(cfg, path.authenticate, path.served)


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
        # and until then the running ones stay in force: a handler reads runtime.config (/metrics' require_admin,
        # the body limit), which must not apply half a section the log says is waiting for the restart
        new = new.model_copy(update={name: getattr(old, name) for name in changed})
    svc.apply_config(new)
    fresh = build_runtime(new, svc)
    runtime.config, runtime.authenticate, runtime.served = new, fresh.authenticate, fresh.served
    runtime.loaded_at = fresh.loaded_at
    log.info("config_reloaded", source=new.source, aliases=sorted(new.models))
    return True
