"""routing outcomes: scores of routed calls (client feedback, shadow judges) with their feature vectors

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('routing_outcomes',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('request_id', sa.String(length=128), nullable=False),
    sa.Column('tenant', sa.String(length=128), nullable=False),
    sa.Column('team', sa.String(length=128), nullable=True),
    sa.Column('key_id', sa.String(length=128), nullable=True),
    sa.Column('model', sa.String(length=200), nullable=False),
    sa.Column('score', sa.Double(), nullable=False),
    sa.Column('label', sa.String(length=32), nullable=True),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('judge', sa.String(length=200), nullable=True),
    sa.Column('feature_layout', sa.String(length=64), nullable=False),
    sa.Column('features', sa.LargeBinary(), nullable=False),
    sa.Column('predictor', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("source IN ('feedback', 'shadow')", name=op.f('ck_routing_outcomes_source')),
    sa.CheckConstraint('score >= 0 AND score <= 1', name=op.f('ck_routing_outcomes_score')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_routing_outcomes')),
    sa.UniqueConstraint('request_id', 'model', 'source', name=op.f('uq_routing_outcomes_request_id'))
    )
    op.create_index(op.f('ix_routing_outcomes_created_at'), 'routing_outcomes', ['created_at'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_routing_outcomes_created_at'), table_name='routing_outcomes')
    op.drop_table('routing_outcomes')
