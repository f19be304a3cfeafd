"""CSV downloads: every CSV the API serves is one `csv_response`, so each is a file a browser saves under a
name that says what it holds (`usage-2026-12-01-2026-12-07.csv`, `budgets.csv`)."""

from __future__ import annotations

import re
from typing import Any

from litestar import Response

CSV_MEDIA_TYPE = "text/csv"  # served as `text/csv; charset=utf-8`: Litestar adds the charset of text/* types
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")  # what a filename keeps: no quote, slash, space or control character


def attachment_name(filename: str) -> str:
    """`filename` with every character outside `A-Z a-z 0-9 . _ -` replaced by `_` (safe in the header)."""
    return _UNSAFE.sub("_", filename) or "download.csv"


def csv_response(text: str, filename: str) -> Response[Any]:
    """`text` as a CSV download: `text/csv; charset=utf-8`, `Content-Disposition: attachment; filename=...`."""
    return Response(text, media_type=CSV_MEDIA_TYPE,
                    headers={"content-disposition": f'attachment; filename="{attachment_name(filename)}"'})
