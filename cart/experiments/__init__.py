"""Experiments: the paper's study as resumable plans, a results store, an orchestrator, analysis and a report.

- `store.py`        SQLite results store of one study (runs, stages, attempts, metrics, finals; leases)
- `plans.py`        plans as data (`cart/presets/plans/<tier>.toml`) and their expansion into runs
- `orchestrator.py` workers that claim runs and execute each in a subprocess; print-commands / collect
- `analysis.py`     the paper's comparisons, with seed spread, as plain data
- `report.py`       Markdown + PNG figures + exported results
- `published.py`    the paper's numbers (SPEC §4)
"""
from cart.experiments.plans import Plan, PlanError, expand, load_plan
from cart.experiments.store import Run, RunRequest, Store

__all__ = ["Store", "Run", "RunRequest", "Plan", "PlanError", "load_plan", "expand"]
