"""Printing benchmark results the same way everywhere."""

from __future__ import annotations

import datetime
import os
import platform


def header(title: str) -> None:
    print(f"\n== {title} ==")
    print(f"   {datetime.date.today().isoformat()}, {os.cpu_count()} cores, Python {platform.python_version()}")


def row(*cells: object, widths: tuple[int, ...] = (14, 14, 14, 14, 14, 14)) -> None:
    print("   " + "".join(f"{str(cell):>{width}}" for cell, width in zip(cells, widths)))
