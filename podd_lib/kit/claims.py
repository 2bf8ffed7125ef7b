"""The paper's claims, each decided from the kit's own results by one stated rule.

    claims_table(load_results("outputs"))  # -> rows: claim, paper, ours, rule, verdict

Every verdict is computed here from the result files the notebooks write (outputs/results/*.json);
no sentence about what is shown is written by hand. The rule for "A beats B" is the same
everywhere: the difference of the means exceeds the pooled spread sqrt((s_A^2 + s_B^2) / 2) of
the evaluation networks (and seeds). A claim whose runs are missing is "not run".
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping, Sequence

SHOWN, NOT_SHOWN, NOT_RUN = "shown", "not shown", "not run"
BEATS_RULE = "difference > pooled spread"

Row = Mapping[str, Any]


def pooled_spread(s1: float | None, s2: float | None) -> float:
    """sqrt((s1^2 + s2^2) / 2): the spread against which a difference of two means is judged."""
    return math.sqrt(((s1 or 0.0) ** 2 + (s2 or 0.0) ** 2) / 2)


def beats(a: Row | None, b: Row | None, mean: str = "ours_mean", std: str = "ours_std") -> bool | None:
    """True when a's mean exceeds b's by more than their pooled spread; None when either is missing."""
    if not a or not b or a.get(mean) is None or b.get(mean) is None:
        return None
    return a[mean] - b[mean] > pooled_spread(a.get(std), b.get(std))


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson's correlation coefficient; None for fewer than 3 points or no variance."""
    if len(xs) < 3 or len(xs) != len(ys):
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx == 0 or syy == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / math.sqrt(sxx * syy)


def verdict(ok: bool | None) -> str:
    """shown / not shown / not run."""
    return NOT_RUN if ok is None else (SHOWN if ok else NOT_SHOWN)


def fmt(row: Row | None, mean: str = "ours_mean", std: str = "ours_std") -> str:
    """'26.2 ± 0.6' of a row, or an em dash."""
    if not row or row.get(mean) is None:
        return "\u2014"
    s = row.get(std)
    return f"{row[mean]:.1f}" + (f" \u00b1 {s:.1f}" if s is not None else "")


def rows_of(results: Iterable[Mapping], name: str) -> list[dict]:
    """The rows of the results file whose name starts with `name` (e.g. '03_table2')."""
    for r in results:
        if str(r.get("name", "")).startswith(name):
            return list(r.get("rows") or [])
    return []


def find(rows: Sequence[Row], **match: Any) -> dict | None:
    """The first row whose fields equal every given value (floats compared to 1e-6)."""
    def eq(a: Any, b: Any) -> bool:
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            return abs(a - b) < 1e-6
        return a == b

    return next((dict(r) for r in rows if all(eq(r.get(k), v) for k, v in match.items())), None)


def _claim(claim: str, paper: str, ours: str, rule: str, ok: bool | None, source: str) -> dict:
    """One row of the claims table."""
    return {"claim": claim, "paper": paper, "ours": ours, "rule": rule, "verdict": verdict(ok), "source": source}


def poster_beats_tiling(results: Iterable[Mapping]) -> dict:
    """Table 2: PoDD at 1 IPC (16x6 patches) beats the 5x2 tiling at 1 IPC (RaT-BPTT); else Table 1's 1.0 row."""
    t2, t1 = rows_of(results, "03_table2"), rows_of(results, "02_table1")
    poster = find(t2, method="PoDD (poster, 1 IPC)") or find(t1, method="PoDD", IPC=1.0)
    tiling = find(t2, method="RaT-BPTT (tiling, 1 IPC)") or find(t1, method="RaT-BPTT (tiling)", IPC=1.0)
    return _claim("a poster beats the 1-IPC tiling (CIFAR-10, 1 IPC)",
                  f"{fmt(poster, 'paper_mean', 'paper_std')} vs {fmt(tiling, 'paper_mean', 'paper_std')}",
                  f"{fmt(poster)} vs {fmt(tiling)}", f"poster > tiling: {BEATS_RULE}", beats(poster, tiling),
                  "03_table2_one_ipc" if find(t2, method="PoDD (poster, 1 IPC)") else "02_table1_less_than_one_ipc")


def less_than_one_ipc(results: Iterable[Mapping]) -> dict:
    """Table 1: from 1.0 down to 0.3 IPC accuracy falls, yet every poster beats 1 random real image per class."""
    rows = [r for r in rows_of(results, "02_table1") if r.get("method") == "PoDD" and r.get("ours_mean") is not None]
    random = find(rows_of(results, "03_table2"), method="Random real images (1 IPC)")
    top, low = find(rows, IPC=1.0), find(rows, IPC=0.3)
    ok = None
    if top and low and random:
        ok = top["ours_mean"] >= low["ours_mean"] and all(beats(r, random) for r in rows)
    ours = (f"{fmt(top)} at 1.0, {fmt(low)} at 0.3; lowest of {len(rows)} IPCs "
            f"{min(r['ours_mean'] for r in rows):.1f} vs random real {fmt(random)}") if rows else "\u2014"
    return _claim("accuracy falls gently from 1.0 to 0.3 IPC and stays above random real images",
                  f"{fmt(top, 'paper_mean', 'paper_std')} at 1.0, {fmt(low, 'paper_mean', 'paper_std')} at 0.3",
                  ours, f"acc(1.0) >= acc(0.3), and every IPC beats random real (1 IPC): {BEATS_RULE}", ok,
                  "02_table1_less_than_one_ipc, 03_table2_one_ipc")


def more_patches_help(results: Iterable[Mapping]) -> dict:
    """Figure 6: 96 patches (16x6) beat 10 (5x2) on the same 1-IPC poster."""
    rows = rows_of(results, "04_ablation")
    many, few = find(rows, patches=96), find(rows, patches=10)
    pts = [(r["patches"], r["ours_mean"]) for r in rows if r.get("ours_mean") is not None]
    r = pearson([math.log(p) for p, _ in pts], [a for _, a in pts])
    ours = f"{fmt(many)} vs {fmt(few)}" + (f"; r(log patches, acc) = {r:.2f} over {len(pts)} grids" if r is not None else "")
    return _claim("more patches help (96 vs 10 patches, CIFAR-10, 1 IPC)",
                  f"{fmt(many, 'paper_mean', 'paper_std')} vs {fmt(few, 'paper_mean', 'paper_std')}", ours,
                  f"96 > 10: {BEATS_RULE}", beats(many, few), "04_ablation_patch_number")


def learned_labels_help(results: Iterable[Mapping]) -> dict:
    """Section 4.3: below 0.7 IPC, learned soft labels beat their own argmax (hard labels)."""
    rows = [r for r in rows_of(results, "02_table1") if r.get("method") == "PoDD" and (r.get("IPC") or 1) < 0.7 - 1e-9
            and r.get("hard_mean") is not None]
    wins = [beats(r, {"ours_mean": r["hard_mean"], "ours_std": r.get("hard_std")}) for r in rows]
    ours = "; ".join(f"{r['IPC']:g}: {r['ours_mean']:.1f} vs {r['hard_mean']:.1f}" for r in rows) or "\u2014"
    return _claim("learned labels beat their argmax below 0.7 IPC", "learned labels used below 0.7 IPC", ours,
                  f"soft > hard at every IPC < 0.7: {BEATS_RULE}", all(wins) if rows else None,
                  "02_table1_less_than_one_ipc")


def poco_order_helps(results: Iterable[Mapping]) -> dict:
    """Section 5.3: the PoCO (paper) order beats random orders, and ordering score correlates with accuracy."""
    rows = [r for r in rows_of(results, "05_ablation") if r.get("ours_mean") is not None]
    ordered = next((r for r in rows if not str(r.get("order", "")).startswith("random")), None)
    randoms = [r for r in rows if str(r.get("order", "")).startswith("random")]
    r = pearson([x["score"] for x in rows], [x["ours_mean"] for x in rows]) if rows else None
    ok = None
    if ordered and randoms and r is not None:
        best = max(randoms, key=lambda x: x["ours_mean"])
        ok = all(beats(ordered, x) for x in randoms) and r > 0
        ours = f"{fmt(ordered)} vs random up to {fmt(best)}; r = {r:.2f} over {len(rows)} orders"
    else:
        ours = "\u2014"
    return _claim("PoCO's order beats random orders; ordering score correlates with accuracy",
                  "r = 0.76 over 5 random orders", ours, f"order beats every random order ({BEATS_RULE}) and r > 0",
                  ok, "05_ablation_class_order")


def posters_under_algorithms(results: Iterable[Mapping]) -> list[dict]:
    """One row per algorithm: its poster (random real batches) beats its tiling."""
    rows = rows_of(results, "07_algorithms")
    out = []
    for algo in dict.fromkeys(r.get("algorithm") for r in rows if r.get("algorithm")):
        poster = find(rows, algorithm=algo, **{"synthetic set": "poster"})
        tiling = find(rows, algorithm=algo, **{"synthetic set": "tiling"})
        out.append(_claim(f"a poster beats the tiling under {algo}", "\u2014 (the paper uses RaT-BPTT)",
                          f"{fmt(poster)} vs {fmt(tiling)}", f"poster > tiling: {BEATS_RULE}", beats(poster, tiling),
                          "07_algorithms_under_posters"))
    return out


def posters_across_architectures(results: Iterable[Mapping]) -> list[dict]:
    """Notebook 09: one row per architecture other than the ConvNet the sets were distilled with: the 1-IPC poster
    beats the 1-IPC tiling there."""
    rows = rows_of(results, "09_cross")
    out = []
    for arch in dict.fromkeys(r.get("architecture") for r in rows if r.get("architecture")):
        if arch == "ConvNet":
            continue
        poster = find(rows, architecture=arch, representation="poster, 1 IPC")
        tiling = find(rows, architecture=arch, representation="tiling, 1 IPC")
        out.append(_claim(f"the poster's advantage over the tiling holds on {arch} (CIFAR-10, 1 IPC, distilled "
                          "with the ConvNet)", "\u2014 (the paper evaluates on its ConvNet only)",
                          f"{fmt(poster)} vs {fmt(tiling)}", f"poster > tiling: {BEATS_RULE}", beats(poster, tiling),
                          "09_cross_architecture"))
    return out


CLAIMS: tuple[Callable[[Iterable[Mapping]], Any], ...] = (
    poster_beats_tiling, less_than_one_ipc, more_patches_help, learned_labels_help, poco_order_helps,
    posters_under_algorithms, posters_across_architectures,
)


def claims_table(results: Sequence[Mapping]) -> list[dict]:
    """Every claim of the paper with the paper's numbers, ours, the rule and the computed verdict."""
    out: list[dict] = []
    for claim in CLAIMS:
        got = claim(results)
        out.extend(got if isinstance(got, list) else [got])
    return out


def claims_markdown(rows: Sequence[Row], profile: str) -> str:
    """The claims table as markdown, headed by the profile it was computed at."""
    lines = [f"| claim | paper | ours ({profile}) | rule | at this profile |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['claim']} | {r['paper']} | {r['ours']} | {r['rule']} | **{r['verdict']}** |" for r in rows]
    return "\n".join(lines) + "\n"


def section(out_dir, results: Sequence[Mapping]) -> list[str]:
    """The report's opening section: the claims table of the profile(s) the results come from."""
    if not results:
        return []
    profiles = sorted({str(r.get("profile", "?")) for r in results})
    rows = claims_table(results)
    shown = sum(r["verdict"] == SHOWN for r in rows)
    return ["## The paper's claims at this profile", "",
            f"Computed from the result files below (profile {', '.join(profiles)}) by `podd_lib.kit.claims`: "
            f"{shown} of {len(rows)} shown. A claim \"A beats B\" is shown when A's mean exceeds B's by more "
            "than the pooled spread sqrt((s_A^2 + s_B^2) / 2) of their evaluation networks.", "",
            claims_markdown(rows, ", ".join(profiles))]


README_END = "<!-- claims: end -->"


def readme_begin(out_dir: str = "outputs") -> str:
    """The marker that opens README's claims block computed from out_dir (one block per output folder)."""
    return f"<!-- claims: generated by `python -m podd_lib.kit readme {out_dir} README.md`; do not edit -->"


README_BEGIN = readme_begin()


def readme_block(results: Sequence[Mapping], out_dir: str = "outputs") -> str:
    """The claims table for README, between its markers."""
    profiles = ", ".join(sorted({str(r.get("profile", "?")) for r in results})) or "none"
    return f"{readme_begin(out_dir)}\n\n{claims_markdown(claims_table(results), profiles)}\n{README_END}"


def update_readme(readme: str, results: Sequence[Mapping], out_dir: str = "outputs") -> str:
    """README's text with the block of out_dir between its claims markers recomputed from results."""
    begin = readme_begin(out_dir)
    head, sep, rest = readme.partition(begin)
    _, sep2, tail = rest.partition(README_END)
    if not sep or not sep2:
        raise ValueError(f"README has no claims markers for {out_dir} ({begin!r} ... {README_END!r})")
    return head + readme_block(results, out_dir) + tail
