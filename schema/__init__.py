"""What travels (messages) and what is stored (records, tables, migrations)."""
