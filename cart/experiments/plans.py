"""Plans: the paper's experiment as data (`cart/presets/plans/<tier>.toml`), expanded into runs.

A plan file holds one tier: study-wide defaults (`train_preset`, `[model]`, `[train]`, the
selection `metric` (a validation set, or `in_domain` for the token-weighted in-domain mix), the
`floor_margin` by which every compared run must beat its n-gram floor before a verdict is drawn)
and an ordered table of stages. Stage kinds:

- `grid`     the Cartesian product of model fields x seeds (Stage 1). With `derive`, the P and R
             values come from another stage's results by a rule (Stage 2 as the paper intended):
             best P = the P that wins at most widths; R* = the best R at that P (most widths);
             R set = R* + r_offsets. The choice and its evidence are stored with the stage.
             `derive.pin = "published"` runs the paper's own Stage 2 grid instead (P 6, R 6/8/10),
             recording what the rule would have chosen beside it.
- `parity`   per width, a reference CART config and the dense baselines whose stored parameter
             count is nearest CART's stored and effective counts (`cart.accounting.parity`), plus
             any `extra_depths` (the paper's hand-picked 12 layers at d=1024).
- `variants` a base config and named variants (model and/or recipe overrides, or the homogeneous
             control), optionally at several widths: ablations, fidelity, training-time variable R.
- `vary_r`   evaluate trained models at many loop counts: the best model of a stage at its
             largest width, and every member of the listed stages.
- `tasks`    zero- and few-shot benchmarks (`cart eval tasks`, args.tasks e.g. "paper") of the same
             selection of models, one evaluation per entry of `shots` (default [0]).
A stage kind is one entry of `STAGE_KINDS`: its table (a dataclass of the keys it accepts, typed and
validated by `cart.validation`), the rules relating those keys, its expander.

Any stage may carry a `question` (one sentence): the report introduces the stage's section with it.

A run is identified by the hash of its spec (model config with every default filled in, the
resolved training recipe, seed), so stages that name the same configuration share one run.
Nothing here runs anything: `expand` inserts runs into the store, the orchestrator runs them.
"""
from __future__ import annotations

import itertools
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from cart.accounting import account, parity
from cart.config import CARTConfig, DenseConfig, config_from_dict, config_to_dict, homogeneous_control
from cart.experiments.store import RunRequest, Store
from cart.paths import check_name
from cart.validation import REQUIRED, Check, ConfigError, each, from_dict, non_negative, nonempty, option, positive

PLAN_DIR = Path(__file__).resolve().parent.parent / "presets" / "plans"
# model fields whose non-default value shows up in a run's name
_FLAG_NAMES = {"fidelity": {"paper": "paperfid"}, "freeze_kv": {False: "unfrozenkv"}, "share_core": {False: "unshared"},
               "core_attention": {"self": "selfattn"}, "hyper_connections": {False: "nohyper"},
               "lti_gate": {False: "nogate"}, "loop_embedding": {False: "nolie"}}


class PlanError(ValueError):
    pass


@dataclass
class Stage:
    name: str
    kind: str
    index: int
    title: str
    raw: dict    # the stage's table as the file wrote it (recorded in the study)
    table: Any   # the same, validated: its kind's dataclass in STAGE_KINDS, every default filled in
    seeds: list[int]
    train: dict  # recipe overrides for this stage (plan [train] merged in)
    model: dict  # model fields for this stage (plan [model] merged in)

    @property
    def after(self) -> list[str]:
        """Stages whose results this one needs before it can be expanded."""
        deps = []
        if self.kind == "grid" and self.table.derive is not None:
            deps.append(self.table.derive.source)
        if self.kind in ("vary_r", "tasks"):
            if self.table.best_of is not None:
                deps.append(self.table.best_of)
            deps += list(self.table.also)
        return deps


@dataclass
class Plan:
    tier: str
    source: str
    description: str
    metric: str
    train_preset: str | None
    max_failures: int
    stages: dict[str, Stage] = field(default_factory=dict)
    raw: dict = field(default_factory=dict)
    floor_margin: float = 0.0  # verdicts need every compared run this much below its n-gram floor

    def select(self, names: str | list[str]) -> list[Stage]:
        """'all', a stage name, or a comma-separated list."""
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",") if n.strip()]
        if names == ["all"]:
            return list(self.stages.values())
        unknown = [n for n in names if n not in self.stages]
        if unknown:
            raise PlanError(f"{self.source}: no stage(s) {unknown}; stages are {list(self.stages)} (or 'all')")
        return [self.stages[n] for n in names]


def plan_path(tier: str) -> Path:
    """A tier name (cart/presets/plans/<tier>.toml) or a path to a plan file."""
    p = Path(tier)
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise PlanError(f"plan file not found: {p}")
        return p
    path = PLAN_DIR / f"{tier}.toml"
    if not path.is_file():
        known = sorted(x.stem for x in PLAN_DIR.glob("*.toml"))
        raise PlanError(f"unknown tier {tier!r}: no {path} (tiers: {known}; or pass a plan .toml file)")
    return path


def load_plan(tier: str) -> Plan:
    path = plan_path(tier)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise PlanError(f"{path}: {e}") from e
    return parse_plan(raw, str(path))


# ---------------------------------------------------------------------- the file's tables, as typed schemas
@dataclass(kw_only=True)
class _PlanFile:
    tier: str = option(REQUIRED, "the tier's name, recorded in the study")
    metric: str = option(REQUIRED, "the selection metric: a validation set, or in_domain")
    description: str = ""
    floor_margin: float = option(0.0, "how far below its n-gram floor every compared run must be",
                                 Check(lambda v: 0 <= v < 1, "a number in [0, 1) (0.1 = beat the n-gram floor by 10 %)"))
    train_preset: str | None = option(None, "the training preset the [train] tables override")
    max_failures: int = option(3, "failed attempts before a run is given up", non_negative)
    model: dict = option({}, "model fields every stage starts from")
    train: dict = option({}, "training recipe fields every stage starts from")
    stage: dict[str, dict] = option({}, "the stages, in order ([stage.<name>])")


@dataclass(kw_only=True)
class _Stage:
    """The keys every stage has; each kind adds its own (a subclass, named in STAGE_KINDS)."""

    kind: str
    title: str | None = option(None, "the report's heading (default: the stage's name)")
    question: str | None = option(None, "one sentence: the report introduces the stage's section with it")
    seeds: list[int] = option([42], "one run per seed", each(non_negative))
    train: dict | str = option({}, "training recipe fields, or the name of an earlier stage whose [train] to reuse")
    model: dict = option({}, "model fields over the plan's [model]")


@dataclass(kw_only=True)
class _Derive:
    source: str = option(REQUIRED, "the stage whose results choose P and R", key="from")
    r_offsets: list[int] = option([-2, 0, 2], "R set = R* + these")
    p: int | Literal["best"] = option("best", "P: the rule's choice, or a fixed value")
    widths: list[int] | None = option(None, "widths d (default: the source stage's)", each(positive))
    pin: Literal["published"] | None = option(None, "published: the paper's own Stage 2 grid")


@dataclass(kw_only=True)
class _GridStage(_Stage):
    grid: dict[str, list] = option({}, "model field = [values]: their Cartesian product", each(nonempty))
    derive: _Derive | None = option(None, "P and R from another stage's results")


@dataclass(kw_only=True)
class _ParityStage(_Stage):
    widths: list[int] = option(REQUIRED, "widths d", nonempty, each(positive))
    reference: dict = option(REQUIRED, "the reference CART config's fields")
    targets: list[Literal["stored", "effective"]] = option(["stored", "effective"], "parameter counts to match")
    extra_depths: dict[str, list[int]] = option({}, "width = [dense depths] added by hand",
                                                Check(lambda t: all(k.isdigit() for k in t), "a table of width = [depths]"))


@dataclass(kw_only=True)
class _Variant:
    model: dict = option({}, "model fields over the stage's base")
    train: dict = option({}, "training recipe fields over the stage's")
    control: Literal["shared", "unshared"] | None = option(None, "the homogeneous control of the base config")
    title: str | None = None


@dataclass(kw_only=True)
class _VariantsStage(_Stage):
    base: dict = option({}, "the base model config")
    widths: list[int] | None = option(None, "widths d (default: the base's)", each(positive))
    variants: dict[str, _Variant] = option(REQUIRED, "name = {model, train, control, title}", nonempty)


@dataclass(kw_only=True)
class _Evaluation(_Stage):
    best_of: str | None = option(None, "evaluate the best CART model of this stage (at its largest width)")
    also: list[str] = option([], "and every finished member of these stages")
    args: dict = option({}, "arguments of the evaluation")


@dataclass(kw_only=True)
class _VaryRStage(_Evaluation):
    loops: list[int] = option(REQUIRED, "loop counts R", nonempty, each(positive))


@dataclass(kw_only=True)
class _TasksStage(_Evaluation):
    shots: list[int] = option([0], "few-shot counts, one evaluation each", each(non_negative))


def _check_evaluation(st: _Evaluation, where: str) -> None:
    if st.kind == "tasks" and not st.args.get("tasks"):
        raise PlanError(f"{where}: a tasks stage needs args.tasks (e.g. \"paper\")")
    if st.best_of is None and not st.also:
        raise PlanError(f"{where}: a {st.kind} stage needs best_of and/or also")


def parse_plan(raw: dict, source: str = "plan") -> Plan:
    try:
        spec = from_dict(_PlanFile, raw, source, where="")
    except ConfigError as e:
        raise PlanError(str(e)) from None
    plan = Plan(tier=spec.tier, source=source, description=spec.description, metric=spec.metric,
                train_preset=spec.train_preset, max_failures=spec.max_failures, raw=raw, floor_margin=spec.floor_margin)
    if not spec.stage:
        raise PlanError(f"{source}: no [stage.*] tables")
    for i, (name, st) in enumerate(spec.stage.items()):
        try:  # a stage name becomes part of every run name, hence of run directories under the study
            check_name(name, "stage name")
        except ValueError as e:
            raise PlanError(f"{source}: {e}") from None
        plan.stages[name] = _parse_stage(plan, spec, name, i, st)
    for st in plan.stages.values():
        for dep in st.after:
            if dep not in plan.stages:
                raise PlanError(f"{source}: stage {st.name!r} needs stage {dep!r}, which the plan does not define")
            if plan.stages[dep].index >= st.index:
                raise PlanError(f"{source}: stage {st.name!r} needs {dep!r}, which must come before it in the file")
    return plan


def _parse_stage(plan: Plan, spec: _PlanFile, name: str, index: int, st: dict) -> Stage:
    where = f"{plan.source}: stage {name!r}"
    kind = st.get("kind")
    if kind not in STAGE_KINDS:
        raise PlanError(f"{where}: kind must be one of {tuple(STAGE_KINDS)}, got {kind!r}")
    try:
        table = from_dict(STAGE_KINDS[kind].table, st, source=where, where="")
    except ConfigError as e:
        raise PlanError(str(e)) from None
    train = table.train
    if isinstance(train, str):  # "same recipe as stage X"
        other = spec.stage.get(train)
        if other is None or not isinstance(other.get("train", {}), dict):
            raise PlanError(f"{where}: train = {train!r} must name an earlier stage with a [train] table")
        train = other.get("train", {})
    stage = Stage(name=name, kind=kind, index=index, title=name if table.title is None else table.title, raw=st,
                  table=table, seeds=table.seeds, train={**spec.train, **train}, model={**spec.model, **table.model})
    if STAGE_KINDS[kind].check is not None:
        STAGE_KINDS[kind].check(table, where)
    # validate every model config the stage could build now (derived ones are validated on expansion)
    try:
        config_from_dict({**stage.model}, source=where)
    except ValueError as e:
        raise PlanError(str(e)) from e
    return stage


# ---------------------------------------------------------------------- run requests
def resolve_recipe(plan: Plan, overrides: dict, model: dict | None = None, source: str = "plan") -> dict:
    """The full training recipe (every TrainConfig field but model/out_dir/seed) for these overrides:
    the plan's `train_preset` (if any) updated by them, validated together with the run's model."""
    overrides = {k: v for k, v in overrides.items() if k not in ("model", "out_dir", "seed")}
    try:
        from cart.train import TrainConfig  # noqa: PLC0415 - planning works without the trainer installed
    except ImportError:
        return {"preset": plan.train_preset, **overrides}
    try:
        if plan.train_preset:
            cfg = TrainConfig.from_preset(plan.train_preset, **overrides, **({"model": model} if model else {}))
        else:
            cfg = TrainConfig.from_dict({**overrides, **({"model": model} if model else {})}, source=source)
    except (ValueError, TypeError, FileNotFoundError) as e:
        raise PlanError(f"{source}: {e}") from e
    d = cfg.to_dict()
    for k in ("model", "out_dir", "seed", "resume"):
        d.pop(k, None)
    from cart.train.config import ADDED_FIELDS  # noqa: PLC0415
    for k, old in ADDED_FIELDS.items():  # newer fields at their old value: existing run keys stay valid
        if d.get(k) == old:
            d.pop(k)
    return d


def _model_dict(fields: dict, source: str) -> dict:
    return config_to_dict(config_from_dict(dict(fields), source=source))


def model_tags(model: dict) -> dict:
    cfg = config_from_dict(model)
    if isinstance(cfg, CARTConfig):
        t = {"arch": "cart", "d": cfg.d_model, "P": cfg.n_prelude, "R": cfg.n_loops}
    else:
        t = {"arch": "dense" if cfg.attention == "mha" else "homogeneous", "d": cfg.d_model, "layers": cfg.n_layers,
             "shared": cfg.share_layers}
    acc = account(cfg)
    t.update(stored=acc.stored, effective=acc.effective)
    return t


def run_name(stage: str, model: dict, seed: int | None) -> str:
    cfg = config_from_dict(model)
    if isinstance(cfg, CARTConfig):
        parts = [f"cart-d{cfg.d_model}-P{cfg.n_prelude}-R{cfg.n_loops}"]
        parts += [_FLAG_NAMES[f][getattr(cfg, f)] for f in _FLAG_NAMES if getattr(cfg, f) in _FLAG_NAMES[f]]
    else:
        kind = "dense" if cfg.attention == "mha" else "homog"
        parts = [f"{kind}-d{cfg.d_model}-L{cfg.n_layers}"] + (["shared"] if cfg.share_layers else [])
    return "-".join([stage, *parts] + ([f"s{seed}"] if seed is not None else []))


def _cost(model: dict, train: dict) -> float:
    """Relative training cost, to start the longest runs of a stage first (shorter tail)."""
    cfg = config_from_dict(model)
    seq = int(train.get("seq_len") or cfg.max_seq_len)
    tokens = float(train.get("steps") or 1) * float(train.get("batch_size") or 1) * float(train.get("grad_accum") or 1) * seq
    return account(cfg, seq_len=seq).train_flops_per_token * tokens


def run_cost(spec: dict) -> float:
    """Training FLOPs of a run spec (0 for evaluations)."""
    if spec.get("kind") != "train":
        return 0.0
    return _cost(spec["model"], spec["train"])


def train_request(plan: Plan, stage: Stage, model: dict, seed: int, train: dict | None = None) -> RunRequest:
    model = _model_dict(model, f"{plan.source}: stage {stage.name!r}")
    recipe = resolve_recipe(plan, {**stage.train, **(train or {})}, model, f"{plan.source}: stage {stage.name!r}")
    spec = {"kind": "train", "model": model, "train": recipe, "seed": int(seed)}
    return RunRequest(name=run_name(stage.name, model, seed), kind="train", spec=spec, tier=plan.tier, seed=int(seed),
                      max_failures=plan.max_failures)


def _prioritise(stage: Stage, members: list[tuple[str, dict, RunRequest]]) -> None:
    costs = sorted({id(r): _cost(r.spec["model"], r.spec["train"]) for _, _, r in members if r.kind == "train"}.items(),
                   key=lambda kv: -kv[1])
    rank = {k: i for i, (k, _) in enumerate(costs)}
    for _, _, r in members:
        r.priority = stage.index * 1_000_000 + rank.get(id(r), 0)


# ---------------------------------------------------------------------- selection helpers
def metric_value(finals: dict[str, float], metric: str) -> float | None:
    """The selection metric of a run: perplexity on the named validation set, the in-domain mix
    (`in_domain`), or a finals key."""
    from cart.experiments.analysis.view import metric_from_finals
    return metric_from_finals(finals, metric)


def stage_cells(store: Store, stage: str, metric: str) -> dict[tuple, list[float]]:
    """(d, P, R) -> metric values over seeds, for the finished CART members of a stage."""
    members = [m for m in store.members(stage) if m["status"] == "done"]
    finals = store.finals(m["run_id"] for m in members)
    cells: dict[tuple, list[float]] = {}
    for m in members:
        t = m["tags"]
        if t.get("arch") != "cart":
            continue
        v = metric_value(finals.get(m["run_id"], {}), metric)
        if v is not None:
            cells.setdefault((t["d"], t["P"], t["R"]), []).append(v)
    return cells


def _mode(values: list[int]) -> int:
    """Most common value; ties go to the larger (the paper's preference for depth)."""
    c = Counter(values)
    top = max(c.values())
    return max(v for v in c if c[v] == top)


def derive_stage2(cells: dict[tuple, list[float]], r_offsets: list[int], p_rule: Any = "best") -> dict:
    """Stage 2's P and R set from Stage 1 cells (d, P, R) -> values. Returns the choice and its evidence."""
    mean = {k: sum(v) / len(v) for k, v in cells.items()}
    widths = sorted({d for d, _, _ in mean})
    if not widths:
        raise PlanError("cannot derive: the source stage has no finished CART runs")
    best_p = {}
    for d in widths:
        at = {k: v for k, v in mean.items() if k[0] == d}
        best_p[d] = min(at, key=at.get)[1]
    P = _mode(list(best_p.values())) if p_rule == "best" else int(p_rule)
    best_r = {}
    for d in widths:
        at = {k: v for k, v in mean.items() if k[0] == d and k[1] == P}
        if at:
            best_r[d] = min(at, key=at.get)[2]
    if not best_r:
        raise PlanError(f"cannot derive: no finished runs at P={P}")
    R = _mode(list(best_r.values()))
    r_set = sorted({R + o for o in r_offsets if R + o >= 1})
    return {"rule": f"P = the P of the best cell at most widths (ties: larger); R* = the best R at that P at most widths; "
                    f"R set = R* + {list(r_offsets)}",
            "best_cell_P_per_width": {str(d): p for d, p in best_p.items()},
            "best_R_at_P_per_width": {str(d): r for d, r in best_r.items()},
            "P": P, "R_star": R, "R_set": r_set}


def best_run(store: Store, stage: str, metric: str, width: str | int = "max") -> dict | None:
    """The finished CART member of a stage with the lowest metric at the given (default: largest) width."""
    members = [m for m in store.members(stage) if m["status"] == "done" and m["tags"].get("arch") == "cart"]
    finals = store.finals(m["run_id"] for m in members)
    scored = [(metric_value(finals.get(m["run_id"], {}), metric), m) for m in members]
    scored = [(v, m) for v, m in scored if v is not None]
    if not scored:
        return None
    d = max(m["tags"]["d"] for _, m in scored) if width == "max" else int(width)
    at = [(v, m) for v, m in scored if m["tags"]["d"] == d]
    return min(at, key=lambda vm: vm[0])[1] if at else None


# ---------------------------------------------------------------------- expansion
def stage_ready(store: Store, stage: Stage) -> tuple[bool, str]:
    for dep in stage.after:
        if store.stage_expanded(dep) is None:
            return False, f"stage {dep!r} has not been planned in this study"
        c = Counter(m["status"] for m in store.members(dep))
        if c["pending"] or c["running"]:
            return False, f"stage {dep!r} has {c['pending'] + c['running']} unfinished runs"
    return True, ""


@dataclass
class _Expansion:
    """What an expander builds: members (label, tags, request) and, for derived stages, the derivation."""

    plan: Plan
    stage: Stage
    store: Store
    members: list[tuple[str, dict, RunRequest]] = field(default_factory=list)
    derivation: dict | None = None

    @property
    def where(self) -> str:
        return f"{self.plan.source}: stage {self.stage.name!r}"

    def train(self, label: str, tags: dict, model: dict, seed: int, train: dict | None = None) -> None:
        req = train_request(self.plan, self.stage, model, seed, train)
        self.members.append((label, {**model_tags(req.spec["model"]), "seed": seed, **tags}, req))


def _expand_grid(x: _Expansion) -> None:
    t, stage, plan = x.stage.table, x.stage, x.plan
    grid = dict(t.grid)
    if t.derive is not None:
        d = t.derive
        cells = stage_cells(x.store, d.source, plan.metric)
        rule = derive_stage2(cells, d.r_offsets, d.p) if cells else None
        if d.pin == "published":  # the paper's own Stage 2 grid; what the rule would pick is kept beside it
            from cart.experiments.published import STAGE2_GRID
            x.derivation = {"rule": "pinned to the paper's published Stage 2 grid", "P": STAGE2_GRID["n_prelude"],
                            "R_set": list(STAGE2_GRID["n_loops"]), "rule_would_give": rule}
        elif rule is None:
            raise PlanError(f"{x.where}: cannot derive: stage {d.source!r} has no finished CART runs")
        else:
            x.derivation = rule
        x.derivation.update({"from": d.source, "metric": plan.metric})
        grid["n_prelude"] = [x.derivation["P"]]
        grid["n_loops"] = x.derivation["R_set"]
        if "d_model" not in grid:
            grid["d_model"] = d.widths or sorted({k[0] for k in cells})
    keys = list(grid)
    for values in itertools.product(*(grid[k] for k in keys)):
        fields = {**stage.model, **dict(zip(keys, values))}
        for seed in stage.seeds:
            m = _model_dict(fields, x.where)
            x.train(f"{run_name('', m, seed).lstrip('-')}", {}, m, seed)


def _expand_parity(x: _Expansion) -> None:
    st, stage = x.stage.table, x.stage
    extra = {int(k): v for k, v in st.extra_depths.items()}
    for d in st.widths:
        ref = config_from_dict({**stage.model, **st.reference, "d_model": d}, source=x.where)
        if not isinstance(ref, CARTConfig):
            raise PlanError(f"{x.where}: the parity reference must be a CART config")
        depths: list[tuple[str, int, dict]] = []
        for t in st.targets:
            pm = parity(ref, t)
            depths.append((t, pm.n_layers, {"target": t, "target_params": pm.target_params, "rel_error": pm.rel_error}))
        for n in extra.get(d, []):
            depths.append(("extra", n, {"target": "extra"}))
        dense_base = {k: v for k, v in stage.model.items() if k in {f for f in DenseConfig.__dataclass_fields__}}
        for seed in stage.seeds:
            x.train(f"cart-d{d}-s{seed}", {"role": "reference"}, config_to_dict(ref), seed)
            for t, n, tags in depths:
                dense = {**dense_base, "kind": "dense", "d_model": d, "n_layers": n, "attention": "mha"}
                x.train(f"dense-{t}-d{d}-L{n}-s{seed}", {"role": "dense", **tags}, dense, seed)


def _expand_variants(x: _Expansion) -> None:
    st, stage = x.stage.table, x.stage
    base = {**stage.model, **st.base}
    for d in st.widths or [base.get("d_model")]:
        for vname, v in st.variants.items():
            fields = {**base, **v.model}
            if d is not None:
                fields["d_model"] = d
            cfg = config_from_dict(fields, source=f"{x.where} variant {vname!r}")
            if v.control:
                if not isinstance(cfg, CARTConfig):
                    raise PlanError(f"{x.where}: variant {vname!r}: control needs a CART base config")
                cfg = homogeneous_control(cfg, share_layers=v.control == "shared")
            for seed in stage.seeds:
                x.train(f"{vname}-d{cfg.d_model}-s{seed}", {"variant": vname, "title": vname if v.title is None else v.title},
                        config_to_dict(cfg), seed, v.train)


def _evaluated_runs(x: _Expansion) -> list[tuple[str, dict]]:
    """(stage, member) pairs an evaluation stage evaluates: the best of `best_of`, every member of `also`."""
    st, sources = x.stage.table, []
    x.derivation = {"metric": x.plan.metric}
    if st.best_of is not None:
        m = best_run(x.store, st.best_of, x.plan.metric)
        if m is None:
            raise PlanError(f"{x.where}: stage {st.best_of!r} has no finished CART run to evaluate")
        sources.append((st.best_of, m))
        x.derivation["best"] = {"stage": st.best_of, "label": m["label"], "run": m["name"]}
    for other in st.also:
        sources += [(other, m) for m in x.store.members(other) if m["status"] == "done"]
    return sources


def _expand_evaluation(x: _Expansion) -> None:
    """vary_r: the model at many loop counts; tasks: zero-/few-shot benchmarks (one run per shot count)."""
    st, stage, plan = x.stage.table, x.stage, x.plan
    sources, seen = _evaluated_runs(x), set()
    for sname, m in sources:
        run = x.store.run(m["run_id"])
        if run.key in seen:
            continue
        seen.add(run.key)
        cfg = config_from_dict(run.spec["model"])
        tags = {**m["tags"], "source_stage": sname, "source_label": m["label"], "source_run": run.name,
                "best": sname == st.best_of and m is sources[0][1]}
        if stage.kind == "vary_r":
            if isinstance(cfg, CARTConfig) and not cfg.share_core:
                continue  # R distinct cores: only the trained R exists
            evals = [({"loops": list(st.loops)}, f"{stage.name}-{run.name}", f"{sname}:{m['label']}", {})]
        else:
            evals = [({"shots": k}, f"{stage.name}-{k}shot-{run.name}", f"{sname}:{m['label']}:{k}shot", {"shots": k})
                     for k in st.shots]
        for extra, name, label, more_tags in evals:
            spec = {"kind": "eval", "eval": stage.kind, "of": run.key, **extra, "args": dict(st.args)}
            req = RunRequest(name=name, kind="eval", spec=spec, tier=plan.tier, seed=run.seed, max_failures=plan.max_failures)
            x.members.append((label, {**tags, **more_tags}, req))


@dataclass(frozen=True)
class StageKind:
    table: type                                        # the stage's keys: a dataclass validated by cart.validation
    check: Callable[[Any, str], None] | None           # rules relating its keys: (table, where) -> None, raises PlanError
    expand: Callable[[_Expansion], None]


STAGE_KINDS: dict[str, StageKind] = {
    "grid": StageKind(_GridStage, None, _expand_grid),
    "parity": StageKind(_ParityStage, None, _expand_parity),
    "variants": StageKind(_VariantsStage, None, _expand_variants),
    "vary_r": StageKind(_VaryRStage, _check_evaluation, _expand_evaluation),
    "tasks": StageKind(_TasksStage, _check_evaluation, _expand_evaluation),
}


def build_stage(plan: Plan, stage: Stage, store: Store) -> tuple[list[tuple[str, dict, RunRequest]], dict | None]:
    """The stage's members (label, tags, request) and, for derived stages, what was derived."""
    x = _Expansion(plan, stage, store)
    STAGE_KINDS[stage.kind].expand(x)
    _prioritise(stage, x.members)
    dup = [label for label, n in Counter(label for label, _, _ in x.members).items() if n > 1]
    if dup:
        raise PlanError(f"{x.where}: duplicate member labels {dup}")
    return x.members, x.derivation


def expand(plan: Plan, store: Store, stages: list[Stage] | None = None) -> int:
    """Plan every stage in scope that is not yet planned and whose inputs are complete.

    Idempotent and safe from several processes at once (the insert is one transaction that
    checks the stage is still unplanned). Returns how many stages were newly planned."""
    n = 0
    for stage in stages if stages is not None else list(plan.stages.values()):
        if store.stage_expanded(stage.name) is not None:
            continue
        ok, _ = stage_ready(store, stage)
        if not ok:
            continue
        try:
            members, derivation = build_stage(plan, stage, store)
        except PlanError:
            raise
        except ConfigError as e:  # a config only this expansion builds (a variant, a derived cell)
            raise PlanError(str(e.within(f"{plan.source}: stage {stage.name!r}"))) from None
        except (ValueError, TypeError) as e:
            raise PlanError(f"{plan.source}: stage {stage.name!r}: {e}") from None
        definition = {"kind": stage.kind, "title": stage.title, "index": stage.index, "raw": stage.raw, "metric": plan.metric,
                      "tier": plan.tier}
        if store.add_stage(stage.name, definition, derivation, members):
            n += 1
    return n


def check_scope(plan: Plan, store: Store, stages: list[Stage]) -> None:
    """A derived stage run on its own needs its inputs planned in this study (or in the same scope)."""
    names = {s.name for s in stages}
    for st in stages:
        for dep in st.after:
            if dep not in names and store.stage_expanded(dep) is None:
                raise PlanError(f"stage {st.name!r} is derived from stage {dep!r}, which this study has not run: "
                                f"run `cart sweep run {dep} ...` first, or include it (e.g. `all`)")


__all__ = ["Plan", "Stage", "PlanError", "load_plan", "parse_plan", "plan_path", "expand", "build_stage", "check_scope",
           "stage_ready", "run_cost", "derive_stage2", "best_run", "stage_cells", "metric_value", "model_tags", "run_name", "PLAN_DIR"]
