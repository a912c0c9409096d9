"""Fixtures for the deployment files: the repo root, pyproject's exact pins, a secret scanner."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Credentials that must never be committed: AWS key ids / secret assignments, private keys, literal tokens.
SECRET_PATTERNS = [
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    re.compile(r"(?i)aws_secret_access_key\s*[:=]\s*\S+"),
    re.compile(r"(?i)aws_access_key_id\s*[:=]\s*\S+"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"(?i)RAY_AUTH_TOKEN\s*[:=]\s*['\"]?[0-9a-f]{16,}"),
]


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def pins() -> dict[str, str]:
    """``{"torch": "2.14.1", "ray": "2.60.0", ...}``: every ``==`` pin of pyproject's dependencies."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    out = {}
    for dep in deps:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*==\s*([^\s;,]+)\s*", dep)
        if m:
            out[m.group(1).lower()] = m.group(3)
    assert "ray" in out and "torch" in out, "pyproject must pin ray and torch exactly"
    return out


@pytest.fixture(scope="session")
def find_secrets():
    """``find_secrets(text) -> list[str]``: credential-looking strings in ``text``."""
    return _find_secrets


@pytest.fixture(scope="session")
def pinned_in():
    """``pinned_in(text) -> {name: version}``: the ``name==version`` pins written in ``text``."""
    return _pinned_in


def _find_secrets(text: str) -> list[str]:
    return [m.group(0) for pat in SECRET_PATTERNS for m in pat.finditer(text)]


def _pinned_in(text: str) -> dict[str, str]:
    return {m.group(1).lower(): m.group(2)
            for m in re.finditer(r"([A-Za-z][A-Za-z0-9_.-]*)(?:\[[^\]]*\])?==([0-9][^\s\"'\\,;]*)", text)}
