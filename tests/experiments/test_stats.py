"""The statistics behind every verdict: the t distribution, Welch's test on log-perplexity, the MDE,
equivalence, and the verdict rules."""
import math

import pytest

from cart.experiments.analysis.stats import (Stat, directional_verdict, equivalent, null_verdict, p_text, paired, ranks, spearman,
                                             t_cdf, t_ppf, welch)


@pytest.mark.parametrize("df,q", [(1, 12.706205), (2, 4.302653), (4, 2.776445), (30, 2.042272), (1000, 1.962339)])
def test_t_quantiles_match_the_tables(df, q):
    assert t_ppf(0.975, df) == pytest.approx(q, abs=2e-6)
    assert t_cdf(q, df) == pytest.approx(0.975, abs=1e-6)  # the table rounds q to 6 decimals
    assert t_cdf(-t_ppf(0.975, df), df) == pytest.approx(0.025, abs=1e-9)


def test_t_cdf_known_values_and_fractional_df():
    assert t_cdf(0.0, 3) == pytest.approx(0.5)
    assert t_cdf(1.0, 1) == pytest.approx(0.75)  # Cauchy: 1/2 + atan(1)/pi
    assert t_cdf(2.0, 2) == pytest.approx(0.5 + 2.0 / (2 * math.sqrt(6.0)))  # closed form for df = 2
    assert t_cdf(1.5, 3.7) < t_cdf(1.5, 3.8) < t_cdf(1.5, 1e6)  # heavier tails at low df
    assert t_ppf(0.8, 4) == pytest.approx(0.940965, abs=2e-6)


def test_stat_interval():
    s = Stat([10.0, 12.0, 14.0])
    assert s.std == pytest.approx(2.0) and s.sem == pytest.approx(2.0 / math.sqrt(3))
    lo, hi = s.ci()
    assert (lo + hi) / 2 == pytest.approx(12.0) and hi - 12.0 == pytest.approx(4.302653 * 2.0 / math.sqrt(3), rel=1e-6)
    assert Stat([5.0]).ci() is None and Stat([5.0]).fmt() == "5.00"


def test_welch_on_log_perplexity_by_hand():
    a, b = [100.0, 110.0, 105.0], [120.0, 125.0, 130.0]
    c = welch(a, b)
    la, lb = [math.log(x) for x in a], [math.log(x) for x in b]
    va = Stat(la).std ** 2 / 3
    vb = Stat(lb).std ** 2 / 3
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 2)
    diff = Stat(la).mean - Stat(lb).mean
    assert c.se == pytest.approx(se) and c.df == pytest.approx(df) and c.rel == pytest.approx(math.expm1(diff))
    assert c.p == pytest.approx(2 * (1 - t_cdf(abs(diff) / se, df)))
    assert c.ci[0] == pytest.approx(math.expm1(diff - t_ppf(0.975, df) * se))
    assert c.mde == pytest.approx(math.expm1((t_ppf(0.975, df) + t_ppf(0.8, df)) * se))
    assert c.significant and c.rel < 0 and directional_verdict(c, -1) == "reproduced"
    assert directional_verdict(c, +1).startswith("contradicted")
    assert "p = " in c.text() and "n = 3 vs 3" in c.text()


def test_verdicts_need_power_and_seeds():
    noisy = welch([100.0, 130.0, 90.0], [105.0, 95.0, 125.0])
    assert not noisy.significant and directional_verdict(noisy, +1).startswith("undetermined at this power")
    single = welch([100.0], [90.0])
    assert not single.tested and directional_verdict(single, +1) == "single seed, not tested"
    assert null_verdict(single, 0.02) == "single seed, not tested"
    tight = welch([100.0, 100.1, 99.9, 100.05], [100.02, 99.95, 100.08, 99.97])
    assert equivalent(tight, 0.02) and null_verdict(tight, 0.02).startswith("reproduced")
    assert null_verdict(welch([100.0, 100.1, 99.9], [110.0, 110.1, 109.9]), 0.02).startswith("not reproduced")
    assert null_verdict(noisy, 0.02).startswith("undetermined")
    same = welch([50.0, 50.0], [50.0, 50.0])
    assert same.p == 1.0 and same.rel == 0.0


def test_ranks_and_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert ranks([3.0, 1.0, 3.0]) == [2.5, 1.0, 2.5]
    assert spearman([1, 2], [1, 2]) is None


def test_paired_test_uses_the_within_pair_differences():
    """Three models measured two ways: the pairs differ by a steady ~+10 % while the models differ a lot
    between themselves, so the paired test finds what Welch on the same numbers cannot."""
    base = [50.0, 80.0, 120.0]
    other = [b * f for b, f in zip(base, (1.09, 1.10, 1.11))]
    c = paired(other, base)
    d = [math.log(f) for f in (1.09, 1.10, 1.11)]
    mean = sum(d) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
    assert c.rel == pytest.approx(math.expm1(mean)) and c.se == pytest.approx(sd / math.sqrt(3)) and c.df == 2
    h = 4.302653 * sd / math.sqrt(3)
    assert c.ci[0] == pytest.approx(math.expm1(mean - h), rel=1e-5) and c.ci[1] == pytest.approx(math.expm1(mean + h), rel=1e-5)
    assert c.significant and directional_verdict(c, +1) == "reproduced"
    assert not welch(other, base).significant
    assert not paired([60.0], [50.0]).tested  # one pair: described, not tested
    with pytest.raises(ValueError, match="equally many"):
        paired([1.0, 2.0], [1.0])


def test_p_values_read_as_text():
    assert p_text(0.0004) == "p < 0.001" and p_text(0.0123) == "p = 0.012"
    assert "p < 0.001" in paired([2.0, 3.0, 4.0], [1.0, 1.5, 2.1]).text()
