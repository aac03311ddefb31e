"""A benchmark's markdown table: printed, and written to its --out file."""

import sys
from pathlib import Path


def publish(lines: list[str], out: Path) -> None:
    table = "\n".join(lines) + "\n"
    print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    print(f"written to {out}", file=sys.stderr)
