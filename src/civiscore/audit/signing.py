"""The audit signing key: an Ed25519 key pair that signs the heads of the audit log.

The private key lives in a file outside the database (``<home>/audit-signing.key``, or wherever
``CIVISCORE_AUDIT_KEY_FILE`` points), so someone who can write to the database alone cannot sign
a rewritten log. The public key (``<home>/audit-signing.pub``) is not secret: hand it to
auditors, who verify the log with it and nothing else.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIGNING_KEY_FILE = "audit-signing.key"
PUBLIC_KEY_FILE = "audit-signing.pub"
KEY_FILE_ENV = "CIVISCORE_AUDIT_KEY_FILE"
KEY_ID_CHARS = 16

_HEAD_DOMAIN = "civiscore-audit-head"


class SigningKeyMissing(FileNotFoundError):
    """The private audit signing key is absent: the log can be written but not signed."""


class PublicKeyMissing(FileNotFoundError):
    """The public audit key is absent: the log's signed heads cannot be checked."""


class BadKeyFile(ValueError):
    """A key file exists but does not hold an Ed25519 key in the expected PEM format."""


def signing_key_path(home: Path) -> Path:
    """``CIVISCORE_AUDIT_KEY_FILE`` or ``<home>/audit-signing.key``.

    The variable lets operators keep the private key on a secrets volume, away from the home
    that holds the database and its backups.
    """
    env = os.environ.get(KEY_FILE_ENV)
    return Path(env) if env else home / SIGNING_KEY_FILE


def public_key_path(home: Path) -> Path:
    """``<home>/audit-signing.pub``: always in the home, since it is not secret."""
    return home / PUBLIC_KEY_FILE


def create_signing_key(home: Path) -> tuple[Path, bool]:
    """Create the signing key pair unless the private key exists; returns its path and whether
    it is new.

    An existing private key is never overwritten: heads already signed with it would no longer
    verify. A missing public key is re-derived from the private one.

    Raises:
        BadKeyFile: the existing key files are unreadable or do not belong together.
    """
    path = signing_key_path(home)
    created = False
    if path.exists():
        private = load_signing_key(home)
    else:
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # O_EXCL: if another process created the key meanwhile, keep theirs.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            private = load_signing_key(home)
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
            created = True
    _ensure_public_key(home, private.public_key(), path)
    return path, created


def _ensure_public_key(home: Path, public: Ed25519PublicKey, private_path: Path) -> None:
    pub_path = public_key_path(home)
    if pub_path.exists():
        if _raw(load_public_key(pub_path)) != _raw(public):
            raise BadKeyFile(
                f"public key {pub_path} does not belong to the signing key {private_path}; "
                "restore the matching pair from backup, or move the .pub file away and run "
                "`civiscore init` to derive it again"
            )
        return
    pub_path.parent.mkdir(parents=True, exist_ok=True)
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # Write then rename, so an auditor never copies a half-written public key.
    tmp = pub_path.with_name(pub_path.name + ".tmp")
    tmp.write_bytes(pem)
    os.replace(tmp, pub_path)


def load_signing_key(home: Path) -> Ed25519PrivateKey:
    """The private audit signing key of ``home``.

    Raises:
        SigningKeyMissing: no key file; the message names the path and the fix.
        BadKeyFile: the file is not an unencrypted PEM PKCS8 Ed25519 key.
    """
    path = signing_key_path(home)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise SigningKeyMissing(
            f"audit signing key {path} not found; run `civiscore --home {home} init` to create "
            f"one, or point {KEY_FILE_ENV} at the key this log was signed with"
        ) from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise BadKeyFile(
            f"audit signing key {path} is not an unencrypted PEM (PKCS8) private key; "
            "restore it from backup"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise BadKeyFile(
            f"audit signing key {path} is a {type(key).__name__}, not an Ed25519 key; "
            "restore it from backup"
        )
    return key


def load_public_key(source: Path) -> Ed25519PublicKey:
    """The public audit key from a home directory or from a ``.pub`` file.

    Raises:
        PublicKeyMissing: no such file; the message names the path and the fix.
        BadKeyFile: the file is not a PEM SubjectPublicKeyInfo Ed25519 key.
    """
    path = public_key_path(source) if source.is_dir() else source
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise PublicKeyMissing(
            f"audit public key {path} not found; run `civiscore init` on the home that holds "
            "the signing key to write it, or ask its operator for the .pub file"
        ) from exc
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise BadKeyFile(
            f"audit public key {path} is not a PEM public key; copy the .pub file again"
        ) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise BadKeyFile(f"audit public key {path} is a {type(key).__name__}, not Ed25519")
    return key


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short name for a public key: the first 16 hex characters of SHA-256 of its raw bytes.

    Heads carry it so a verifier can tell "signed by another key" from "forged".
    """
    return hashlib.sha256(_raw(public_key)).hexdigest()[:KEY_ID_CHARS]


def head_message(seq: int, chain_hash: str, signed_at: dt.datetime) -> bytes:
    """The bytes a head signature covers.

    The domain line keeps a signature over a head from being valid for anything else the same
    key might ever sign.

    >>> head_message(3, "ab", dt.datetime(2025, 1, 2, 3, 4, 5))
    b'civiscore-audit-head\\n3\\nab\\n2025-01-02T03:04:05'
    """
    return f"{_HEAD_DOMAIN}\n{seq}\n{chain_hash}\n{signed_at.isoformat()}".encode()


def sign_head(
    private_key: Ed25519PrivateKey, seq: int, chain_hash: str, signed_at: dt.datetime
) -> str:
    """The hex Ed25519 signature (128 characters) of a head."""
    return private_key.sign(head_message(seq, chain_hash, signed_at)).hex()


def head_signature_valid(
    public_key: Ed25519PublicKey,
    seq: int,
    chain_hash: str,
    signed_at: dt.datetime,
    signature: str,
) -> bool:
    """Whether ``signature`` (hex) is ``public_key``'s signature of this head."""
    try:
        public_key.verify(bytes.fromhex(signature), head_message(seq, chain_hash, signed_at))
    except (InvalidSignature, ValueError):
        return False
    return True
