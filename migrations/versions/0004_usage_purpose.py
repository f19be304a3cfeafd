"""usage purpose: each usage record and rollup says whether it is a client's call or the platform's shadow
evaluation (a `shadow` call to the reference model, its `judge` call); existing rows are calls

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_KEY = ('day', 'tenant', 'team', 'key_id', 'model', 'pool', 'currency')
SUMS = ('calls', 'cache_hits', 'errors', 'prompt_tokens', 'cached_tokens', 'completion_tokens', 'cost',
        'reference_cost', 'routing_saving', 'cache_saving')


def upgrade() -> None:
    with op.batch_alter_table('usage_records') as batch:
        batch.add_column(sa.Column('purpose', sa.String(length=16), server_default=sa.text("'call'"), nullable=False))
    with op.batch_alter_table('usage_daily') as batch:
        batch.add_column(sa.Column('purpose', sa.String(length=16), server_default=sa.text("'call'"), nullable=False))
        batch.drop_constraint('pk_usage_daily', type_='primary')
        batch.create_primary_key('pk_usage_daily', [*OLD_KEY, 'purpose'])


def downgrade() -> None:
    # Without the column, shadow records count as calls again: fold their rollups into the calls' so that the
    # rollups still equal the records (`gateway report --verify`).
    key, sums = ', '.join(OLD_KEY), ', '.join(SUMS)
    op.execute(sa.text(
        f"INSERT INTO usage_daily ({key}, month, purpose, {sums}) "
        f"SELECT {key}, month, 'call', {', '.join(f'SUM({s})' for s in SUMS)} FROM usage_daily "
        f"WHERE purpose <> 'call' GROUP BY {key}, month "
        f"ON CONFLICT ({key}, purpose) DO UPDATE SET "
        + ', '.join(f'{s} = usage_daily.{s} + excluded.{s}' for s in SUMS)
    ))
    op.execute(sa.text("DELETE FROM usage_daily WHERE purpose <> 'call'"))
    with op.batch_alter_table('usage_daily') as batch:
        batch.drop_constraint('pk_usage_daily', type_='primary')
        batch.create_primary_key('pk_usage_daily', list(OLD_KEY))
        batch.drop_column('purpose')
    with op.batch_alter_table('usage_records') as batch:
        batch.drop_column('purpose')
