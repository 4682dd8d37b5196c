"""Figures of a grid's summary, written beside summary.md by `lfbm-repro summary`:

- per table, ours (mean ± sd over seeds, each seed a dot) beside the paper's values, so the
  orderings show at a glance (the two panels have their own scales: only orderings compare);
- per grid, the runs' logged training metrics against kimg (TensorBoard events read back), the
  seeds of a point averaged;
- per table, a sample sheet: the last logged image grid of each row's seed-0 run, side by side.

Plots use matplotlib's Agg backend (no display); a figure whose inputs are missing (points kept as
records only, without their run directories) is skipped, and summary.md says which were written.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np

from .report import _cells, _paper, metric_keys, shown_tables
from .spec import Grid, Table, _text

CURVE_TAGS = ("recovery_mse", "recon_mse", "aggpost/gap_nats", "log_p_z")  # first two found are drawn


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never a display, whatever MPLBACKEND says
    import matplotlib.pyplot as plt

    return plt


def _title(fig, text: str) -> None:
    """A title that fits its figure: wrapped at what 9-pt text holds across the figure's width
    (≈ 11 characters an inch), instead of a fixed width that a one-panel figure cut off."""
    import textwrap

    fig.suptitle("\n".join(textwrap.wrap(text, max(30, int(fig.get_figwidth() * 11)))), fontsize=9)


def _save(plt, fig, path: Path, title: str) -> None:
    """Every figure's last steps: the wrapped title, a tight layout, 110 dpi, the figure closed."""
    _title(fig, title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _grouped(ax, rows, cols, value_of, title, spread_of=None, whose="ours") -> None:
    """Bars grouped by column, one colour per row; seeds as dots when given."""
    width = 0.8 / max(len(rows), 1)
    for i, row in enumerate(rows):
        xs = np.arange(len(cols)) + (i - (len(rows) - 1) / 2) * width
        heights = [value_of(row, c) for c in cols]
        ax.bar(xs, [np.nan if h is None else h for h in heights], width, label=row, color=f"C{i}", alpha=0.75)
        if spread_of is not None:
            for x, c in zip(xs, cols):
                seeds = spread_of(row, c)
                if len(seeds) > 1:
                    ax.errorbar(x, statistics.fmean(seeds), yerr=statistics.stdev(seeds), color="k", capsize=3)
                ax.scatter([x] * len(seeds), seeds, color="k", s=10, zorder=3)
    ax.set_xticks(np.arange(len(cols)), [c or whose for c in cols])
    ax.set_title(title, fontsize=9)


def table_figure(table: Table, records: list[dict], path: Path, title: str) -> bool:
    cells = _cells(table, records)
    if not cells:
        return False
    plt = _pyplot()
    rows = list(dict.fromkeys(r for r, _ in cells))
    cols = list(dict.fromkeys(c for _, c in cells))
    has_paper = bool(table.paper)
    fig, axes = plt.subplots(1, 2 if has_paper else 1, figsize=(9 if has_paper else 5, 3.4), squeeze=False)
    direction = {True: " (higher is better)", False: " (lower is better)", None: ""}[table.higher_is_better]

    def mean(row, col):
        values = cells.get((row, col))
        return statistics.fmean(values) if values else None

    seeds = lambda r, c: cells.get((r, c), [])
    _grouped(axes[0][0], rows, cols, mean, f"ours: {metric_keys(table)[0]}{direction}", seeds)
    if has_paper:
        _grouped(axes[0][1], rows, cols, lambda r, c: _paper(table, r, c), table.paper_label, whose="paper")
    axes[0][0].legend(fontsize=7, title=table.rows.split(".")[-1], title_fontsize=7)
    _save(plt, fig, path, title)
    return True


def _events(folder: Path, kind: str):
    """The run's TensorBoard events, read back; a resumed run's purged steps are dropped, as TB does
    (quietly: that is expected after a resume)."""
    import logging

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.ERROR)
    events = EventAccumulator(str(folder), size_guidance={kind: 0})
    events.Reload()
    return events


def _scalars(run_dir: Path, tags: tuple[str, ...]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """tag -> (kimg, value) of the run's TensorBoard scalars (the last write of a step wins, as TB shows)."""

    events = _events(run_dir / "tensorboard", "scalars")
    found = {}
    for tag in tags:
        if tag in events.Tags()["scalars"]:
            by_step = {e.step: e.value for e in events.Scalars(tag)}
            steps = sorted(by_step)
            found[tag] = (np.array(steps) / 1000.0, np.array([by_step[s] for s in steps]))
    return found


def curves_figure(grid: Grid, scale: str, records: list[dict], path: Path, title: str) -> bool:
    """The logged training metrics against kimg, one line per point (its seeds averaged)."""
    varies = {a for a, v in grid.axis_values(scale).items() if len(v) > 1}
    lines: dict[str, list[dict]] = {}
    for rec in records:
        run_dir = rec.get("run_dir")
        if run_dir and (Path(run_dir) / "tensorboard").is_dir():
            label = ", ".join(f"{k.split('.')[-1]}={_text(v)}" for k, v in rec["values"].items() if k in varies)
            lines.setdefault(label or rec["point"], []).append(_scalars(Path(run_dir), CURVE_TAGS))
    tags = [t for t in CURVE_TAGS if any(t in s for runs in lines.values() for s in runs)][:2]
    if not tags:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(tags), figsize=(5 * len(tags), 3.4), squeeze=False)
    for ax, tag in zip(axes[0], tags):
        for i, (label, runs) in enumerate(lines.items()):
            series = [r[tag] for r in runs if tag in r]
            if not series:
                continue
            common = sorted(set.intersection(*(set(k.tolist()) for k, _ in series)))  # logged by every seed
            mean = [np.mean([v[k == c][-1] for k, v in series]) for c in common]
            ax.plot(common, mean, color=f"C{i % 10}", label=label)
        ax.set_xlabel("kimg")
        ax.set_title(f"{tag} (training batches; mean over seeds)", fontsize=9)
    axes[0][0].legend(fontsize=6)
    _save(plt, fig, path, title)
    return True


def _last_image(run_dir: Path, prefer: tuple[str, ...]):
    events = _events(run_dir / "tensorboard", "images")
    tags = events.Tags()["images"]
    for want in prefer:
        tag = next((t for t in tags if t.endswith(want)), None)
        if tag:
            from io import BytesIO

            from PIL import Image

            return np.asarray(Image.open(BytesIO(events.Images(tag)[-1].encoded_image_string)).convert("RGB"))
    return None


def sample_sheet(table: Table, records: list[dict], path: Path, title: str) -> bool:
    """The last image grid of each cell's first-seed run: for an inpainting table one sheet in columns
    (masked input | each model's completion | original), prior samples side by side otherwise."""
    inpainting = metric_keys(table)[0].startswith("inpaint")
    shown: dict[tuple[str, str], np.ndarray] = {}
    for rec in sorted(records, key=lambda r: r["seed"]):
        cell = (_text(rec["values"][table.rows]), _text(rec["values"][table.columns]) if table.columns else "")
        run_dir = rec.get("run_dir")
        if cell in shown or not run_dir or not (Path(run_dir) / "tensorboard").is_dir():
            continue
        image = _last_image(Path(run_dir), ("inpainting",) if inpainting else ("samples/prior",))
        if image is not None:
            shown[cell] = image
    if not shown:
        return False
    rows = list(dict.fromkeys(r for r, _ in shown))
    cols = list(dict.fromkeys(c for _, c in shown))
    if inpainting:
        return _inpainting_sheet(table, shown, rows, cols, path, title)
    plt = _pyplot()
    fig, axes = plt.subplots(len(cols), len(rows), figsize=(3 * len(rows), 3.2 * len(cols) + 0.4), squeeze=False)
    for j, col in enumerate(cols):
        for i, row in enumerate(rows):
            ax = axes[j][i]
            ax.axis("off")
            if (row, col) in shown:
                ax.imshow(shown[(row, col)])
                where = f", {table.columns.split('.')[-1]} = {col}" if table.columns else ""
                ax.set_title(f"{table.rows.split('.')[-1]} = {row}{where}", fontsize=8)
    _save(plt, fig, path, title)
    return True


def grid_cells(grid: np.ndarray, columns: int, pad: int = 2) -> list[list[np.ndarray]]:
    """An image_grid.tile image (square cells, `pad` pixels around each) cut back into its rows of
    `columns` cells."""
    side = (grid.shape[1] - pad) // columns - pad
    step = side + pad
    rows = (grid.shape[0] - pad) // step
    return [
        [grid[pad + r * step : pad + r * step + side, pad + c * step : pad + c * step + side] for c in range(columns)]
        for r in range(rows)
    ]


def inpainting_columns(grids: dict[str, np.ndarray]) -> list[tuple[str, list[np.ndarray]]]:
    """model -> its logged inpainting grid (rows of masked input | completion | original) as labelled
    columns: the masked inputs, each model's completions, the originals — when every model saw the same
    masked images; otherwise each model's three columns, so nothing is shown beside the wrong input."""
    from ..training.evaluation import INPAINT_COLUMNS

    cells = {model: grid_cells(grid, len(INPAINT_COLUMNS)) for model, grid in grids.items()}
    n = min(len(c) for c in cells.values())
    first = next(iter(cells.values()))
    same = all(
        np.array_equal(c[i][k], first[i][k]) for c in cells.values() for i in range(n) for k in (0, len(c[i]) - 1)
    )
    column = lambda c, k: [c[i][k] for i in range(n)]  # noqa: E731
    if same:
        completions = [(model, column(c, 1)) for model, c in cells.items()]
        return [(INPAINT_COLUMNS[0], column(first, 0)), *completions, (INPAINT_COLUMNS[-1], column(first, -1))]
    return [(f"{model}: {name}", column(c, k)) for model, c in cells.items() for k, name in enumerate(INPAINT_COLUMNS)]


def _inpainting_sheet(table: Table, shown: dict, rows: list[str], cols: list[str], path: Path, title: str) -> bool:
    plt = _pyplot()
    panels = [inpainting_columns({r: shown[(r, c)] for r in rows if (r, c) in shown}) for c in cols]
    width = max(4.5, 0.9 * max(len(p) for p in panels) + 0.6)
    height = sum(0.9 * len(p[0][1]) + 0.9 for p in panels)
    fig, axes = plt.subplots(len(cols), 1, figsize=(width, height), squeeze=False)
    for ax, col, columns in zip(axes[:, 0], cols, panels):
        gap = lambda a: np.pad(a, ((1, 1), (3, 3), (0, 0)), constant_values=255)  # noqa: E731 — white between columns
        sheet = np.concatenate([np.concatenate([gap(a) for a in cells]) for _, cells in columns], axis=1)
        ax.imshow(sheet)
        side = sheet.shape[1] / len(columns)
        ax.set_xticks([side * (k + 0.5) for k in range(len(columns))], [_wrapped(n) for n, _ in columns], fontsize=7)
        ax.xaxis.tick_top()
        ax.set_yticks([])
        ax.tick_params(length=0)
        if table.columns:
            ax.set_xlabel(f"{table.columns.split('.')[-1]} = {col}", fontsize=8)
    _save(plt, fig, path, title)
    return True


def _wrapped(label: str) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(label, 12))


def write_figures(grid: Grid, scale: str, records: list[dict], out: Path) -> list[str]:
    """Every figure of the summary into `out`; returns summary.md's lines that show them."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f"{grid.name}_{scale}_*.png"):  # an earlier summary's figures (other tables)
        stale.unlink()
    lines, sheets = [], set()
    for i, table in shown_tables(grid, scale):
        name = f"{grid.name}_{scale}_table{i}.png"
        heading = table.label or metric_keys(table)[0]
        if table_figure(table, records, out / name, f"{grid.title}: {heading}"):
            lines.append(f"![{heading}: ours (seeds as dots) and the paper's values]({name})")
        sheet = (table.rows, table.columns, metric_keys(table)[0].startswith("inpaint"))
        name = f"{grid.name}_{scale}_table{i}_samples.png"
        if sheet not in sheets and sample_sheet(table, records, out / name, f"{grid.title}: first seed"):
            sheets.add(sheet)
            lines.append(f"![{heading}: images of the first seed]({name})")
    name = f"{grid.name}_{scale}_curves.png"
    if curves_figure(grid, scale, records, out / name, f"{grid.title}: logged training metrics"):
        lines.append(f"![logged training metrics against kimg]({name})")
    return lines
