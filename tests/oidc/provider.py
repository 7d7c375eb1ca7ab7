"""A real OpenID provider for the tests: panva's oidc-provider (OpenID Certified) run by tests/oidc/provider.mjs.

.ci/run installs oidc-provider into .ci/node_modules. Without it (or without node) the tests fail in CI
(`CI` set) and skip, saying what to install, on a developer's machine.

The provider's signing keys are made here, so a test can rotate them (`rotate`: a restart with a new JWKS, the
old key gone) and can sign hostile tokens with the provider's own key (`sign`: expired, wrong issuer...).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from gateway.sso.people import client_secret_basic
from tests.net import free_port

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("provider.mjs")
NODE_MODULES = REPO / ".ci" / "node_modules"
CLIENT_ID, CLIENT_SECRET = "ai-gateway", "tests-only-client-secret"
SECRET_ENV = "GATEWAY_SSO_CLIENT_SECRET"
CALLER_AUDIENCE, MANAGEMENT_AUDIENCE = "urn:gateway:api", "urn:gateway:management"

# People who sign in through the browser (devInteractions: any password); their groups map to roles in the tests.
ACCOUNTS = {
    "alice": {"email": "alice@example.com", "groups": ["developers", "gateway-admins"], "team": "platform"},
    "victor": {"email": "victor@example.com", "groups": ["finance"], "team": "finance"},
    "mallory": {"email": "mallory@example.com", "groups": ["interns"]},
}
# Machine clients whose client-credentials tokens carry these claims (a developer's CLI, an ops script).
CLIENT_CLAIMS = {
    "alice-cli": {"email": "alice@example.com"},
    "ghost-cli": {"email": "ghost@example.com"},
    "ops-cli": {"email": "ops@example.com", "groups": ["gateway-admins"]},
    "finance-cli": {"email": "finance@example.com", "groups": ["finance"]},
    "intern-cli": {"email": "intern@example.com", "groups": ["interns"]},
}


def require_provider() -> str:
    """The node binary, once oidc-provider is installed; fails in CI and skips elsewhere when it is not."""
    node = shutil.which("node")
    if node and (NODE_MODULES / "oidc-provider" / "package.json").is_file():
        return node
    why = "oidc-provider not found in .ci/node_modules (npm install --prefix .ci --no-save oidc-provider; .ci/run does)"
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


@dataclass
class SigningKey:
    kid: str
    private: rsa.RSAPrivateKey = field(repr=False)

    @classmethod
    def make(cls, kid: str) -> SigningKey:
        return cls(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048))

    def jwk(self) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(self.private))
        return found | {"kid": self.kid, "alg": "RS256", "use": "sig"}


class OidcProvider:
    """oidc-provider on 127.0.0.1, registered with a gateway callback on `gateway_port`."""

    def __init__(self, tmp: Path, gateway_port: int) -> None:
        self.node = require_provider()
        self.port, self.gateway_port, self.tmp = free_port(), gateway_port, tmp
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.keys = [SigningKey.make("key-1")]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def redirect_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}/console/sso/callback"

    def config(self) -> dict[str, Any]:
        machine = {"grant_types": ["client_credentials"], "response_types": [], "redirect_uris": [], "scope": "api"}
        return {
            "issuer": self.issuer,
            "port": self.port,
            "jwks": {"keys": [k.jwk() for k in self.keys]},
            "clients": [
                {
                    "client_id": CLIENT_ID,
                    "client_secret": CLIENT_SECRET,
                    "redirect_uris": [self.redirect_url],
                    "grant_types": ["authorization_code"],
                    "response_types": ["code"],
                    "scope": "openid email groups",
                },
                *({"client_id": cid, "client_secret": f"{cid}-secret", **machine} for cid in CLIENT_CLAIMS),
            ],
            "accounts": ACCOUNTS,
            "clientClaims": CLIENT_CLAIMS,
        }

    def start(self) -> None:
        path = self.tmp / f"oidc-{self.port}.json"
        path.write_text(json.dumps(self.config()))
        with (self.tmp / "oidc-provider.log").open("ab") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                [self.node, str(SCRIPT), str(path), str(REPO / ".ci") + "/"], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.issuer + "/.well-known/openid-configuration", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"oidc-provider did not start; see {self.tmp / 'oidc-provider.log'}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def rotate(self) -> SigningKey:
        """Key rotation at the provider: restart it signing with a new key, the old one gone from its JWKS."""
        old = self.keys[0]
        self.stop()
        self.keys = [SigningKey.make(f"key-{int(old.kid.split('-')[1]) + 1}")]
        self.start()
        return old

    async def client_token(self, client_id: str, audience: str) -> str:
        """An access token (a JWT) for a machine client, minted by the provider for `audience`."""
        form = {"grant_type": "client_credentials", "scope": "api", "resource": audience}
        auth = {"Authorization": client_secret_basic(client_id, f"{client_id}-secret")}
        async with aiohttp.ClientSession() as http, http.post(self.issuer + "/token", data=form, headers=auth) as resp:
            body = await resp.json()
            assert resp.status == 200, body
            return str(body["access_token"])

    def sign(self, claims: dict[str, Any], *, key: SigningKey | None = None, **headers: Any) -> str:
        """A token signed with the provider's own key (or `key`): for hostile variants the provider would not mint."""
        key = key or self.keys[0]
        now = int(time.time())
        payload = {"iss": self.issuer, "iat": now, "exp": now + 300, **claims}
        return jwt.encode(payload, key.private, algorithm="RS256", headers={"kid": key.kid, **headers})
