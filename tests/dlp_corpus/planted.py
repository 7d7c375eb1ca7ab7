"""Fake but well-formed sensitive values, made deterministically (seeded), each pasted into a few usual contexts.

Every value passes the validator a real one would (Luhn, mod 97, python-stdnum, libphonenumber, JWT structure);
none is real: keys are random, numbers are made to the rules, phones are libphonenumber's example numbers.
"""

from __future__ import annotations

import base64
import random
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import orjson
import phonenumbers
from stdnum import iban, luhn
from stdnum.br import cpf
from stdnum.de import idnr
from stdnum.es import dni
from stdnum.fr import nir
from stdnum.gb import nhs
from stdnum.in_ import aadhaar
from stdnum.it import codicefiscale
from stdnum.nl import bsn
from stdnum.us import ssn

ALNUM = string.ascii_letters + string.digits
B64 = ALNUM + "+/"
URLSAFE = ALNUM + "_-"
HEX = "0123456789abcdef"


@dataclass(frozen=True)
class Sample:
    detector: str
    value: str
    text: str


CONTEXTS = (
    "here is what I have: {v} -- can you see why it fails?",
    'config = {{"value": "{v}", "retries": 3}}',
    "2026-11-29T11:30:00.123Z INFO worker-3 handled job 4711 for {v} in 12 ms",
    "# notes\n- {v}\n- remember to rotate\n",
)
SECRET_CONTEXTS = {  # detectors whose patterns need an assignment around the value
    "aws_secret_key": ('aws_secret_access_key = "{v}"', "AWS_SECRET_KEY: '{v}'"),
    "secret_assignment": ("DB_PASSWORD={v}", 'client_secret: "{v}"', "api_key = '{v}'  # prod"),
    "url_credentials": ("DATABASE_URL=postgres://app:{v}@db.internal:5432/app", "git clone https://bot:{v}@git.corp/x"),
}


def _pick(rng: random.Random, chars: str, n: int) -> str:
    return "".join(rng.choice(chars) for _ in range(n))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _until(rng: random.Random, make: Callable[[random.Random], str], valid: Callable[[str], bool]) -> str:
    while not valid(value := make(rng)):
        pass
    return value


def _card(rng: random.Random, prefix: str, length: int, groups: tuple[int, ...], sep: str) -> str:
    body = prefix + _pick(rng, string.digits, length - len(prefix) - 1)
    digits = body + luhn.calc_check_digit(body)
    out, at = [], 0
    for g in groups:
        out.append(digits[at : at + g])
        at += g
    return sep.join(out)


def _iban(rng: random.Random, country: str, bban: Callable[[random.Random], str]) -> str:
    def make(r: random.Random) -> str:
        b = bban(r)
        return country + iban.calc_check_digits(country + "00" + b) + b

    return iban.format(_until(rng, make, iban.is_valid))


def _jwt(rng: random.Random) -> str:
    header = _b64url(orjson.dumps({"alg": "HS256", "typ": "JWT"}))
    payload = _b64url(orjson.dumps({"sub": _pick(rng, string.digits, 8), "iat": 1795392989}))
    return f"{header}.{payload}.{_b64url(rng.randbytes(32))}"


def _pem(rng: random.Random) -> str:
    lines = [_pick(rng, B64, 64) for _ in range(6)]
    return "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(lines) + "\n-----END RSA PRIVATE KEY-----"


def _phones() -> list[str]:
    kinds = (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE)
    out = []
    for region in ("US", "GB", "DE", "FR", "ES", "IT", "NL", "IN", "BR", "JP", "AU", "CA"):
        for kind in kinds:
            number = phonenumbers.example_number_for_type(region, kind)
            out.append(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL))
    us = phonenumbers.example_number_for_type("US", phonenumbers.PhoneNumberType.FIXED_LINE)
    out.append(phonenumbers.format_number(us, phonenumbers.PhoneNumberFormat.NATIONAL))  # (201) 555-0123
    return out


def _national_ids(rng: random.Random) -> dict[str, list[str]]:
    digits = string.digits

    def nir_number(r: random.Random) -> str:
        n = r.choice("12") + _pick(r, digits, 12)
        return nir.format(n + nir.calc_check_digits(n))

    def cf(r: random.Random) -> str:
        first = _pick(r, string.ascii_uppercase, 6) + _pick(r, digits, 2) + r.choice("ABCDEHLMPRST")
        first += f"{r.randint(1, 28):02d}" + r.choice("ABCDEFGHILM") + _pick(r, digits, 3)
        return first + codicefiscale.calc_check_digit(first)

    def dni_number(r: random.Random) -> str:
        n = _pick(r, digits, 8)
        return n + dni.calc_check_digit(n)

    return {
        "us": [
            _until(
                rng, lambda r: f"{r.randint(1, 665):03d}-{r.randint(1, 99):02d}-{r.randint(1, 9999):04d}", ssn.is_valid
            )
            for _ in range(4)
        ],
        "gb": [nhs.format(_until(rng, lambda r: _pick(r, digits, 10), nhs.is_valid)) for _ in range(4)],
        "de": [_until(rng, lambda r: r.choice("123456789") + _pick(r, digits, 10), idnr.is_valid) for _ in range(4)],
        "fr": [_until(rng, nir_number, nir.is_valid) for _ in range(4)],
        "es": [dni_number(rng) for _ in range(4)],
        "it": [_until(rng, cf, codicefiscale.is_valid) for _ in range(4)],
        "nl": [_until(rng, lambda r: _pick(r, digits, 9), bsn.is_valid) for _ in range(4)],
        "in": [
            aadhaar.format(_until(rng, lambda r: r.choice("23456789") + _pick(r, digits, 11), aadhaar.is_valid))
            for _ in range(4)
        ],
        "br": [cpf.format(_until(rng, lambda r: _pick(r, digits, 11), cpf.is_valid)) for _ in range(4)],
    }


def values(seed: int = 22) -> dict[str, list[str]]:
    """detector id -> a few planted values."""
    r = random.Random(seed)
    return {
        "aws_access_key": ["AKIA" + _pick(r, string.ascii_uppercase + "234567", 16) for _ in range(4)],
        "aws_secret_key": [_pick(r, B64, 40) for _ in range(3)],
        "github_token": [*("ghp_" + _pick(r, ALNUM, 36) for _ in range(3)), "github_pat_" + _pick(r, ALNUM + "_", 82)],
        "gitlab_token": ["glpat-" + _pick(r, URLSAFE, 20) for _ in range(3)],
        "slack_token": [
            f"xoxb-{_pick(r, string.digits, 12)}-{_pick(r, string.digits, 13)}-{_pick(r, ALNUM.lower(), 24)}"
            for _ in range(3)
        ],
        "slack_webhook": [
            f"https://hooks.slack.com/services/T{_pick(r, ALNUM, 8)}/B{_pick(r, ALNUM, 8)}/{_pick(r, ALNUM, 24)}"
            for _ in range(2)
        ],
        "stripe_key": ["sk_live_" + _pick(r, ALNUM, 24) for _ in range(3)],
        "openai_key": [
            "sk-proj-" + _pick(r, URLSAFE, 64),
            "sk-" + _pick(r, ALNUM, 20) + "T3BlbkFJ" + _pick(r, ALNUM, 20),
        ],
        "anthropic_key": ["sk-ant-api03-" + _pick(r, URLSAFE, 93) + "AA" for _ in range(3)],
        "google_api_key": ["AIza" + _pick(r, URLSAFE, 35) for _ in range(3)],
        "sendgrid_key": [f"SG.{_pick(r, URLSAFE, 22)}.{_pick(r, URLSAFE, 43)}" for _ in range(2)],
        "twilio_key": ["SK" + _pick(r, HEX, 32), "AC" + _pick(r, HEX, 32)],
        "mailchimp_key": [_pick(r, HEX, 32) + "-us12" for _ in range(2)],
        "square_oauth": ["sq0csp-" + _pick(r, URLSAFE, 43) for _ in range(2)],
        "azure_storage_key": ["AccountKey=" + _pick(r, B64, 86) + "==" for _ in range(2)],
        "pypi_token": ["pypi-AgEIcHlwaS5vcmc" + _pick(r, URLSAFE, 80) for _ in range(2)],
        "npm_token": ["npm_" + _pick(r, ALNUM, 36) for _ in range(3)],
        "jwt": [_jwt(r) for _ in range(3)],
        "private_key": [_pem(r) for _ in range(2)],
        "url_credentials": [_pick(r, ALNUM, 18) for _ in range(3)],
        "secret_assignment": [_pick(r, ALNUM, 10) + "7#Q" + _pick(r, ALNUM, 8) for _ in range(3)],
        "email": [
            f"{r.choice(['jane', 'li.wei', 'o.connor', 'm_rossi'])}{r.randint(1, 99)}@{d}"
            for d in ("corp-mail.io", "acme-gmbh.de", "mail.fr", "uni-bonn.ac.de")
        ],
        "phone": _phones(),
        "payment_card": [
            _card(r, "4", 16, (4, 4, 4, 4), " "),
            _card(r, "4", 16, (16,), ""),
            _card(r, "51", 16, (4, 4, 4, 4), "-"),
            _card(r, "2223", 16, (4, 4, 4, 4), " "),
            _card(r, "37", 15, (4, 6, 5), " "),
            _card(r, "6011", 16, (4, 4, 4, 4), " "),
        ],
        "iban": [
            _iban(r, "DE", lambda x: _pick(x, string.digits, 18)),
            _iban(r, "GB", lambda x: _pick(x, string.ascii_uppercase, 4) + _pick(x, string.digits, 14)),
            _iban(r, "NL", lambda x: _pick(x, string.ascii_uppercase, 4) + _pick(x, string.digits, 10)),
            _iban(r, "ES", lambda x: _pick(x, string.digits, 20)),
            _iban(r, "CH", lambda x: _pick(x, string.digits, 17)),
        ],
        **{f"national_id_{c}": v for c, v in _national_ids(r).items()},
    }


def samples(seed: int = 22) -> Iterator[Sample]:
    """Each planted value in each of its detector's contexts."""
    for detector, planted in values(seed).items():
        for value in planted:
            for context in SECRET_CONTEXTS.get(detector, CONTEXTS):
                yield Sample(detector, value, context.format(v=value))
