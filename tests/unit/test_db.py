from __future__ import annotations

from typing import Any

from sqlalchemy import inspect

from approvals.db import make_engine, session_factory, upgrade
from approvals.models import OpState
from approvals.operations import OperationStore


def _store(url: str) -> OperationStore:
    engine = make_engine(url)
    upgrade(engine)
    upgrade(engine)  # idempotent
    assert "operations" in inspect(engine).get_table_names()
    return OperationStore(session_factory(engine))


def _exercise(store: OperationStore) -> None:
    op = store.create(
        source="console",
        user_id="U1",
        user_name="a",
        channel_id="C",
        text="health",
        state=OpState.QUEUED,
        command="health",
    )
    assert store.transition(op, [OpState.QUEUED], OpState.RUNNING)
    assert not store.transition(op, [OpState.QUEUED], OpState.RUNNING)  # exactly once
    assert store.transition(op, [OpState.RUNNING], OpState.SUCCEEDED, result_summary="fine")
    row = store.get(op)
    assert row is not None and row.state == "succeeded" and row.finished_at is not None


def test_operations_on_sqlite(make_settings: Any) -> None:
    _exercise(_store(make_settings().hq_database_url))


def test_operations_on_postgresql(pg_url: str) -> None:
    _exercise(_store(pg_url))
