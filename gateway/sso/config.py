"""The `sso:` and `caller_jwt:` sections of gateway.yaml, declared as pydantic models.

    sso:
      issuer: https://keycloak.example.com/realms/acme
      client_id: ai-gateway
      client_secret_env: GATEWAY_SSO_CLIENT_SECRET     # the secret itself stays in the environment
      redirect_url: https://gateway.example.com/console/sso/callback
      role_claim: groups
      roles: {gateway-admins: admin, team-leads: team_admin, finance: viewer, developers: user}
      team_claim: team
      default_role: null                               # unmapped people are refused
    caller_jwt:
      issuer: https://keycloak.example.com/realms/acme
      audience: ai-gateway-api
      user_claim: email

Errors are ConfigError lines naming the YAML path (`sso.roles.finance: Input should be 'admin', ...`).
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from gateway.roles import Role


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class IssuerSettings(_Strict):
    """How often an issuer's keys are read: cached for `jwks_cache_s`, and an unknown `kid` (a rotation) refetches
    them at most once per `jwks_min_refetch_s`, so a flood of made-up key ids costs the issuer nothing."""

    issuer: str = Field(min_length=1)
    jwks_cache_s: float = Field(default=300.0, gt=0)
    jwks_min_refetch_s: float = Field(default=10.0, ge=0)
    http_timeout_s: float = Field(default=10.0, gt=0)
    leeway_s: float = Field(default=30.0, ge=0)  # clock skew allowed on exp / iat / nbf

    @field_validator("issuer")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value.rstrip("/")


class SsoConfig(IssuerSettings):
    """OpenID Connect sign-in for people: the console's "Sign in with SSO" and Bearer tokens on the management API."""

    client_id: str = Field(min_length=1)
    client_secret_env: str = Field(min_length=1)  # the name of the environment variable holding the secret
    client_secret: SecretStr = SecretStr("")  # filled from client_secret_env at load; never printed
    redirect_url: str = Field(min_length=1)  # https://gateway.example.com/console/sso/callback
    scopes: tuple[str, ...] = ("openid", "email", "profile", "groups")
    subject_claim: str = "email"  # names the person in audit entries (`sso:<value>`); `sub` when absent
    role_claim: str = "groups"
    roles: dict[str, Role] = Field(default_factory=dict)  # claim value -> role; the strongest match wins
    team_claim: str | None = None  # a claim holding the person's team name
    default_role: Role | None = None  # for people no claim value maps; None: they are refused
    api_audience: str | None = None  # also accepted as `aud` of Bearer tokens on the management API
    # A console session signed in by SSO ends this long after sign-in (never later than console.session_max_age_s):
    # the role and team it holds were read from the claims at sign-in, so a person removed from a group at the
    # provider keeps that group's role in the console until then (the management API re-reads every token).
    session_max_age_s: int = Field(default=3600, gt=0)


class CallerJwtConfig(IssuerSettings):
    """JWTs from the company's issuer accepted on the model routes, as the gateway user named by `user_claim`."""

    audience: str = Field(min_length=1)
    user_claim: str = "email"


class IdentityConfig(_Strict):
    """Both sections; either may be absent (then that way of signing in is off)."""

    sso: SsoConfig | None = None
    caller_jwt: CallerJwtConfig | None = None


def with_client_secret(sso: SsoConfig, environ: Mapping[str, str]) -> SsoConfig:
    """`sso` with its client secret read from the variable `client_secret_env` names; ValueError when it is unset."""
    if not (secret := environ.get(sso.client_secret_env, "")):
        raise ValueError(f"sso.client_secret_env: the environment variable {sso.client_secret_env} is not set")
    return sso.model_copy(update={"client_secret": SecretStr(secret)})
