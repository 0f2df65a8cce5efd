"""Additive schema changes for tables that already exist (create_all never alters a table).

A column added to a model after a database was created gets an `ALTER TABLE ... ADD COLUMN`
at start. Only additions: no renames, no type changes, no drops. A new column that is NOT NULL
needs a server default to be added as such; without one it is added nullable, and whoever
owns the table backfills it (see `SQLTenancyStore`'s api key ids).
"""

from __future__ import annotations

from sqlalchemy import Column, Connection, MetaData, Table, inspect, text
from sqlalchemy.schema import CreateTable


def add_missing_columns(conn: Connection, metadata: MetaData) -> dict[str, list[str]]:
    """Add every model column missing from an existing table; returns what was added."""
    inspector = inspect(conn)
    existing = set(inspector.get_table_names())
    added: dict[str, list[str]] = {}
    for table in metadata.sorted_tables:
        if table.name not in existing:
            continue
        have = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in have:
                conn.execute(text(_add_column(conn, table, column)))
                added.setdefault(table.name, []).append(column.name)
    return added


def _add_column(conn: Connection, table: Table, column: Column) -> str:
    dialect = conn.dialect
    prep = dialect.identifier_preparer
    ddl = (
        f"ALTER TABLE {prep.format_table(table)} ADD COLUMN {prep.format_column(column)} "
        f"{column.type.compile(dialect=dialect)}"
    )
    default = dialect.ddl_compiler(dialect, CreateTable(table)).get_column_default_string(column)
    if default is not None:
        ddl += f" DEFAULT {default}"
        if not column.nullable:
            ddl += " NOT NULL"
    return ddl


def has_unique_index(conn: Connection, table: str, columns: list[str]) -> bool:
    """Whether a unique constraint or unique index covers exactly these columns."""
    inspector = inspect(conn)
    constraints = inspector.get_unique_constraints(table)
    if any(c["column_names"] == columns for c in constraints):
        return True
    indexes = inspector.get_indexes(table)
    return any(ix["unique"] and ix["column_names"] == columns for ix in indexes)
