"""Alembic environment: runs on the connection handed over by ``approvals.db.upgrade``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from approvals.models import Base

config = context.config
connection = config.attributes.get("connection")


def _run(conn: Connection) -> None:
    context.configure(connection=conn, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if connection is not None:
    _run(connection)
else:
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as conn:
        _run(conn)
