"""Reproduction grids: one small declarative YAML file per paper table or figure (experiments/).

A grid names a base config, the axes it varies, the seeds, the metrics `lfbm-evaluate` computes for
each point, the tables it reports (with the paper's values beside ours and the orderings the paper
claims), and a `cpu` and a `paper` scale: the overrides (budget), seeds and axis values of each.

    name: table4_anomaly
    title: Table 4 — anomaly detection on MNIST (AUPRC)
    config: configs/mnist28.yaml
    metrics: [anomaly, aggpost]
    axes:
      data.heldout_class: [1, 4, 5, 7, 9]          # a plain axis: key=value for each value
      prior:                                       # a named axis: each value is a list of overrides
        flow: [prior.kind=flow]
        ebm: [prior.kind=ebm, optim.lr_prior=2.0e-5]
    tables:
      - {metric: auprc, rows: prior, columns: data.heldout_class, higher_is_better: true,
         paper: {flow: {1: 0.349, ...}}, orderings: [[flow, ebm]]}
    scales:
      cpu: {seeds: [0, 1], axes: {prior: [flow]}, overrides: [train.total_kimg=40]}
      paper: {seeds: [0, 1, 2], overrides: [train.total_kimg=1060], slurm: {gpus_per_node: 1, time: "12:00:00"}}

Points are ordered seed-major (every axis combination for the first seed, then the next seed), so
a grid interrupted half-way already holds one complete seed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import LfbmError
from ..grids import expand, point_label

SEED_KEYS = ("train.seed", "eval.seed")


class GridError(LfbmError, ValueError):
    """A grid file that cannot be run; str() is the one-line message."""


@dataclass(frozen=True)
class Table:
    metric: str  # a key of metrics.json
    rows: str  # the axis whose values are the table's rows
    columns: str | None = None  # the axis whose values are its columns (None: one column)
    higher_is_better: bool | None = None  # None: no ordering is implied (diagnostics)
    label: str = ""  # what the metric is, for the heading
    paper: dict = field(default_factory=dict)  # row -> value, or row -> column -> value
    paper_label: str = "paper"  # what the bracketed paper values are (e.g. "paper, SVHN")
    paper_names: dict = field(default_factory=dict)  # row -> the paper's name for it (LFBM, ABP …)
    orderings: tuple = ()  # ((better, worse), …) as the paper claims them


@dataclass(frozen=True)
class Scale:
    seeds: tuple[int, ...]
    overrides: tuple[str, ...] = ()
    axes: dict = field(default_factory=dict)  # replaces some axes' values at this scale
    note: str = ""
    slurm: dict = field(default_factory=dict)  # launcher options for `--slurm` (gpus_per_node, time …)
    config: str = ""  # this scale's base config, if not the grid's
    metrics: tuple[str, ...] = ()  # this scale's lfbm-evaluate metrics, if not the grid's


@dataclass(frozen=True)
class Point:
    name: str  # run-directory name, e.g. prior-flow_heldout_class-4_seed-0
    values: dict  # axis -> value
    seed: int
    config: str  # the base config file
    overrides: tuple[str, ...]  # everything given to lfbm-train / lfbm-evaluate

    def key(self) -> str:
        """Hash of what defines the point's result (changing any of it means another experiment)."""
        return hashlib.sha256(json.dumps([self.config, *self.overrides]).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Grid:
    path: Path
    name: str
    title: str
    config: str
    metrics: tuple[str, ...]
    axes: dict
    tables: tuple[Table, ...]
    scales: dict
    description: str = ""
    # post-hoc EMA lengths (σ_rel) to score by FID beside the raw weights and the half-life EMA
    # (lfbm-evaluate --ema-length): the points' fid_raw, fid_ema, fid_posthoc, fid_posthoc_min
    ema_lengths: tuple[float, ...] = ()

    def config_for(self, scale_name: str) -> str:
        return self.scale(scale_name).config or self.config

    def metrics_for(self, scale_name: str) -> tuple[str, ...]:
        return self.scale(scale_name).metrics or self.metrics

    def scale(self, name: str) -> Scale:
        if name not in self.scales:
            raise GridError(f"{self.path}: no scale {name!r} (has: {', '.join(sorted(self.scales))})")
        return self.scales[name]

    def axis_values(self, scale_name: str) -> dict[str, list]:
        """Each axis's values at this scale (a scale may keep a subset)."""
        return {name: list(self.scale(scale_name).axes.get(name, list(values))) for name, values in self.axes.items()}

    def _axis_overrides(self, name: str, value: Any) -> tuple[str, ...]:
        if isinstance(self.axes[name], dict):  # a named variant: its own list of overrides
            return tuple(self.axes[name][value])
        return (f"{name}={_text(value)}",)

    def points(self, scale_name: str) -> list[Point]:
        scale = self.scale(scale_name)
        points = []
        for seed in scale.seeds:
            for values in expand(self.axis_values(scale_name)):
                overrides = (
                    *scale.overrides,
                    *(o for k, v in values.items() for o in self._axis_overrides(k, v)),
                    *(f"{k}={seed}" for k in SEED_KEYS),
                )
                label = point_label([(k, _text(v)) for k, v in values.items()])
                points.append(
                    Point(
                        f"{label}_seed-{seed}" if label else f"seed-{seed}",
                        values,
                        seed,
                        self.config_for(scale_name),
                        overrides,
                    )
                )
        return points


def _text(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _need(cond: bool, path: Path, what: str) -> None:
    if not cond:
        raise GridError(f"{path}: {what}")


def _table(raw: dict, axes: dict, path: Path) -> Table:
    known = set(Table.__dataclass_fields__)
    _need(
        isinstance(raw, dict) and not set(raw) - known, path, f"each table is a mapping of {sorted(known)}, got {raw!r}"
    )
    _need("metric" in raw and "rows" in raw, path, "each table needs 'metric' and 'rows'")
    for key in ("rows", "columns"):
        _need(
            raw.get(key) is None or raw[key] in axes,
            path,
            f"table {raw['metric']}: {key} {raw.get(key)!r} is not an axis",
        )
    orderings = tuple(tuple(o) for o in raw.get("orderings", ()))
    _need(all(len(o) == 2 for o in orderings), path, f"table {raw['metric']}: orderings are [better, worse] pairs")
    metric = tuple(raw["metric"]) if isinstance(raw["metric"], list) else raw["metric"]
    return Table(**{**raw, "metric": metric, "orderings": orderings})


def _scale(name: str, s: dict, axes: dict, path: Path) -> Scale:
    _need(isinstance(s, dict) and s.get("seeds"), path, f"scale {name!r} needs a non-empty 'seeds' list")
    unknown = set(s) - set(Scale.__dataclass_fields__)
    _need(
        not unknown,
        path,
        f"scale {name!r}: unknown keys {sorted(unknown)} (valid: {sorted(Scale.__dataclass_fields__)})",
    )
    extra = s.get("axes") or {}
    _need(set(extra) <= set(axes), path, f"scale {name!r}: axes {sorted(set(extra) - set(axes))} are not grid axes")
    for axis, kept in extra.items():
        _need(
            isinstance(kept, list) and kept and all(v in axes[axis] for v in kept),
            path,
            f"scale {name!r}: axis {axis!r} keeps values that the grid does not define: {kept!r}",
        )
    return Scale(
        seeds=tuple(int(v) for v in s["seeds"]),
        overrides=tuple(s.get("overrides") or ()),
        axes=extra,
        note=s.get("note", ""),
        slurm=s.get("slurm") or {},
        config=s.get("config", ""),
        metrics=tuple(s.get("metrics") or ()),
    )


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file; every problem is one GridError line naming the file."""
    path = Path(path)
    _need(path.is_file(), path, "grid file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise GridError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    known = {"name", "title", "description", "config", "metrics", "axes", "tables", "scales", "ema_lengths"}
    _need(isinstance(raw, dict) and not set(raw) - known, path, f"top-level keys must be among {sorted(known)}")
    for key in ("name", "config", "metrics", "scales"):
        _need(key in raw, path, f"missing '{key}'")
    axes = raw.get("axes") or {}
    _need(
        isinstance(axes, dict) and all(isinstance(v, (list, dict)) and v for v in axes.values()),
        path,
        "axes maps an override key to a list of values, or an axis name to {value: [overrides]}",
    )
    for name, values in axes.items():
        if isinstance(values, dict):
            _need(
                all(isinstance(o, list) and all(isinstance(x, str) and "=" in x for x in o) for o in values.values()),
                path,
                f"axis {name!r}: each named value maps to a list of key=value overrides",
            )
    scales = {name: _scale(name, s, axes, path) for name, s in raw["scales"].items()}
    return Grid(
        path=path,
        name=raw["name"],
        title=raw.get("title", raw["name"]),
        config=raw["config"],
        metrics=tuple(raw["metrics"]),
        axes=axes,
        scales=scales,
        description=raw.get("description", ""),
        tables=tuple(_table(t, axes, path) for t in raw.get("tables") or ()),
        ema_lengths=tuple(float(x) for x in raw.get("ema_lengths") or ()),
    )
