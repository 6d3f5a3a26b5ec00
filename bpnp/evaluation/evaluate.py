"""The evaluation loop: run methods over a data loader, time them, collect per-problem metrics and
summaries, optionally at several injected outlier rates."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence, Sized
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from bpnp.data.sample import Batch
from bpnp.evaluation.baselines import DEFAULT_BUDGET_MS
from bpnp.metrics.aggregate import problem_metrics, summarize
from bpnp.metrics.output import Method, MethodOutput, initial_pose_output

log = logging.getLogger(__name__)


@dataclass
class EvalRow:
    """One method at one outlier rate: per-problem columns (each (P,)) and their summary.

    ``summary`` is :func:`~bpnp.metrics.aggregate.summarize` plus ``ms_per_problem`` (the method's
    own time) and ``ms_per_problem_with_loading`` (also the data loader's time).
    """

    method: str
    outlier_rate: float | None
    columns: dict[str, np.ndarray]
    ids: list[str] = field(default_factory=list)
    scenes: list[str] = field(default_factory=list)
    summary: dict = field(default_factory=dict)


def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _run(method: Method, batch: Batch, device: torch.device | str) -> tuple[MethodOutput, float]:
    """The method's output on a batch and its wall time in seconds (device work included)."""
    _sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        out = method(batch)
    _sync(device)
    return out, time.perf_counter() - start


class _Collector:
    def __init__(self, name: str) -> None:
        self.name = name
        self.parts: list[dict[str, torch.Tensor]] = []
        self.ids: list[str] = []
        self.scenes: list[str] = []

    def add(self, batch: Batch, out: MethodOutput, ms_each: float) -> None:
        cols = problem_metrics(batch, out)
        cols["ms"] = torch.full((len(batch),), ms_each, dtype=torch.float64)
        self.parts.append(cols)
        self.ids += list(batch.id) or [""] * len(batch)
        self.scenes += list(batch.scene) or [""] * len(batch)

    def row(self, rate: float | None, method_s: float, loading_s: float, metric_units: bool) -> EvalRow:
        keys = self.parts[0].keys() if self.parts else []
        columns = {k: torch.cat([p[k] for p in self.parts]).numpy() for k in keys}
        n = max(len(self.ids), 1)
        summary = summarize(columns, metric_units) if self.parts else {"num_problems": 0}
        summary["ms_per_problem"] = 1000.0 * method_s / n
        summary["ms_per_problem_with_loading"] = 1000.0 * (method_s + loading_s) / n
        return EvalRow(self.name, rate, columns, self.ids, self.scenes, summary)


def evaluate_method(
    method: Method,
    loader: Iterable[Batch],
    outlier_rate: float | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    initial_pose_row: bool = True,
    metric_units: bool = False,
) -> list[EvalRow]:
    """Evaluate one method on every batch of ``loader``.

    Returns one row, plus a "<name> (no PnP layer)" row read off the same forward pass when the
    method reports an initial pose (``R_init``) and ``initial_pose_row`` is set; that row is timed by
    the method's ``init_seconds`` (the time to its initial pose), else it shares the method's time.
    ``metric_units``: the scene units are metres, so recalls at metric thresholds are reported.
    """
    main, init = _Collector(method.name), _Collector(f"{method.name} (no PnP layer)")
    method_s = init_method_s = loading_s = 0.0
    rate_txt = "" if outlier_rate is None else f" @ outliers {outlier_rate:g}"
    total = len(loader.dataset) if isinstance(getattr(loader, "dataset", None), Sized) else None
    it = iter(loader)
    bar_args = {"desc": f"{method.name}{rate_txt}", "unit": "problem", "total": total, "leave": False}
    with tqdm(disable=not progress, **bar_args) as bar:
        while True:
            start = time.perf_counter()
            batch = next(it, None)
            if batch is None:
                break
            batch = batch.to(device)
            loading_s += time.perf_counter() - start
            out, seconds = _run(method, batch, device)
            method_s += seconds
            ms_each = 1000.0 * seconds / len(batch)
            main.add(batch, out, ms_each)
            init_out = initial_pose_output(out) if initial_pose_row else None
            if init_out is not None:
                init_s = seconds if out.init_seconds is None else out.init_seconds
                init_method_s += init_s
                init.add(batch, init_out, 1000.0 * init_s / len(batch))
            bar.update(len(batch))
    rows = [main.row(outlier_rate, method_s, loading_s, metric_units)]
    if init.parts:
        rows.append(init.row(outlier_rate, init_method_s, loading_s, metric_units))
    return rows


def evaluate_sweep(
    methods: Sequence[Method],
    make_loader: Callable[[float | None], Iterable[Batch]],
    outlier_rates: Sequence[float | None] = (None,),
    device: torch.device | str = "cpu",
    progress: bool = True,
    metric_units: bool = False,
) -> list[EvalRow]:
    """Evaluate every method at every outlier rate (``None``: the data's own outliers).

    ``make_loader(rate)`` must yield the same problems for every rate. Methods with a
    ``budget_ms`` attribute set to None (the random baseline) get the time per problem of the first
    method evaluated before them at the same rate, so the floor runs under the same time budget.
    """
    rows: list[EvalRow] = []
    # Methods that copy a budget run last, after the method whose time they copy.
    ordered = sorted(methods, key=lambda m: getattr(m, "budget_ms", 0.0) is None)
    for rate in outlier_rates:
        reference_ms: float | None = None
        for method in ordered:
            auto_budget = hasattr(method, "budget_ms") and method.budget_ms is None
            if auto_budget:
                method.budget_ms = reference_ms if reference_ms is not None else DEFAULT_BUDGET_MS
                log.info("%s: time budget %.1f ms per problem", method.name, method.budget_ms)
            try:
                new = evaluate_method(
                    method, make_loader(rate), rate, device, progress, metric_units=metric_units
                )
            finally:
                if auto_budget:
                    method.budget_ms = None
            if reference_ms is None and not auto_budget:
                reference_ms = new[0].summary["ms_per_problem"]
            rows += new
    return rows
