"""audit log: indexes for the auditor's filters by action and by subject

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_audit_action_seq", "audit_log", ["action", "seq"])
    op.create_index("ix_audit_subject_seq", "audit_log", ["subject", "seq"])


def downgrade() -> None:
    op.drop_index("ix_audit_subject_seq", table_name="audit_log")
    op.drop_index("ix_audit_action_seq", table_name="audit_log")
