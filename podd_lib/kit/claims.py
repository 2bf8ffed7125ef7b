"""The paper's claims, each decided from the kit's own results by one stated rule.

    claims_table(load_results("outputs"))  # -> rows: claim, paper, ours, rule, verdict

Every verdict is computed here from the result files the notebooks write (outputs/results/*.json);
no sentence about what is shown is written by hand. The rule for "A beats B" is the same
everywhere: A and B are paired by distillation seed (same seed, same everything but what is
compared), and A beats B when the mean of the per-seed gaps A - B exceeds twice its standard error,
over at least MIN_SEEDS seeds. The spread of the evaluation networks trained on one distilled set
is reported beside the means but does not decide: it is 2-4 times smaller than the spread between
seeds. A claim whose runs are missing is "not run"; one with fewer seeds is "too few seeds".
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

SHOWN, NOT_SHOWN, NOT_RUN, TOO_FEW = "shown", "not shown", "not run", "too few seeds"
SETTLED = "not shown, settled early"  # fewer seeds than the rule needs, but no further seeds could make it shown
MIN_SEEDS = 3
BEATS_RULE = f"mean paired gap over seeds > 2 s.e., n >= {MIN_SEEDS}"

Row = Mapping[str, Any]


def seed_means(row: Row | None, field: str = "seed_means", mean: str = "ours_mean") -> dict[str, float]:
    """Per-seed means of a table row; a row without them (older results) counts as its one seed, 0."""
    if not row:
        return {}
    got = row.get(field)
    if isinstance(got, Mapping) and got:
        return {str(k): float(v) for k, v in got.items() if v is not None}
    return {"0": float(row[mean])} if row.get(mean) is not None else {}


@dataclass(frozen=True)
class Paired:
    """A over B, paired by seed: the per-seed gaps A - B and what they decide."""

    gaps: tuple[tuple[str, float], ...]

    @property
    def n(self) -> int:
        """Number of seeds both sides have."""
        return len(self.gaps)

    @property
    def mean(self) -> float | None:
        """Mean gap over the seeds."""
        return sum(g for _, g in self.gaps) / self.n if self.gaps else None

    @property
    def se(self) -> float | None:
        """Standard error of the mean gap (sample standard deviation / sqrt n); None below 2 seeds."""
        if self.n < 2:
            return None
        m = self.mean
        return math.sqrt(sum((g - m) ** 2 for _, g in self.gaps) / (self.n - 1) / self.n)

    @property
    def verdict(self) -> str:
        """shown when mean > 2 s.e. over >= MIN_SEEDS seeds; not run without pairs; too few seeds below MIN_SEEDS."""
        if not self.gaps:
            return NOT_RUN
        if self.n < MIN_SEEDS:
            return TOO_FEW
        return SHOWN if self.mean > 2 * self.se else NOT_SHOWN

    def can_show(self, n: int = MIN_SEEDS) -> bool:
        """Whether some gaps for the seeds still to run could make this shown once n seeds are in."""
        xs = [g for _, g in self.gaps]
        k, m = len(xs), max(n, MIN_SEEDS) - len(xs)
        if m <= 0:
            return self.verdict == SHOWN
        if k == 0:
            return True
        # For a given sum of the missing gaps the mean is fixed and the s.e. is smallest when they are
        # equal, so it suffices to try m copies of one value b. Shown <=> mean(b) > 0 and
        # q(b) = n(n-1) mean(b)^2 - 4 SSD(b) > 0, a quadratic in b with leading coefficient a.
        n = k + m

        def q(b: float) -> float:
            vals = xs + [b] * m
            mu = sum(vals) / n
            return n * (n - 1) * mu * mu - 4 * sum((v - mu) ** 2 for v in vals)

        a = m * ((n - 1) * m - 4 * k) / n
        c = q(0.0)
        lin = q(1.0) - c - a
        if a > 0:
            return True  # q grows without bound as b grows (and the mean with it)
        if a == 0:
            return lin > 0
        # q opens downward: shown needs its top at a b where the mean is already positive, and q > 0 there
        b_zero_mean, b_top = -sum(xs) / m, -lin / (2 * a)
        return b_top > b_zero_mean and q(b_top) > 0

    def text(self) -> str:
        """'+2.0 ± 0.3 s.e. (n = 3: +1.5, +2.0, +2.5)', or an em dash."""
        if not self.gaps:
            return "\u2014"
        se = f" \u00b1 {self.se:.1f} s.e." if self.se is not None else ""
        return f"{self.mean:+.1f}{se} (n = {self.n}: {', '.join(f'{g:+.1f}' for _, g in self.gaps)})"


def paired(a: Row | None, b: Row | None, a_field: str = "seed_means", b_field: str = "seed_means",
           a_mean: str = "ours_mean", b_mean: str = "ours_mean") -> Paired:
    """The per-seed gaps of row a over row b, over the seeds both have, in seed order."""
    sa, sb = seed_means(a, a_field, a_mean), seed_means(b, b_field, b_mean)
    common = sorted(set(sa) & set(sb), key=lambda s: (len(s), s))
    return Paired(tuple((s, sa[s] - sb[s]) for s in common))


def combined(parts: Sequence[Paired]) -> str:
    """The verdict of a claim made of several comparisons: shown only when every one is."""
    verdicts = [p.verdict for p in parts]
    if not verdicts or NOT_RUN in verdicts:
        return NOT_RUN
    if NOT_SHOWN in verdicts:
        return NOT_SHOWN
    return TOO_FEW if TOO_FEW in verdicts else SHOWN


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


def _claim(claim: str, paper: str, ours: str, rule: str, parts: Sequence[Paired], source: str,
           also: bool | None = True) -> dict:
    """One row of the claims table; `also` is a further condition of the claim (None: its runs are missing)."""
    v = combined(parts)
    if also is None:
        v = NOT_RUN
    elif not also and v in (SHOWN, TOO_FEW):
        v = NOT_SHOWN
    gaps = "; ".join(p.text() for p in parts) or "\u2014"
    return {"claim": claim, "paper": paper, "ours": ours, "rule": rule, "n": min((p.n for p in parts), default=0),
            "gap": gaps, "verdict": v, "source": source}


def poster_beats_tiling(results: Iterable[Mapping]) -> dict:
    """Table 2: PoDD at 1 IPC (16x6 patches) beats the 5x2 tiling at 1 IPC (RaT-BPTT); else Table 1's 1.0 row."""
    t2, t1 = rows_of(results, "03_table2"), rows_of(results, "02_table1")
    poster = find(t2, method="PoDD (poster, 1 IPC)") or find(t1, method="PoDD", IPC=1.0)
    tiling = find(t2, method="RaT-BPTT (tiling, 1 IPC)") or find(t1, method="RaT-BPTT (tiling)", IPC=1.0)
    return _claim("a poster beats the 1-IPC tiling (CIFAR-10, 1 IPC)",
                  f"{fmt(poster, 'paper_mean', 'paper_std')} vs {fmt(tiling, 'paper_mean', 'paper_std')}",
                  f"{fmt(poster)} vs {fmt(tiling)}", f"poster > tiling: {BEATS_RULE}", [paired(poster, tiling)],
                  "03_table2_one_ipc" if find(t2, method="PoDD (poster, 1 IPC)") else "02_table1_less_than_one_ipc")


def less_than_one_ipc(results: Iterable[Mapping]) -> dict:
    """Table 1: from 1.0 down to 0.3 IPC accuracy falls, yet every poster beats 1 random real image per class."""
    rows = [r for r in rows_of(results, "02_table1") if r.get("method") == "PoDD" and r.get("ours_mean") is not None]
    random = find(rows_of(results, "03_table2"), method="Random real images (1 IPC)")
    top, low = find(rows, IPC=1.0), find(rows, IPC=0.3)
    falls = top["ours_mean"] >= low["ours_mean"] if top and low and random else None
    ours = (f"{fmt(top)} at 1.0, {fmt(low)} at 0.3; lowest of {len(rows)} IPCs "
            f"{min(r['ours_mean'] for r in rows):.1f} vs random real {fmt(random)}") if rows else "\u2014"
    return _claim("accuracy falls gently from 1.0 to 0.3 IPC and stays above random real images",
                  f"{fmt(top, 'paper_mean', 'paper_std')} at 1.0, {fmt(low, 'paper_mean', 'paper_std')} at 0.3",
                  ours, f"acc(1.0) >= acc(0.3), and every IPC > random real (1 IPC): {BEATS_RULE}",
                  [paired(r, random) for r in rows] if random else [], "02_table1_less_than_one_ipc, 03_table2_one_ipc",
                  also=falls)


def more_patches_help(results: Iterable[Mapping]) -> dict:
    """Figure 6: 96 patches (16x6) beat 10 (5x2) on the same 1-IPC poster."""
    rows = rows_of(results, "04_ablation")
    many, few = find(rows, patches=96), find(rows, patches=10)
    pts = [(r["patches"], r["ours_mean"]) for r in rows if r.get("ours_mean") is not None]
    r = pearson([math.log(p) for p, _ in pts], [a for _, a in pts])
    ours = f"{fmt(many)} vs {fmt(few)}" + (f"; r(log patches, acc) = {r:.2f} over {len(pts)} grids" if r is not None else "")
    return _claim("more patches help (96 vs 10 patches, CIFAR-10, 1 IPC)",
                  f"{fmt(many, 'paper_mean', 'paper_std')} vs {fmt(few, 'paper_mean', 'paper_std')}", ours,
                  f"96 > 10: {BEATS_RULE}", [paired(many, few)], "04_ablation_patch_number")


def learned_labels_help(results: Iterable[Mapping]) -> dict:
    """Section 4.3: below 0.7 IPC, learned soft labels beat their own argmax (hard labels)."""
    rows = [r for r in rows_of(results, "02_table1") if r.get("method") == "PoDD" and (r.get("IPC") or 1) < 0.7 - 1e-9
            and r.get("hard_mean") is not None]
    ours = "; ".join(f"{r['IPC']:g}: {r['ours_mean']:.1f} vs {r['hard_mean']:.1f}" for r in rows) or "\u2014"
    return _claim("learned labels beat their argmax below 0.7 IPC", "learned labels used below 0.7 IPC", ours,
                  f"soft > hard at every IPC < 0.7: {BEATS_RULE}",
                  [paired(r, r, b_field="hard_seed_means", b_mean="hard_mean") for r in rows],
                  "02_table1_less_than_one_ipc")


def poco_order_helps(results: Iterable[Mapping]) -> dict:
    """Section 5.3: the PoCO (paper) order beats random orders, and ordering score correlates with accuracy."""
    rows = [r for r in rows_of(results, "05_ablation") if r.get("ours_mean") is not None]
    ordered = next((r for r in rows if not str(r.get("order", "")).startswith("random")), None)
    randoms = [r for r in rows if str(r.get("order", "")).startswith("random")]
    r = pearson([x["score"] for x in rows], [x["ours_mean"] for x in rows]) if rows else None
    if ordered and randoms and r is not None:
        best = max(randoms, key=lambda x: x["ours_mean"])
        ours = f"{fmt(ordered)} vs random up to {fmt(best)}; r = {r:.2f} over {len(rows)} orders"
    else:
        ours = "\u2014"
    return _claim("PoCO's order beats random orders; ordering score correlates with accuracy",
                  "r = 0.76 over 5 random orders", ours, f"order > every random order ({BEATS_RULE}) and r > 0",
                  [paired(ordered, x) for x in randoms] if ordered else [], "05_ablation_class_order",
                  also=None if r is None else r > 0)


def posters_under_algorithms(results: Iterable[Mapping]) -> list[dict]:
    """One row per algorithm: its poster (random real batches) beats its tiling."""
    rows = rows_of(results, "07_algorithms")
    out = []
    for algo in dict.fromkeys(r.get("algorithm") for r in rows if r.get("algorithm")):
        poster = find(rows, algorithm=algo, **{"synthetic set": "poster"})
        tiling = find(rows, algorithm=algo, **{"synthetic set": "tiling"})
        out.append(_claim(f"a poster beats the tiling under {algo}", "\u2014 (the paper uses RaT-BPTT)",
                          f"{fmt(poster)} vs {fmt(tiling)}", f"poster > tiling: {BEATS_RULE}", [paired(poster, tiling)],
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
                          f"{fmt(poster)} vs {fmt(tiling)}", f"poster > tiling: {BEATS_RULE}", [paired(poster, tiling)],
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
    lines = [f"| claim | paper | ours ({profile}) | rule | paired gap over seeds | at this profile |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['claim']} | {r['paper']} | {r['ours']} | {r['rule']} | {r['gap']} | **{r['verdict']}** |"
              for r in rows]
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
            f"{shown} of {len(rows)} shown. A claim \"A beats B\" is shown when, paired by distillation seed, the "
            f"mean gap A - B exceeds twice its standard error over at least {MIN_SEEDS} seeds; the \"ours\" column "
            "gives mean \u00b1 std over the evaluation networks, which no longer decides.", "",
            claims_markdown(rows, ", ".join(profiles)), cpu_scale_statement(read_probe_rows()), ""]


# The probes of benchmarks/probes.py: where on a CPU the central claim (a poster beats its tiling) was looked for.
PROBES_FILE = Path(__file__).resolve().parents[2] / "benchmarks" / "probes.jsonl"
GPU_COMMAND = "./run_all.sh --profile paper --only 03,04,99"


def probe_gaps(rows: Iterable[Mapping]) -> dict[str, Paired]:
    """Each probe's poster-over-tiling gaps, paired by seed (rows of benchmarks/probes.jsonl)."""
    acc: dict[str, dict[str, dict[str, float]]] = {}
    for r in rows:
        if "probe" in r:
            acc.setdefault(r["probe"], {"poster": {}, "tiling": {}})[r["representation"]][str(r["seed"])] = r["acc_mean"]
    return {name: paired({"seed_means": a["poster"]}, {"seed_means": a["tiling"]}) for name, a in acc.items()}


def read_probe_rows(path: str | Path = PROBES_FILE) -> list[dict]:
    """The recorded probe rows (none when the file is absent, as in an installed kit)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def probe_verdict(p: Paired) -> str:
    """A probe's verdict by the rule; below MIN_SEEDS seeds it is settled once no further seeds could make it shown."""
    if p.gaps and p.n < MIN_SEEDS and not p.can_show(MIN_SEEDS):
        return SETTLED
    return p.verdict


def cpu_scale_statement(rows: Iterable[Mapping]) -> str:
    """One computed paragraph: whether any CPU probe shows the poster beating its tiling, and the GPU command."""
    gaps = probe_gaps(rows)
    verdicts = {n: probe_verdict(p) for n, p in gaps.items()}
    full = [n for n, v in verdicts.items() if v in (SHOWN, NOT_SHOWN)]
    settled = [n for n, v in verdicts.items() if v == SETTLED]
    shown = [n for n, v in verdicts.items() if v == SHOWN]
    if not gaps:
        return f"No CPU probe is recorded here. The paper's settings run on a GPU with `{GPU_COMMAND}`."
    head = (f"Central claim at CPU scale (benchmarks/probes.md, {len(gaps)} probes, {len(full)} of them with "
            f"at least {MIN_SEEDS} paired seeds"
            + (f" and {len(settled)} settled with fewer, since no further seeds could make them shown" if settled else "") + "): ")
    if shown:
        return head + f"the poster beats its tiling by the rule in {', '.join(shown)}. GPU: `{GPU_COMMAND}`."
    return head + ("the poster beats its tiling in none of them, so the central claims do not show at CPU scale "
                   f"here. The paper's settings test them on a GPU: `{GPU_COMMAND}`.")


README_END = "<!-- claims: end -->"


def readme_begin(out_dir: str = "outputs", file: str = "README.md") -> str:
    """The marker that opens a claims block computed from out_dir in file (one block per output folder)."""
    return f"<!-- claims: generated by `python -m podd_lib.kit readme {out_dir} {file}`; do not edit -->"


README_BEGIN = readme_begin()


def readme_block(results: Sequence[Mapping], out_dir: str = "outputs", file: str = "README.md") -> str:
    """The claims table for a markdown file, between its markers."""
    profiles = ", ".join(sorted({str(r.get("profile", "?")) for r in results})) or "none"
    return f"{readme_begin(out_dir, file)}\n\n{claims_markdown(claims_table(results), profiles)}\n{README_END}"


def update_readme(readme: str, results: Sequence[Mapping], out_dir: str = "outputs", file: str = "README.md") -> str:
    """The text of file (README.md, docs/results.md) with out_dir's claims block recomputed from results."""
    begin = readme_begin(out_dir, file)
    head, sep, rest = readme.partition(begin)
    _, sep2, tail = rest.partition(README_END)
    if not sep or not sep2:
        raise ValueError(f"{file} has no claims markers for {out_dir} ({begin!r} ... {README_END!r})")
    return head + readme_block(results, out_dir, file) + tail
