"""usage operation: each usage record and rollup says which API the call used (chat, text_completion,
embeddings, ...); existing rows are chat calls

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-09
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_KEY = ('day', 'tenant', 'team', 'key_id', 'model', 'pool', 'currency', 'purpose')
SUMS = ('calls', 'cache_hits', 'errors', 'prompt_tokens', 'cached_tokens', 'completion_tokens', 'cost',
        'reference_cost', 'routing_saving', 'cache_saving')


def upgrade() -> None:
    with op.batch_alter_table('usage_records') as batch:
        batch.add_column(sa.Column('operation', sa.String(length=32), server_default=sa.text("'chat'"),
                                   nullable=False))
    with op.batch_alter_table('usage_daily') as batch:
        batch.add_column(sa.Column('operation', sa.String(length=32), server_default=sa.text("'chat'"),
                                   nullable=False))
        batch.drop_constraint('pk_usage_daily', type_='primary')
        batch.create_primary_key('pk_usage_daily', [*OLD_KEY, 'operation'])


def downgrade() -> None:
    # Without the column, every record reads as a chat call: fold the other operations' rollups into the chat
    # ones so that the rollups still equal the records (`gateway report --verify`).
    key, sums = ', '.join(OLD_KEY), ', '.join(SUMS)
    op.execute(sa.text(
        f"INSERT INTO usage_daily ({key}, month, operation, {sums}) "
        f"SELECT {key}, month, 'chat', {', '.join(f'SUM({s})' for s in SUMS)} FROM usage_daily "
        f"WHERE operation <> 'chat' GROUP BY {key}, month "
        f"ON CONFLICT ({key}, operation) DO UPDATE SET "
        + ', '.join(f'{s} = usage_daily.{s} + excluded.{s}' for s in SUMS)
    ))
    op.execute(sa.text("DELETE FROM usage_daily WHERE operation <> 'chat'"))
    with op.batch_alter_table('usage_daily') as batch:
        batch.drop_constraint('pk_usage_daily', type_='primary')
        batch.create_primary_key('pk_usage_daily', list(OLD_KEY))
        batch.drop_column('operation')
    with op.batch_alter_table('usage_records') as batch:
        batch.drop_column('operation')
