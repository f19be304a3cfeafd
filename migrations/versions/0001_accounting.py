"""accounting: usage records, daily rollups, price versions

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Exact amounts: NUMERIC on PostgreSQL; on SQLite an INTEGER count of 10^-10 units (gateway/accounting/money.py).
MONEY = sa.Numeric(24, 10).with_variant(sa.BigInteger(), "sqlite")


def upgrade() -> None:
    op.create_table('price_versions',
    sa.Column('id', sa.String(length=255), nullable=False),
    sa.Column('model', sa.String(length=200), nullable=False),
    sa.Column('mode', sa.String(length=16), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('effective_from', sa.DateTime(timezone=True), nullable=False),
    sa.Column('input_per_million', MONEY, nullable=False),
    sa.Column('cached_input_per_million', MONEY, nullable=False),
    sa.Column('output_per_million', MONEY, nullable=False),
    sa.Column('gpu_hour_price', MONEY, nullable=True),
    sa.Column('gpus', MONEY, nullable=True),
    sa.Column('prefill_tokens_per_s', sa.Integer(), nullable=True),
    sa.Column('decode_tokens_per_s', sa.Integer(), nullable=True),
    sa.Column('loaded_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_price_versions'))
    )
    op.create_index(op.f('ix_price_versions_model'), 'price_versions', ['model', 'effective_from'], unique=False)
    op.create_table('usage_daily',
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('tenant', sa.String(length=128), nullable=False),
    sa.Column('team', sa.String(length=128), nullable=False),
    sa.Column('key_id', sa.String(length=128), nullable=False),
    sa.Column('model', sa.String(length=200), nullable=False),
    sa.Column('pool', sa.String(length=128), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('month', sa.String(length=7), nullable=False),
    sa.Column('calls', sa.BigInteger(), nullable=False),
    sa.Column('cache_hits', sa.BigInteger(), nullable=False),
    sa.Column('errors', sa.BigInteger(), nullable=False),
    sa.Column('prompt_tokens', sa.BigInteger(), nullable=False),
    sa.Column('cached_tokens', sa.BigInteger(), nullable=False),
    sa.Column('completion_tokens', sa.BigInteger(), nullable=False),
    sa.Column('cost', MONEY, nullable=False),
    sa.Column('reference_cost', MONEY, nullable=False),
    sa.Column('routing_saving', MONEY, nullable=False),
    sa.Column('cache_saving', MONEY, nullable=False),
    sa.PrimaryKeyConstraint('day', 'tenant', 'team', 'key_id', 'model', 'pool', 'currency', name=op.f('pk_usage_daily'))
    )
    op.create_index(op.f('ix_usage_daily_month'), 'usage_daily', ['month'], unique=False)
    op.create_table('usage_records',
    sa.Column('request_id', sa.String(length=128), nullable=False),
    sa.Column('client_request_id', sa.String(length=128), nullable=True),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('first_token_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('tenant', sa.String(length=128), nullable=False),
    sa.Column('team', sa.String(length=128), nullable=True),
    sa.Column('key_id', sa.String(length=128), nullable=True),
    sa.Column('requested_model', sa.String(length=200), nullable=False),
    sa.Column('routed_model', sa.String(length=200), nullable=True),
    sa.Column('pool', sa.String(length=128), nullable=True),
    sa.Column('replica', sa.String(length=512), nullable=True),
    sa.Column('policy_rule', sa.String(length=200), nullable=True),
    sa.Column('cache_hit', sa.Boolean(), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('http_status', sa.Integer(), nullable=True),
    sa.Column('error', sa.String(length=200), nullable=True),
    sa.Column('prompt_tokens', sa.Integer(), nullable=False),
    sa.Column('cached_tokens', sa.Integer(), nullable=False),
    sa.Column('completion_tokens', sa.Integer(), nullable=False),
    sa.Column('usage_source', sa.String(length=16), nullable=False),
    sa.Column('duration_ms', sa.Integer(), nullable=False),
    sa.Column('ttft_ms', sa.Integer(), nullable=True),
    sa.Column('cost', MONEY, nullable=False),
    sa.Column('reference_model', sa.String(length=200), nullable=True),
    sa.Column('reference_cost', MONEY, nullable=False),
    sa.Column('cache_saving', MONEY, nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('price_version', sa.String(length=255), nullable=True),
    sa.Column('reference_price_version', sa.String(length=255), nullable=True),
    sa.PrimaryKeyConstraint('request_id', name=op.f('pk_usage_records'))
    )
    op.create_index(op.f('ix_usage_records_client_request_id'), 'usage_records', ['client_request_id'], unique=False)
    op.create_index(op.f('ix_usage_records_day'), 'usage_records', ['day'], unique=False)



def downgrade() -> None:
    op.drop_index(op.f('ix_usage_records_day'), table_name='usage_records')
    op.drop_index(op.f('ix_usage_records_client_request_id'), table_name='usage_records')
    op.drop_table('usage_records')
    op.drop_index(op.f('ix_usage_daily_month'), table_name='usage_daily')
    op.drop_table('usage_daily')
    op.drop_index(op.f('ix_price_versions_model'), table_name='price_versions')
    op.drop_table('price_versions')
