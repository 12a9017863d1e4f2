"""The README's CNN-beside-ViT localisation table, from ``camscope bench synthetic --seeds N --json``.

    camscope bench synthetic --seeds 5 --json cnn.json
    camscope bench synthetic --model vit --seeds 5 --json vit.json
    python benchmarks/synthetic_spread_table.py cnn.json vit.json [more pairs: cnn2.json vit2.json]

Each cell is the mean over the trained models and, in brackets, the min-max: the range a run of
the same command on another machine (other rounding, so other trained weights) falls in.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _rows(path: str) -> dict[str, dict]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return {m["method"]: m for m in data["methods"]}, data


def _cell(m: dict | None, key: str, pct: bool) -> str:
    if m is None:
        return "–"
    v = m[key]
    if pct:
        return f"{100 * v['mean']:.1f} % ({100 * v['min']:.1f}-{100 * v['max']:.1f})"
    return f"{v['mean']:.2f}x ({v['min']:.2f}-{v['max']:.2f})"


def main(argv: list[str]) -> int:
    if len(argv) < 2 or len(argv) % 2:
        sys.stderr.write(__doc__)
        return 2
    cnn: dict[str, dict] = {}
    vit: dict[str, dict] = {}
    order: list[str] = []
    for a, b in zip(argv[::2], argv[1::2], strict=True):
        rows_a, _ = _rows(a)
        rows_b, _ = _rows(b)
        cnn.update(rows_a)
        vit.update(rows_b)
        order = list(dict.fromkeys([*order, *rows_a, *rows_b]))
    lines = [
        "| method | CNN pointing game | CNN energy / area | ViT pointing game | ViT energy / area |",
        "|---|---:|---:|---:|---:|",
    ]
    for m in order:
        c, v = cnn.get(m), vit.get(m)
        title = (c or v)["title"]
        lines.append(f"| {title} | {_cell(c, 'pointing', True)} | {_cell(c, 'energy_over_area', False)} | "
                     f"{_cell(v, 'pointing', True)} | {_cell(v, 'energy_over_area', False)} |")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
