"""The tamper-evident audit log: every submission, check, appeal step, rulebook publication,
key change and stop-switch use, hash-chained and signed.

``signing`` holds the Ed25519 key that signs the log's heads; ``log`` writes, reads and
verifies the log itself.
"""

from civiscore.audit.log import (
    AuditEvent,
    AuditLog,
    AuditLogBroken,
    AuditRecord,
    Problem,
    RawIdRefused,
    SignedHead,
    VerifyReport,
    anchor_path,
)
from civiscore.audit.signing import (
    BadKeyFile,
    PublicKeyMissing,
    SigningKeyMissing,
    create_signing_key,
    key_id,
    load_public_key,
    load_signing_key,
)

__all__ = [
    "AuditEvent",
    "AuditLog",
    "AuditLogBroken",
    "AuditRecord",
    "BadKeyFile",
    "Problem",
    "PublicKeyMissing",
    "RawIdRefused",
    "SignedHead",
    "SigningKeyMissing",
    "VerifyReport",
    "anchor_path",
    "create_signing_key",
    "key_id",
    "load_public_key",
    "load_signing_key",
]
