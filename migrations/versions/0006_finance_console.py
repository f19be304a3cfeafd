"""finance console: each usage record stores its routing saving (reference_cost = cost + routing_saving +
cache_saving, exactly, cache hits included); rollups carry the route (the policy rule, '' for none) in their
key and count refused calls apart; API keys carry a scope (tenant, the default, or all; admin keys: all)

The rollups are derived data: the upgrade rebuilds them from the records (route, refused, and the routing
saving of cache hits), the downgrade rebuilds them as the previous revision counted.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-10
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MONEY = sa.Numeric(24, 10).with_variant(sa.BigInteger(), "sqlite")
OLD_KEY = ('day', 'tenant', 'team', 'key_id', 'model', 'pool', 'currency', 'purpose', 'operation')
# Each rollup key column, from usage_records.
KEY_FROM_RECORDS = {
    'day': 'day', 'tenant': 'tenant', 'team': "COALESCE(team, '')", 'key_id': "COALESCE(key_id, '')",
    'model': "COALESCE(routed_model, '')", 'pool': "COALESCE(pool, '')", 'currency': 'currency',
    'purpose': 'purpose', 'operation': 'operation', 'route': "COALESCE(policy_rule, '')",
}
TOKENS = ('prompt_tokens', 'cached_tokens', 'completion_tokens')
REFUSED = "status = 'rejected'"


def _month() -> str:
    return "to_char(day, 'YYYY-MM')" if op.get_bind().dialect.name == 'postgresql' else 'substr(day, 1, 7)'


def _rebuild_rollups(key: Sequence[str], sums: dict[str, str]) -> None:
    """usage_daily := the records' sums per `key` (`sums`: each column's SQL over usage_records)."""
    op.execute(sa.text('DELETE FROM usage_daily'))
    columns = [*key, 'month', *sums]
    values = [KEY_FROM_RECORDS[k] for k in key] + [_month()] + list(sums.values())
    op.execute(sa.text(
        f"INSERT INTO usage_daily ({', '.join(columns)}) SELECT {', '.join(values)} FROM usage_records "
        f"GROUP BY {', '.join(KEY_FROM_RECORDS[k] for k in key)}"
    ))


def _count(condition: str) -> str:
    return f'SUM(CASE WHEN {condition} THEN 1 ELSE 0 END)'


def upgrade() -> None:
    with op.batch_alter_table('usage_records') as batch:
        batch.add_column(sa.Column('routing_saving', MONEY, nullable=True))
    op.execute(sa.text('UPDATE usage_records SET routing_saving = reference_cost - cost - cache_saving'))
    with op.batch_alter_table('usage_records') as batch:
        batch.alter_column('routing_saving', existing_type=MONEY, nullable=False)
    with op.batch_alter_table('usage_daily') as batch:
        batch.add_column(sa.Column('route', sa.String(length=200), server_default=sa.text("''"), nullable=False))
        batch.add_column(sa.Column('refused', sa.BigInteger(), server_default=sa.text('0'), nullable=False))
        batch.drop_constraint('pk_usage_daily', type_='primary')
        batch.create_primary_key('pk_usage_daily', [*OLD_KEY, 'route'])
    _rebuild_rollups([*OLD_KEY, 'route'], {
        'calls': _count(f'NOT ({REFUSED})'),
        'refused': _count(REFUSED),
        'cache_hits': _count('cache_hit'),
        'errors': _count(f"status <> 'ok' AND NOT ({REFUSED})"),
        **{t: f'SUM({t})' for t in TOKENS},
        **{m: f'SUM({m})' for m in ('cost', 'reference_cost', 'routing_saving', 'cache_saving')},
    })
    with op.batch_alter_table('api_keys') as batch:
        batch.add_column(sa.Column('scope', sa.String(length=8), server_default=sa.text("'tenant'"),
                                   nullable=False))
    # Operators' admin keys keep seeing every tenant; finance keys see their own tenant.
    op.execute(sa.text("UPDATE api_keys SET scope = 'all' WHERE role = 'admin'"))


def downgrade() -> None:
    with op.batch_alter_table('api_keys') as batch:
        batch.drop_column('scope')
    op.execute(sa.text('DELETE FROM usage_daily'))  # rebuilt below
    with op.batch_alter_table('usage_daily') as batch:
        batch.drop_constraint('pk_usage_daily', type_='primary')
        batch.drop_column('route')
        batch.drop_column('refused')
        batch.create_primary_key('pk_usage_daily', list(OLD_KEY))
    # As 0005 counted: refused calls among calls and errors, no routing saving on a cache hit.
    _rebuild_rollups(OLD_KEY, {
        'calls': 'COUNT(*)',
        'cache_hits': _count('cache_hit'),
        'errors': _count("status <> 'ok'"),
        **{t: f'SUM({t})' for t in TOKENS},
        'cost': 'SUM(cost)',
        'reference_cost': 'SUM(reference_cost)',
        'routing_saving': 'SUM(CASE WHEN cache_hit THEN 0 ELSE reference_cost - cost END)',
        'cache_saving': 'SUM(cache_saving)',
    })
    with op.batch_alter_table('usage_records') as batch:
        batch.drop_column('routing_saving')
