"""Summaries of a grid: mean ± sd over seeds per table cell, the paper's value beside ours, and a
verdict per ordering the paper claims.

Verdicts compare our per-cell means:
  reproduced          same direction as the paper, and the means differ by more than the two
                      seed standard deviations added (sd needs ≥ 2 seeds)
  same direction, within seed spread
                      same direction, but not separated by that margin
  not reproduced      the opposite direction (or equal)
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from .environment import numeric_signature
from .run import POINT_FILE, point_dir
from .spec import Grid, Table, _text

VERDICTS = ("reproduced", "same direction, within seed spread", "not reproduced")


def collect(grid: Grid, scale: str, roots: Path | list[Path]) -> list[dict]:
    """The finished points' records (point.json), in grid order; a point found under several roots
    (runs from several machines, or the records kept in docs/repro/points) is taken from the first."""
    records = []
    for point in grid.points(scale):
        for root in [roots] if isinstance(roots, Path) else roots:
            path = point_dir(root, grid, scale, point) / POINT_FILE
            if path.is_file():
                records.append({**json.loads(path.read_text()), "run_dir": str(path.parent)})
                break
    return records


def metric_keys(table: Table) -> tuple[str, ...]:
    """The metrics.json keys a table reads, first found wins (e.g. digit_fd at cpu scale, fid at paper)."""
    return table.metric if isinstance(table.metric, tuple) else (table.metric,)


def _cells(table: Table, records: list[dict]) -> dict[tuple[str, str], list[float]]:
    cells: dict[tuple[str, str], list[float]] = {}
    keys = metric_keys(table)
    for rec in records:
        value = next((rec["results"][k] for k in keys if k in rec["results"]), None)
        if not isinstance(value, (int, float)):
            continue
        row = _text(rec["values"][table.rows])
        col = _text(rec["values"][table.columns]) if table.columns else ""
        cells.setdefault((row, col), []).append(float(value))
    return cells


def _stats(values: list[float]) -> tuple[float, float, int]:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return statistics.fmean(values), sd, len(values)


def _fmt(values: list[float] | None) -> str:
    if not values:
        return "–"
    mean, sd, n = _stats(values)
    return f"{mean:.4g}" if n == 1 else f"{mean:.4g} ± {sd:.2g} (n={n})"


def _paper(table: Table, row: str, col: str):
    value = table.paper.get(row) if row in table.paper else table.paper.get(_maybe_int(row))
    if isinstance(value, dict):
        value = value.get(col) if col in value else value.get(_maybe_int(col))
    return value


def _maybe_int(text: str):
    try:
        return int(text)
    except ValueError:
        return text


def verdict(better: list[float], worse: list[float], higher_is_better: bool) -> str:
    (mb, sb, nb), (mw, sw, nw) = _stats(better), _stats(worse)
    diff = (mb - mw) if higher_is_better else (mw - mb)
    if diff <= 0:
        return VERDICTS[2]
    if nb > 1 and nw > 1 and diff > sb + sw:
        return VERDICTS[0]
    return VERDICTS[1]


def table_markdown(grid: Grid, table: Table, records: list[dict]) -> tuple[list[str], list[dict]]:
    keys = metric_keys(table)
    cells = _cells(table, records)
    rows = list(dict.fromkeys(r for r, _ in cells))
    cols = list(dict.fromkeys(c for _, c in cells))
    better = {True: " (higher is better)", False: " (lower is better)", None: ""}[table.higher_is_better]
    heading = f"{table.label or ' / '.join(keys)}{better}"
    head = [table.rows.split(".")[-1]] + [
        f"{table.columns.split('.')[-1]} {c}" if table.columns else "ours" for c in cols
    ]
    lines = [
        f"**{heading}** — ours: mean ± sd over seeds" + (f"; [{table.paper_label}]" if table.paper else ""),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in rows:
        name = f"{row} ({table.paper_names[row]})" if row in table.paper_names else row
        parts = []
        for col in cols:
            paper = _paper(table, row, col)
            parts.append(_fmt(cells.get((row, col))) + (f" [{paper}]" if paper is not None else ""))
        lines.append(f"| {name} | " + " | ".join(parts) + " |")
    found = []
    for better, worse in table.orderings:
        for col in cols:
            a, b = cells.get((_text(better), col)), cells.get((_text(worse), col))
            if a and b:
                found.append(
                    {
                        "metric": keys[0],
                        "better": better,
                        "worse": worse,
                        "column": col,
                        "verdict": verdict(a, b, table.higher_is_better),
                    }
                )
    if found:
        lines += ["", "Orderings the paper claims:", ""]
        lines += [
            f"- {o['better']} better than {o['worse']}"
            + (f" ({table.columns.split('.')[-1]} {o['column']})" if o["column"] else "")
            + f": **{o['verdict']}**"
            for o in found
        ]
    return lines, found


def shown_tables(grid: Grid, scale: str) -> list[tuple[int, Table]]:
    """(number, table) of the tables this scale fills: a table whose rows (and columns) axis keeps one
    value here while another axis varies belongs to another scale's panel (Figure 3's)."""
    values = grid.axis_values(scale)
    varies = {a for a, v in values.items() if len(v) > 1}
    out = []
    for i, table in enumerate(grid.tables, 1):
        mine = {table.rows, *([table.columns] if table.columns else [])}
        if not varies or mine & varies:
            out.append((i, table))
    return out


def environment_note(records: list[dict]) -> list[str]:
    """Names the environments when the points come from more than one: bitwise agreement (and the
    resume guarantee) holds within one; across them the numbers differ like another seed's."""
    groups: dict[str, list[str]] = {}
    for rec in records:
        groups.setdefault(numeric_signature(rec.get("environment")), []).append(rec["point"])
    if len(groups) < 2:
        return []
    lines = [f"Points from {len(groups)} environments (numbers repeat bitwise only within one):", ""]
    lines += [f"- {sig}: {len(points)} point(s)" for sig, points in groups.items()]
    return lines + [""]


def summarize(grid: Grid, scale: str, roots: Path | list[Path], command: str) -> tuple[str, dict]:
    """(markdown, json-able summary) of the finished points; written beside the runs by the CLI."""
    records = collect(grid, scale, roots)
    s = grid.scale(scale)
    total = len(grid.points(scale))
    lines = [
        f"### {grid.title} — `{scale}` scale",
        "",
        f"Config `{grid.config_for(scale)}`; overrides `{' '.join(s.overrides) or '(none)'}`; seeds {list(s.seeds)}; "
        f"{len(records)} of {total} points finished.",
        "",
    ]
    if s.note:
        lines += [s.note, ""]
    lines += [f"Command: `{command}`", ""]
    lines += environment_note(records)
    orderings = []
    for _, table in shown_tables(grid, scale):
        body, found = table_markdown(grid, table, records)
        lines += body + [""]
        orderings += found
    walls = [r.get("wall_s_last_attempt", 0.0) for r in records]
    summary = {
        "grid": grid.name,
        "scale": scale,
        "finished": len(records),
        "points": total,
        "orderings": orderings,
        "wall_s_sum": round(sum(walls), 1),
        "records": [{k: r.get(k) for k in ("point", "values", "seed", "results", "environment")} for r in records],
    }
    return "\n".join(lines).rstrip() + "\n", summary
