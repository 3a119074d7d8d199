"""The one exception the data layer raises for bad input."""

from __future__ import annotations


class DataError(ValueError):
    """A problem with the data, reported where it is: the file (or Hub name), the line, the field,
    what is wrong and what would fix it, e.g.

        data.jsonl line 7: field 'label' must be a boolean (true/false or 0/1), got "yes"

    ``where`` is "<file> line N" (jsonl, jsonl.gz, csv), "<file> item N" (0-based index in a JSON array),
    "<name> row N" (0-based index in a parquet file or Hub data set), or a row's "file:line" source.
    """

    def __init__(self, where: str, reason: str, field: str | None = None):
        self.where = where
        self.reason = reason
        self.field = field
        message = f"{where}: field '{field}' {reason}" if field else f"{where}: {reason}"
        super().__init__(message)

    def __reduce__(self):  # keep it picklable across processes (DataLoader workers, DDP)
        return (type(self), (self.where, self.reason, self.field))
