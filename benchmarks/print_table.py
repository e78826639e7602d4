"""One table printer for the benchmark scripts: aligned columns, or Markdown rows for BENCHMARKS.md."""

from __future__ import annotations

from typing import Sequence


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]], markdown: bool) -> None:
    cells = [[str(c) for c in r] for r in rows]
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for r in cells:
            print("| " + " | ".join(r) + " |")
        return
    widths = [max(len(x[i]) for x in [list(header), *cells]) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
