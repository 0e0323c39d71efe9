"""Bringing an upstream ``global-learning.db`` (Marianne's SQLite learning store) into ostinato's store.

``importer.import_upstream`` does the work, ``cli.import_sqlite_command`` is ``ostinato import-sqlite``.
Nothing is imported here, so registering the command does not load the store when ``ostinato`` starts.
"""
