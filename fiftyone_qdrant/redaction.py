"""Keeping secrets (API keys, a URL's password) out of what we print, log
and raise."""

from __future__ import annotations

from typing import Optional


def url_password(url: Optional[str]) -> Optional[str]:
    """The password inside a URL (``http://user:secret@host``), a secret
    like the API key."""
    if not url:
        return None
    from urllib.parse import urlsplit

    try:
        return urlsplit(url).password
    except ValueError:
        return None


def redact(text: str, *secrets: Optional[str]) -> str:
    """``text`` with every secret (API key, URL password) replaced by ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def safe_url(url: str) -> str:
    """The URL as it may be shown: its password replaced by ***."""
    return redact(url, url_password(url))
