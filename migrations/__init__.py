"""The accounting database's Alembic migrations (installed as the package `gateway_migrations`)."""
