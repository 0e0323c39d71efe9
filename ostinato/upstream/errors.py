"""Why an import stops before it writes anything."""

from __future__ import annotations


class UpstreamImportError(Exception):
    """The import cannot start; nothing has been written to the store."""


class UpstreamFileError(UpstreamImportError):
    """The file is not an upstream learning store this importer can read (not SQLite, corrupt, foreign)."""


class StoreNotReadyError(UpstreamImportError):
    """The target store cannot take the rows yet (its schema is not at the newest migration)."""


class RefusedError(Exception):
    """One row that cannot be stored as it is; ``reason`` names the rule, ``detail`` the offending value.

    Reasons are worded without the value so the report can count rows per reason.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail
