"""Alembic migrations of the read model; ``replicant db upgrade`` and ``init_db`` run them."""
