"""Data-loss prevention: find secrets and personal data in what a caller sends, before it leaves the company.

    fields.py      which strings of a request body are the caller's words (never image bytes, never signed thinking)
    detectors.py   the detectors: detect-secrets' patterns for secrets, validated patterns for personal data
    scanner.py     one pass over those strings: cheap anchors first, the detectors' patterns only near a hit
    redaction.py   stable typed placeholders, applied to the parsed body and, byte-exact, to the raw body
    policy.py      gateway.yaml's `dlp:` section resolved per model alias into a ready scanner and its actions
    findings.py    the findings table writer (request, key, user, detector, action, location; never the value)

This module holds only the catalogue (ids and default actions), so reading the config imports nothing heavy;
the detectors load detect-secrets, python-stdnum and phonenumbers when a policy first needs them.
"""

from __future__ import annotations

ACTIONS = ("block", "redact", "audit", "off")

# Secrets: patterns from detect-secrets (Yelp) where it has one, a few newer formats of our own. A secret in a
# prompt is almost never needed by the model, so the default replaces it with a placeholder.
SECRET_DETECTORS = (
    "aws_access_key",
    "aws_secret_key",
    "github_token",
    "gitlab_token",
    "slack_token",
    "slack_webhook",
    "stripe_key",
    "openai_key",
    "anthropic_key",
    "google_api_key",
    "sendgrid_key",
    "twilio_key",
    "mailchimp_key",
    "square_oauth",
    "azure_storage_key",
    "pypi_token",
    "npm_token",
    "jwt",
    "private_key",
    "url_credentials",
    "secret_assignment",
)

# Personal data: validated patterns (Luhn, mod-97, libphonenumber). Code and logs are full of legitimate
# addresses and numbers, so the default only records them.
PERSONAL_DETECTORS = ("email", "phone", "payment_card", "iban")

# National ids, one detector per country (python-stdnum validates each); on only for `dlp.national_ids`.
NATIONAL_ID_COUNTRIES = ("us", "gb", "de", "fr", "es", "it", "nl", "in", "br")
NATIONAL_ID_DETECTORS = tuple(f"national_id_{country}" for country in NATIONAL_ID_COUNTRIES)

DETECTOR_IDS = SECRET_DETECTORS + PERSONAL_DETECTORS + NATIONAL_ID_DETECTORS


def default_action(detector: str, national_ids: tuple[str, ...] = ()) -> str:
    """What a detector does when gateway.yaml says nothing about it."""
    if detector in SECRET_DETECTORS:
        return "redact"
    if detector in PERSONAL_DETECTORS:
        return "audit"
    return "audit" if detector.removeprefix("national_id_") in national_ids else "off"
