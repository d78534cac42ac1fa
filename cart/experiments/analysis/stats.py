"""Statistics for comparing architectures over seeds: means with intervals, Welch's t-test on
log-perplexity, the minimum detectable effect, equivalence, and rank correlation.

Conventions (every verdict in the report follows them):
- perplexities are compared on the log scale (a ratio of perplexities is a difference of mean
  losses); effects are reported as the relative change exp(Δ) − 1 with its 95 % interval;
- two arms with >= 2 seeds each: Welch's unequal-variance t-test, two-sided; the interval uses
  the Welch–Satterthwaite degrees of freedom;
- minimum detectable effect (MDE) at that n: (t_{1−α/2} + t_{power}) · SE, α = 0.05, power 0.8;
- an arm with one seed gets no test ("single seed, not tested");
- "no effect" claims are checked by equivalence (TOST): both one-sided 90 % bounds inside ±margin.
Pure Python (math, statistics): the t distribution via the regularised incomplete beta function.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

ALPHA = 0.05
POWER = 0.8


# ---------------------------------------------------------------------- the t distribution
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 3e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(lbeta) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbeta) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df degrees of freedom (df may be fractional: Welch)."""
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_ppf(p: float, df: float) -> float:
    """The p-quantile of Student's t (bisection on the cdf; |error| < 1e-10)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_ppf: p must be in (0, 1), got {p}")
    lo, hi = -1.0, 1.0
    while t_cdf(lo, df) > p:
        lo *= 2.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


# ---------------------------------------------------------------------- one arm
@dataclass
class Stat:
    """Values over seeds (any metric). `log=True` statistics are in `log_stat`."""

    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / self.n if self.values else float("nan")

    @property
    def std(self) -> float | None:
        """Sample standard deviation (n − 1); None for fewer than two values."""
        if self.n < 2:
            return None
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (self.n - 1))

    @property
    def sem(self) -> float | None:
        s = self.std
        return None if s is None else s / math.sqrt(self.n)

    def ci(self, level: float = 0.95) -> tuple[float, float] | None:
        """t interval of the mean; None for fewer than two values."""
        if self.n < 2:
            return None
        h = t_ppf(0.5 + level / 2, self.n - 1) * self.sem
        return self.mean - h, self.mean + h

    def fmt(self, digits: int = 2) -> str:
        """'mean ± std (n=k)'; a single value plainly."""
        if not self.values:
            return "—"
        s = f"{self.mean:.{digits}f}"
        if self.std is not None:
            s += f" ± {self.std:.{digits}f}"
        return s + (f" (n={self.n})" if self.n != 1 else "")


# ---------------------------------------------------------------------- two arms
@dataclass
class Comparison:
    """Arm a vs arm b on the log scale of a positive metric (perplexity): a/b − 1 and its interval."""

    n_a: int
    n_b: int
    mean_a: float            # arithmetic means of the raw values (for tables)
    mean_b: float
    diff: float              # mean log a − mean log b
    rel: float               # exp(diff) − 1: a is rel × 100 % above b
    se: float | None         # SE of diff (Welch); None when an arm has one seed
    df: float | None
    p: float | None          # two-sided Welch p-value
    ci: tuple[float, float] | None     # 95 % interval of rel
    ci90: tuple[float, float] | None   # 90 % interval of rel (equivalence)
    mde: float | None        # relative effect detectable with power 0.8 at α = 0.05, this n and spread

    @property
    def tested(self) -> bool:
        return self.se is not None

    @property
    def significant(self) -> bool:
        """The 95 % interval excludes no change."""
        return self.ci is not None and (self.ci[0] > 0 or self.ci[1] < 0)

    def text(self) -> str:
        """'+3.1 % [+1.0, +5.2], p = 0.01, n = 3 vs 3 (MDE 2.5 %)' or the single-seed form."""
        if not self.tested:
            return f"{100 * self.rel:+.1f} % (n = {self.n_a} vs {self.n_b}; single seed, not tested)"
        lo, hi = self.ci
        return (f"{100 * self.rel:+.1f} % [{100 * lo:+.1f}, {100 * hi:+.1f}], {p_text(self.p)}, n = {self.n_a} vs {self.n_b} "
                f"(MDE {100 * self.mde:.1f} %)")


def p_text(p: float) -> str:
    """'p < 0.001' or 'p = 0.012'."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def welch(a: list[float], b: list[float]) -> Comparison:
    """Welch's t-test on log(a) vs log(b) (positive values, e.g. perplexities)."""
    if not a or not b:
        raise ValueError("welch: both arms need at least one value")
    if min(a) <= 0 or min(b) <= 0:
        raise ValueError("welch: values must be positive (perplexities)")
    la, lb = Stat([math.log(x) for x in a]), Stat([math.log(x) for x in b])
    diff = la.mean - lb.mean
    out = dict(n_a=la.n, n_b=lb.n, mean_a=sum(a) / len(a), mean_b=sum(b) / len(b), diff=diff, rel=math.expm1(diff),
               se=None, df=None, p=None, ci=None, ci90=None, mde=None)
    if la.n >= 2 and lb.n >= 2:
        va, vb = la.std ** 2 / la.n, lb.std ** 2 / lb.n
        se = math.sqrt(va + vb)
        if se == 0:  # identical values in both arms: an exact result, no sampling spread
            df = float(la.n + lb.n - 2)
            p = 0.0 if diff else 1.0
        else:
            df = (va + vb) ** 2 / (va ** 2 / (la.n - 1) + vb ** 2 / (lb.n - 1))
            p = 2.0 * (1.0 - t_cdf(abs(diff) / se, df))
        out.update(_spread(diff, se, df, p))
    return Comparison(**out)


def _spread(diff: float, se: float, df: float, p: float) -> dict:
    """The sampling part of a Comparison on the log scale: SE, df, p, 95 % and 90 % intervals, MDE."""
    t95, t90 = t_ppf(1 - ALPHA / 2, df), t_ppf(0.95, df)
    return dict(se=se, df=df, p=p, ci=(math.expm1(diff - t95 * se), math.expm1(diff + t95 * se)),
                ci90=(math.expm1(diff - t90 * se), math.expm1(diff + t90 * se)), mde=math.expm1((t95 + t_ppf(POWER, df)) * se))


def paired(a: list[float], b: list[float]) -> Comparison:
    """Paired t-test on log(a_i) − log(b_i): the same models (seeds) measured two ways, e.g. one model
    run at two loop counts. `n_a` = `n_b` = the number of pairs."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired: need equally many values, at least one (got {len(a)} and {len(b)})")
    if min(a) <= 0 or min(b) <= 0:
        raise ValueError("paired: values must be positive (perplexities)")
    d = Stat([math.log(x) - math.log(y) for x, y in zip(a, b)])
    out = dict(n_a=d.n, n_b=d.n, mean_a=sum(a) / len(a), mean_b=sum(b) / len(b), diff=d.mean, rel=math.expm1(d.mean),
               se=None, df=None, p=None, ci=None, ci90=None, mde=None)
    if d.n >= 2:
        se, df = d.sem, float(d.n - 1)
        p = (0.0 if d.mean else 1.0) if se == 0 else 2.0 * (1.0 - t_cdf(abs(d.mean) / se, df))
        out.update(_spread(d.mean, se, df, p))
    return Comparison(**out)


def equivalent(c: Comparison, margin: float) -> bool:
    """TOST at α = 0.05: the 90 % interval of the relative effect lies inside ±margin."""
    return c.ci90 is not None and -margin < c.ci90[0] and c.ci90[1] < margin


# ---------------------------------------------------------------------- verdicts
def directional_verdict(c: Comparison, sign: int) -> str:
    """A claim that a is above (sign = +1) or below (sign = −1) b. "reproduced" / "contradicted" only
    where the 95 % interval excludes zero."""
    if not c.tested:
        return "single seed, not tested"
    if c.significant:
        return "reproduced" if c.rel * sign > 0 else "contradicted (the opposite, significantly)"
    return f"undetermined at this power (MDE {100 * c.mde:.1f} %)"


def null_verdict(c: Comparison, margin: float) -> str:
    """A claim of no effect: reproduced only by equivalence within ±margin; not reproduced when the
    95 % interval excludes zero."""
    if not c.tested:
        return "single seed, not tested"
    if c.significant:
        return f"not reproduced (an effect of {100 * c.rel:+.1f} %)"
    if equivalent(c, margin):
        return f"reproduced (equivalent within ±{100 * margin:.0f} %)"
    return f"undetermined at this power (no effect detected; MDE {100 * c.mde:.1f} %, equivalence margin ±{100 * margin:.0f} %)"


# ---------------------------------------------------------------------- ranks
def ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties averaged."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    r = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return r


def spearman(x: list[float], y: list[float]) -> float | None:
    if len(x) < 3 or len(x) != len(y):
        return None
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    vy = math.sqrt(sum((b - my) ** 2 for b in ry))
    return cov / (vx * vy) if vx and vy else None


__all__ = ["Stat", "Comparison", "welch", "equivalent", "directional_verdict", "null_verdict", "t_cdf", "t_ppf", "betainc",
           "ranks", "spearman", "ALPHA", "POWER"]
