"""Markdown building blocks every text output shares: table cells and milliseconds."""

from __future__ import annotations

from typing import Any


def fmt_ms(x: float | None) -> str:
    """Milliseconds for a Markdown table: 4 significant digits, one decimal from 100 ms."""
    if x is None:
        return ""
    return f"{x:.4g}" if x < 100 else f"{x:.1f}"


def md_cell(text: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")
