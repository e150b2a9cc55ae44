"""The civiscore home: where the store, the pseudonym key and rejects files live."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

DEFAULT_HOME = "civiscore-data"
KEY_FILE = "pseudonym.key"


class KeyMissing(FileNotFoundError):
    """The pseudonym key is absent: without it no raw ID can be matched to a subject."""


def resolve_home(option: str | Path | None) -> Path:
    """``--home``, else ``CIVISCORE_HOME``, else ``./civiscore-data``."""
    if option:
        return Path(option)
    return Path(os.environ.get("CIVISCORE_HOME", DEFAULT_HOME))


def key_path(home: Path) -> Path:
    """The key lives outside the database: ``CIVISCORE_KEY_FILE`` or ``<home>/pseudonym.key``.

    Keeping it in a separate file means a copy of the store alone cannot link pseudonyms back
    to people; operators can move the key to a secrets volume with the environment variable.
    """
    env = os.environ.get("CIVISCORE_KEY_FILE")
    return Path(env) if env else home / KEY_FILE


def create_key(home: Path) -> tuple[Path, bool]:
    """Create the secret key unless one exists; returns its path and whether it is new."""
    path = key_path(home)
    if path.exists():
        return path, False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32) + "\n")
    return path, True


def load_key(home: Path) -> bytes:
    path = key_path(home)
    try:
        text = path.read_text().strip()
    except FileNotFoundError as exc:
        raise KeyMissing(
            f"pseudonym key {path} not found; run `civiscore --home {home} init`, or point "
            "CIVISCORE_KEY_FILE at the key the store was created with"
        ) from exc
    try:
        key = bytes.fromhex(text)
    except ValueError as exc:
        raise KeyMissing(f"pseudonym key {path} is not hex text; restore it from backup") from exc
    if len(key) < 32:
        raise KeyMissing(f"pseudonym key {path} is shorter than 256 bits; restore it from backup")
    return key
