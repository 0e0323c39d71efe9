"""Run the Alembic migrations against a database URL, without an alembic.ini."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(engine: Engine) -> Config:
    """An Alembic config bound to ``engine`` (the URL is never written to a file or a log)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def _run(url_or_engine: str | Engine, action: str, revision: str) -> None:
    engine = create_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        getattr(command, action)(config, revision)
    if isinstance(url_or_engine, str):
        engine.dispose()


def upgrade(url_or_engine: str | Engine, revision: str = "head") -> None:
    """Bring the schema up to ``revision`` (default: the newest)."""
    _run(url_or_engine, "upgrade", revision)


def downgrade(url_or_engine: str | Engine, revision: str = "base") -> None:
    """Take the schema down to ``revision`` (default: empty)."""
    _run(url_or_engine, "downgrade", revision)


def newest_revisions() -> frozenset[str]:
    """The head revisions the migrations define: what a migrated database is at."""
    return frozenset(ScriptDirectory(str(MIGRATIONS)).get_heads())


def current_revisions(engine: Engine) -> frozenset[str]:
    """The revisions the database is at (empty when it was never migrated)."""
    with engine.connect() as connection:
        return frozenset(MigrationContext.configure(connection).get_current_heads())
