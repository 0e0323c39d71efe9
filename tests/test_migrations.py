"""The Alembic migration: up, down and up again on an empty database, and no drift from the tables."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from conftest import ADMIN_URL, RUN_ID
from sqlalchemy import Engine, create_engine, inspect, text

from ostinato.schema import migrate
from ostinato.schema.tables import metadata


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    if request.param == "sqlite":
        engine = create_engine(f"sqlite:///{tmp_path_factory.mktemp('mig') / 'empty.db'}")
        yield engine
        engine.dispose()
        return
    name = f"ostinato_mig_{RUN_ID}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine = create_engine(ADMIN_URL.rsplit("/", 1)[0] + f"/{name}")
    yield engine
    engine.dispose()
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


def test_upgrade_downgrade_upgrade(empty_engine: Engine) -> None:
    expected = {table.name for table in metadata.sorted_tables}
    migrate.upgrade(empty_engine)
    assert tables(empty_engine) == expected
    migrate.downgrade(empty_engine)
    assert tables(empty_engine) == set()
    migrate.upgrade(empty_engine)
    assert tables(empty_engine) == expected


def test_migration_matches_the_tables(database_url: str) -> None:
    """Nothing in ``tables.py`` is missing from the migration (SQLite reflects DESC indexes differently)."""
    engine = create_engine(database_url)
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), metadata) == []
    engine.dispose()
