"""The claims table decides each claim from result rows by its stated rule, never by hand."""

from __future__ import annotations

import math

import pytest

from podd_lib.kit import claims


def spread(mean, j):
    """Three seeds' means around `mean`: mean - j, mean, mean + j (as the results files hold them)."""
    return {"0": mean - j, "1": mean, "2": mean + j}


def row(j=0.5, **kw):
    """A results-table row with ours/paper means and stds and three seeds' means.

    Rows on the two sides of a comparison take opposite j, so that paired gaps are d - 1, d, d + 1
    (s.e. 0.58): a difference d of the means is shown when it exceeds 1.15.
    """
    out = {"ours_std": 0.5, "paper_mean": None, "paper_std": None, **kw}
    if out.get("ours_mean") is not None:
        out["seed_means"] = spread(out["ours_mean"], j)
    if "hard_mean" in kw:
        out["hard_seed_means"] = spread(kw["hard_mean"], -j)
    return out


def results(poster=30.0, tiling=27.0, low=25.0, random=17.0, many=31.0, few=28.0, soft=26.0, hard=24.0,
            order=22.0, randoms=(19.0, 19.5, 20.0), scores=(0.13, 0.09, 0.10, 0.11)):
    """A synthetic set of result files shaped like the notebooks' outputs/results/*.json."""
    t1 = [row(method="RaT-BPTT (tiling)", IPC=1.0, ours_mean=tiling, j=-0.5),
          row(method="PoDD", IPC=1.0, ours_mean=poster),
          row(method="PoDD", IPC=0.5, ours_mean=soft, hard_mean=hard, hard_std=0.5),
          row(method="PoDD", IPC=0.3, ours_mean=low, hard_mean=hard - 1, hard_std=0.5)]
    t2 = [row(method="Random real images (1 IPC)", ours_mean=random, j=-0.5)]
    f6 = [row(patches=p, ours_mean=a, j=j) for p, a, j in ((10, few, -0.5), (40, (few + many) / 2, 0), (96, many, 0.5))]
    orders = [row(order="paper", score=scores[0], ours_mean=order)]
    orders += [row(order=f"random:{i}", score=s, ours_mean=a, j=-0.5)
               for i, (s, a) in enumerate(zip(scores[1:], randoms), 1)]
    algos = [row(algorithm="DM", **{"synthetic set": "poster"}, ours_mean=24.0),
             row(algorithm="DM", **{"synthetic set": "tiling"}, ours_mean=24.2, j=-0.5)]
    return [{"name": "02_table1_less_than_one_ipc", "rows": t1}, {"name": "03_table2_one_ipc", "rows": t2},
            {"name": "04_ablation_patch_number", "rows": f6}, {"name": "05_ablation_class_order", "rows": orders},
            {"name": "07_algorithms_under_posters", "rows": algos}]


def verdicts(res):
    """claim -> verdict."""
    return {r["claim"]: r["verdict"] for r in claims.claims_table(res)}


def test_every_claim_shown_when_the_numbers_say_so():
    v = verdicts(results())
    assert v["a poster beats the 1-IPC tiling (CIFAR-10, 1 IPC)"] == "shown"
    assert v["more patches help (96 vs 10 patches, CIFAR-10, 1 IPC)"] == "shown"
    assert v["learned labels beat their argmax below 0.7 IPC"] == "shown"
    assert v["accuracy falls gently from 1.0 to 0.3 IPC and stays above random real images"] == "shown"
    assert v["PoCO's order beats random orders; ordering score correlates with accuracy"] == "shown"
    assert v["a poster beats the tiling under DM"] == "not shown"  # 24.0 vs 24.2


@pytest.mark.parametrize("change, claim", [
    ({"poster": 28.0}, "a poster beats the 1-IPC tiling (CIFAR-10, 1 IPC)"),  # +1.0 < 2 s.e. = 1.15
    ({"poster": 25.0}, "a poster beats the 1-IPC tiling (CIFAR-10, 1 IPC)"),
    ({"many": 29.0}, "more patches help (96 vs 10 patches, CIFAR-10, 1 IPC)"),
    ({"hard": 25.0}, "learned labels beat their argmax below 0.7 IPC"),
    ({"random": 24.8}, "accuracy falls gently from 1.0 to 0.3 IPC and stays above random real images"),
    ({"order": 20.5}, "PoCO's order beats random orders; ordering score correlates with accuracy"),
])
def test_each_claim_fails_when_its_numbers_do_not_support_it(change, claim):
    assert verdicts(results(**change))[claim] == "not shown"


def test_poster_against_tiling_reads_table2_first_then_table1():
    claim = "a poster beats the 1-IPC tiling (CIFAR-10, 1 IPC)"
    res = results(poster=25.0)  # Table 1 alone: not shown
    assert verdicts(res)[claim] == "not shown"
    res[1]["rows"] += [row(method="PoDD (poster, 1 IPC)", ours_mean=29.0), row(method="RaT-BPTT (tiling, 1 IPC)", ours_mean=27.0)]
    assert verdicts(res)[claim] == "shown"
    only_t2 = [r for r in res if r["name"].startswith("03")]
    assert verdicts(only_t2)[claim] == "shown"


def test_missing_runs_are_not_run():
    v = verdicts([])
    assert set(v.values()) == {"not run"}
    assert all("nan" not in r["ours"] for r in claims.claims_table([]))


def test_paired_gaps_standard_error_and_seed_count():
    a = {"seed_means": {"0": 30.0, "1": 31.0, "2": 29.0, "3": 40.0}}
    b = {"seed_means": {"0": 28.0, "1": 28.0, "2": 28.0}}
    p = claims.paired(a, b)
    assert [g for _, g in p.gaps] == [2.0, 3.0, 1.0] and p.n == 3  # seed 3 has no partner
    assert p.mean == pytest.approx(2.0) and p.se == pytest.approx(1 / math.sqrt(3))
    assert p.verdict == "shown" and p.text() == "+2.0 \u00b1 0.6 s.e. (n = 3: +2.0, +3.0, +1.0)"
    assert claims.paired({"seed_means": {"0": 9.0, "1": 1.0, "2": 5.0}}, b).verdict == "not shown"  # -23 ± ...
    two = claims.paired({"seed_means": {"0": 50.0, "1": 50.0}}, b)
    assert two.verdict == "too few seeds" and two.se == 0.0
    assert claims.paired(None, b).verdict == "not run"
    old = {"ours_mean": 30.0}  # a row written before seeds were recorded counts as seed 0 alone
    assert claims.paired(old, {"ours_mean": 20.0}).n == 1


def test_two_seeds_that_agree_decide_nothing():
    res = results()
    for r in res[0]["rows"]:
        r["seed_means"] = {k: v for k, v in r["seed_means"].items() if k != "2"}
    assert verdicts(res)["a poster beats the 1-IPC tiling (CIFAR-10, 1 IPC)"] == "too few seeds"


def test_pearson():
    assert claims.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert claims.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert claims.pearson([1, 2], [1, 2]) is None


def test_markdown_has_one_line_per_claim():
    rows = claims.claims_table(results())
    md = claims.claims_markdown(rows, "quick")
    assert md.count("\n") == len(rows) + 2
    assert "**shown**" in md and "**not shown**" in md


@pytest.mark.parametrize("file,out", [("README.md", "outputs"), ("docs/results.md", "outputs/cpu-long")])
def test_claims_blocks_are_computed_from_the_committed_results(file, out):
    from pathlib import Path

    from podd_lib.kit.report import load_results

    root = Path(__file__).resolve().parents[2]
    text = (root / file).read_text(encoding="utf-8")
    assert claims.readme_begin(out, file) in text
    assert claims.update_readme(text, load_results(root / out), out, file) == text, \
        f"{file}'s claims table of {out} is stale: run `python -m podd_lib.kit readme {out} {file}`"


def test_update_readme_replaces_only_the_block_and_needs_markers():
    text = f"intro\n{claims.README_BEGIN}\nold\n{claims.README_END}\noutro\n"
    new = claims.update_readme(text, results())
    assert new.startswith("intro\n") and new.endswith("\noutro\n") and "old" not in new and "**shown**" in new
    with pytest.raises(ValueError):
        claims.update_readme("no markers", results())


def test_each_output_folder_has_its_own_readme_block():
    text = f"{claims.readme_begin()}\nA\n{claims.README_END}\n{claims.readme_begin('outputs/cpu-long')}\nB\n{claims.README_END}\n"
    new = claims.update_readme(text, results(), "outputs/cpu-long")
    assert "\nA\n" in new and "\nB\n" not in new and new.count("**shown**") >= 1
    assert new.index("**shown**") > new.index("cpu-long")


def cross_arch(poster=25.0, tiling=22.0, arch="VGG-11"):
    """Notebook 09's results file: the ConvNet's rows and one other architecture's."""
    rows = [row(architecture="ConvNet", representation="poster, 1 IPC", ours_mean=20.0),
            row(architecture="ConvNet", representation="tiling, 1 IPC", ours_mean=27.0),
            row(architecture=arch, representation="poster, 1 IPC", ours_mean=poster),
            row(architecture=arch, representation="tiling, 1 IPC", ours_mean=tiling, j=-0.5),
            row(architecture=arch, representation="random real, 0.5 IPC", ours_mean=40.0)]
    return [{"name": "09_cross_architecture", "rows": rows}]


def test_cross_architecture_claim_has_one_row_per_other_architecture():
    got = claims.posters_across_architectures(cross_arch())
    assert len(got) == 1 and "VGG-11" in got[0]["claim"] and got[0]["verdict"] == "shown"
    assert got[0]["ours"] == "25.0 ± 0.5 vs 22.0 ± 0.5"
    assert claims.posters_across_architectures(cross_arch(poster=22.3))[0]["verdict"] == "not shown"  # < 2 s.e.
    assert claims.posters_across_architectures(cross_arch(poster=None))[0]["verdict"] == "not run"
    assert claims.posters_across_architectures([]) == []
    assert any("VGG-11" in r["claim"] for r in claims.claims_table(results() + cross_arch()))


def test_cross_architecture_claim_follows_the_shared_rule(monkeypatch):
    seen = []

    def rule(a, b, **kw):
        seen.append((a["ours_mean"], b["ours_mean"]))
        return claims.Paired((("0", -1.0), ("1", -1.0), ("2", -1.0)))

    monkeypatch.setattr(claims, "paired", rule)
    assert claims.posters_across_architectures(cross_arch())[0]["verdict"] == "not shown"
    assert seen == [(25.0, 22.0)]


def probe_row(name, rep, seed, acc):
    """One row of benchmarks/probes.jsonl."""
    return {"probe": name, "representation": rep, "seed": seed, "acc_mean": acc}


def test_cpu_scale_statement_is_computed_from_the_probes():
    wins = [probe_row("w", "poster", s, 30.0 + s / 10) for s in range(3)] + [probe_row("w", "tiling", s, 28.0) for s in range(3)]
    loses = [probe_row("l", "poster", s, 27.0) for s in range(3)] + [probe_row("l", "tiling", s, 28.0 + s) for s in range(3)]
    two = [probe_row("t", "poster", s, 40.0) for s in range(2)] + [probe_row("t", "tiling", s, 20.0) for s in range(2)]
    assert "beats its tiling by the rule in w." in claims.cpu_scale_statement(wins + loses + two)
    text = claims.cpu_scale_statement(loses + two)
    assert "2 probes, 1 of them with at least 3 paired seeds" in text and "do not show at CPU scale" in text
    assert claims.GPU_COMMAND in text and claims.GPU_COMMAND in claims.cpu_scale_statement([])
    assert claims.probe_gaps(two)["t"].verdict == "too few seeds"


def shown_by_search(xs, n):
    """Brute force: does any choice of the missing gaps (equal or spread, on a grid) make n seeds shown?"""
    m = n - len(xs)
    grid = [v / 4 for v in range(-200, 201)]
    tries = [[b] * m for b in grid] + [[b + d * i for i in range(m)] for b in grid[::8] for d in (-1.0, 0.5, 2.0)]
    return any(claims.Paired(tuple((str(i), g) for i, g in enumerate(list(xs) + t))).verdict == "shown" for t in tries)


@pytest.mark.parametrize("xs,n", [((1.0,), 3), ((-0.1,), 3), ((2.0, 2.5), 3), ((2.0, -0.3), 3),
                                  ((1.2, 6.0), 3), ((0.2, 9.0), 3), ((-1.0,), 5), ((-1.0, -2.0), 5),
                                  ((3.0, -1.0, 2.0), 5), ((-3.0, -4.0, -1.0, 0.5), 5), ((-2.0, -2.0), 4)])
def test_can_show_agrees_with_a_search_over_the_missing_seeds(xs, n):
    p = claims.Paired(tuple((str(i), g) for i, g in enumerate(xs)))
    assert p.can_show(n) == shown_by_search(xs, n)


def test_one_gap_at_or_below_zero_settles_three_seeds():
    """With three seeds, one seed where the poster does not lead already rules out 'shown'."""
    assert not claims.Paired((("0", -0.01),)).can_show(3)
    assert not claims.Paired((("0", 4.0), ("1", -0.01))).can_show(3)
    assert claims.Paired((("0", 0.5),)).can_show(3)
    assert claims.Paired(()).can_show(3)
    done = claims.Paired((("0", 2.0), ("1", 2.1), ("2", 1.9)))
    assert done.can_show(3) and not claims.Paired((("0", 2.0), ("1", -2.1), ("2", 1.9))).can_show(3)
