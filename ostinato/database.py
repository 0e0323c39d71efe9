"""Opening the store from settings, creating the PostgreSQL database on first use."""

from __future__ import annotations

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from ostinato.schema import migrate


def ensure_database(url: str) -> bool:
    """Create the PostgreSQL database named in ``url`` if it is missing; True if it was created."""
    target = make_url(url)
    if not target.drivername.startswith("postgresql") or not target.database:
        return False
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            exists = connection.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": target.database}
            ).scalar()
            if exists:
                return False
            connection.execute(text(f'CREATE DATABASE "{target.database}"'))
            return True
    finally:
        admin.dispose()


def migrate_database(url: str) -> bool:
    """Create the database if needed and bring its schema to the newest revision."""
    created = ensure_database(url)
    migrate.upgrade(url)
    return created
