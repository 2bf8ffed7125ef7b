"""Tests for podd_lib.kit: tables against the paper's numbers, correlation, plots, results files, the report."""

from __future__ import annotations

import json
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from podd_lib import poco  # noqa: E402
from podd_lib.errors import PoddError  # noqa: E402
from podd_lib.kit.claims import section as claims_section  # noqa: E402
from podd_lib.kit import paper, plots, report, tables  # noqa: E402

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def run(ipc=1.0, mean=50.0, std=1.0, tag="podd", dataset="cifar10", profile="smoke", grid=(16, 6), tiling=False,
        order="paper", accs=None, steps=2, out="../outputs"):
    """A fake distill_and_evaluate result with only the fields the tables read."""
    soft = {"step": 5, "mean": mean, "std": std}
    ev = {"soft": {"by_step": [{"step": 5, "acc_pct": accs, "mean_pct": mean, "std_pct": std}]}} if accs else {}
    return {
        "tag": tag, "dataset": dataset, "ipc": ipc, "profile": profile, "steps": steps,
        "summary": {"soft": soft, "hard": {"step": 5, "mean": mean - 1, "std": std}}, "eval": ev,
        "geometry": {"p_x": grid[0], "p_y": grid[1], "d_w": 160, "d_h": 64, "is_tiling": tiling},
        "config": {"dataset": dataset, "order": order, "class_grid": [5, 2]},
        "command": f"podd distill --dataset {dataset} --ipc {ipc} --profile {profile} --out {out}/runs/{tag}-{ipc}",
    }


def full_run(mean=80.0, dataset="cifar10", profile="smoke"):
    """A fake full_data_baseline result (no summary, an eval block with 'final')."""
    return {"tag": "full", "dataset": dataset, "profile": profile,
            "eval": {"final": {"step": 30, "mean_pct": mean, "std_pct": 0.0},
                     "by_step": [{"step": 30, "acc_pct": [mean], "mean_pct": mean, "std_pct": 0.0}]},
            "command": f"podd evaluate --baseline full --dataset {dataset} --profile {profile}"}


# ---------------------------------------------------------------------------- tables


def test_table1_delta_paper_numbers_and_rows():
    results = [run(0.5, 50.0), run(1.0, 60.0, 0.3), run(1.0, 40.0, tag="ratbptt", grid=(5, 2), tiling=True),
               full_run(80.0), run(0.5, 1.0, dataset="cifar100")]
    df = tables.table1_frame(results, "cifar10")
    assert list(df["method"]) == ["RaT-BPTT (tiling)"] + ["PoDD"] * 8 + ["Full dataset"]
    pod = df[df["method"] == "PoDD"].set_index("IPC")
    assert list(pod.index) == [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]
    assert pod.loc[0.5, tables.DELTA] == pytest.approx(50.0 - 49.5)
    assert pod.loc[1.0, tables.DELTA] == pytest.approx(60.0 - 59.1)
    assert pod.loc[1.0, tables.OURS] == "60.0 \u00b1 0.3"
    assert pod.loc[1.0, tables.PAPER] == "59.1 \u00b1 0.5"
    assert pod.loc[1.0, "profile"] == "smoke" and "--ipc 1.0" in pod.loc[1.0, "command"]
    assert pod.loc[0.7, tables.OURS] == tables.DASH and pd.isna(pod.loc[0.7, tables.DELTA])
    assert pod.loc[0.7, "paper_mean"] == paper.TABLE1_PODD[0.7]["cifar10"][0]
    rat = df.iloc[0]
    assert rat["paper_mean"] == 53.2 and rat[tables.DELTA] == pytest.approx(40.0 - 53.2)
    assert rat["patches"] == "5x2" and rat["poster"] == "160x64"
    full = df.iloc[-1]
    assert full["ours_mean"] == 80.0 and full[tables.DELTA] == pytest.approx(80.0 - 83.5)


def test_seeds_pool_all_networks_population_std():
    a, b = [10.0, 20.0], [30.0, 50.0]
    df = tables.table1_frame([run(0.5, 15.0, 5.0, accs=a), run(0.5, 40.0, 10.0, accs=b)], "cifar10")
    row = df[(df["method"] == "PoDD") & (df["IPC"] == 0.5)].iloc[0]
    assert row["ours_mean"] == pytest.approx(np.mean(a + b))
    assert row["ours_std"] == pytest.approx(np.std(a + b))
    assert row["command"].count("podd distill") == 1  # identical commands are listed once


def test_table2_sources_and_reported_methods():
    ours = {"podd": run(1.0, 55.0), "ratbptt": run(1.0, 45.0, tag="ratbptt", tiling=True),
            "random": run(1.0, 20.0, tag="random"), "full": full_run(75.0)}
    df = tables.table2_frame(ours, "cifar10").set_index("method")
    assert df.loc["PoDD (poster, 1 IPC)", "source"] == "this kit, profile smoke"
    assert df.loc["PoDD (poster, 1 IPC)", tables.DELTA] == pytest.approx(55.0 - 59.1)
    assert df.loc["RaT-BPTT (tiling, 1 IPC)", tables.DELTA] == pytest.approx(45.0 - 53.2)
    assert pd.isna(df.loc["Random real images (1 IPC)", "paper_mean"])
    assert df.loc["Full dataset", "paper_mean"] == 83.5
    assert df.loc["MTT", "source"] == tables.PAPER_SOURCE and df.loc["MTT", tables.PAPER] == "46.3"
    assert df.loc["MTT", tables.OURS] == tables.DASH
    assert "PoDD" not in df.index and "RaT-BPTT" not in df.index  # shown once, with ours
    assert df.loc["BPTT", "paper_mean"] == 49.1
    cub = tables.table2_frame({}, "cub200").set_index("method")
    assert pd.isna(cub.loc["FRePo", "paper_mean"]) and cub.loc["PoDD", "paper_mean"] == 16.2


def test_figure6_frame_sorted_with_paper_values():
    results = [run(1.0, 30.0, grid=(16, 6)), run(1.0, 20.0, grid=(5, 2), tiling=True)]
    df = tables.figure6_frame(results, all_paper_grids=False)
    assert list(df["patch_grid"]) == ["5x2", "16x6"] and list(df["patches"]) == [10, 96]
    assert df.iloc[0]["paper_mean"] == paper.FIGURE6[(5, 2)] and df.iloc[0][tables.PAPER] == "45.15"
    assert df.iloc[1][tables.DELTA] == pytest.approx(30.0 - 56.73)
    full = tables.figure6_frame(results)
    assert list(full["patches"]) == [10, 24, 40, 60, 96, 126, 160]
    assert full.set_index("patch_grid").loc["20x8", tables.OURS] == tables.DASH
    assert full.set_index("patch_grid").loc["16x6", "ours_mean"] == 30.0


def test_order_frame_scores_and_pearson():
    emb = torch.randn(10, 7, generator=torch.Generator().manual_seed(0))
    dist = poco.cosine_distances(emb)
    results = [run(0.3, 30.0, order="paper"), run(0.3, 25.0, order="random:1"), run(0.3, 28.0, order="random:2")]
    df = tables.order_frame(results, dist, distance="test")
    assert list(df["order"]) == ["paper", "random:1", "random:2"]
    paper_grid = poco.paper_order("cifar10", CIFAR10, 2, 5)
    assert df.iloc[0]["score"] == pytest.approx(poco.ordering_score(paper_grid, dist))
    assert df.iloc[1]["score"] == pytest.approx(poco.ordering_score(poco.random_order(10, 2, 5, 1), dist))
    assert df.iloc[0]["grid"].startswith("truck airplane bird deer cat / automobile")
    r = tables.pearson(df["score"], df["ours_mean"])
    assert r == pytest.approx(np.corrcoef(df["score"], df["ours_mean"])[0, 1])


def test_pearson_matches_numpy_and_edge_cases():
    rng = np.random.default_rng(3)
    xs, ys = rng.normal(size=12), rng.normal(size=12)
    assert tables.pearson(xs, ys) == pytest.approx(np.corrcoef(xs, ys)[0, 1])
    assert tables.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert tables.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(tables.pearson([1, 1, 1], [1, 2, 3]))
    with pytest.raises(PoddError):
        tables.pearson([1, 2], [1, 2, 3])
    with pytest.raises(PoddError):
        tables.pearson([1], [1])


# ---------------------------------------------------------------------------- markdown, files, report


def test_markdown_table_format():
    df = pd.DataFrame([{"a": 1.23456, "b": "x|y", "c": None}, {"a": float("nan"), "b": "z", "c": 3}])
    md = tables.markdown_table(df)
    lines = md.strip().splitlines()
    assert lines[0] == "| a | b | c |"
    assert lines[1] == "| --- | --- | --- |"
    assert lines[2] == "| 1.235 | x\\|y |  |"
    assert lines[3].startswith("|  | z |")
    assert tables.markdown_table(df, columns=["b"]).splitlines()[0] == "| b |"
    with pytest.raises(PoddError):
        tables.markdown_table(df, columns=["nope"])


def test_root_relative_commands(tmp_path):
    cmd = "podd distill --out ../outputs/runs/cifar10/x && podd evaluate ../outputs/runs/cifar10/x"
    assert report.root_relative(cmd, str(report.REPO_ROOT / "notebooks" / ".." / "outputs")) == cmd
    inside = report.REPO_ROOT / "outputs"
    rel = report.root_relative(f"--out {inside}/runs/a", str(inside))
    assert rel == "--out outputs/runs/a"
    out = tmp_path / "o"
    assert report.root_relative(f"--out {out}/runs/a", str(out)) == f"--out {out.resolve()}/runs/a"


def test_save_results_and_build_report(tmp_path):
    results = [run(1.0, 60.0, out=str(tmp_path)), run(1.0, 40.0, tag="ratbptt", tiling=True, out=str(tmp_path))]
    df = tables.table1_frame(results, "cifar10")
    path = report.save_results(tmp_path, "02_table1_less_than_one_ipc", df, "smoke",
                               commands=["podd info --dataset cifar10"], notes=["a note"], title="Table 1")
    data = json.loads(path.read_text())
    assert data["profile"] == "smoke" and data["notes"] == ["a note"] and len(data["rows"]) == len(df)
    assert data["commands"][0] == "podd info --dataset cifar10" and len(data["commands"]) == 3
    assert all(r[tables.DELTA] is None or isinstance(r[tables.DELTA], float) for r in data["rows"])
    report.save_results(tmp_path, "03_other", [{"method": "x", "value": 1.5}], "quick")
    md = report.build_report(tmp_path)
    assert (tmp_path / "report.md").read_text() == md
    assert "59.1 \u00b1 0.5" in md and "53.2 \u00b1 0.7" in md and "83.5 \u00b1 0.2" in md
    assert "`smoke`" in md and "`quick`" in md and "mean nothing" in md
    assert "## Table 1" in md and "- a note" in md and " cmd |" in md and "[2]" in md
    assert "podd distill --dataset cifar10 --ipc 1.0 --profile smoke" in md
    assert md.index("## Table 1") < md.index("## 03_other")
    page = (tmp_path / "report.html").read_text()
    assert md.index("## The paper's claims") < md.index("## Table 1")  # the claims table opens the report
    assert page.startswith("<!DOCTYPE html>") and page.count("<table>") == 3
    assert "59.1 \u00b1 0.5" in page and "<code>podd info --dataset cifar10</code>" in page
    assert "<strong>" in page and "<script" not in page


def test_report_lists_each_notebooks_figures(tmp_path):
    fig = plots.figure6_plot(tables.figure6_frame([run(1.0, 30.0)]))
    plots.save_figure(fig, tmp_path, "04_figure6_patches")
    plt.close(fig)
    report.save_results(tmp_path, "04_ablation_patch_number", [{"a": 1}], "smoke")
    report.save_results(tmp_path, "05_other", [{"a": 2}], "smoke")
    md = report.build_report(tmp_path)
    assert md.count("![04_figure6_patches](figures/04_figure6_patches.png)") == 1
    page = (tmp_path / "report.html").read_text()
    assert '<img src="figures/04_figure6_patches.png"' in page


def test_build_report_without_results(tmp_path):
    md = report.build_report(tmp_path)
    assert "No results yet" in md and (tmp_path / "report.html").exists()


def test_html_escapes_cells():
    page = report.markdown_to_html("| a |\n| --- |\n| <b>x</b> \\| y |\n")
    assert "&lt;b&gt;x&lt;/b&gt; | y" in page and "<b>" not in page


def test_save_figure_and_plots(tmp_path):
    df = tables.table1_frame([run(0.5, 40.0), run(1.0, 50.0, tag="ratbptt", tiling=True)], "cifar10")
    figs = [plots.accuracy_vs_ipc_plot(df, "cifar10"),
            plots.figure6_plot(tables.figure6_frame([run(1.0, 30.0), run(1.0, 20.0, grid=(5, 2))])),
            plots.order_scatter(pd.DataFrame({"score": [0.1, 0.2], "ours_mean": [1.0, 2.0], "ours_std": [0.1, 0.1],
                                               "order": ["a", "b"], "distance": ["x", "x"]}), 1.0)]
    paths = plots.save_figure(figs[0], tmp_path, "acc_vs_ipc")
    assert [p.name for p in paths] == ["acc_vs_ipc.png", "acc_vs_ipc.pdf"]
    assert all(p.stat().st_size > 0 and p.parent == tmp_path / "figures" for p in paths)
    with pytest.raises(PoddError):
        plots.save_figure(figs[0], tmp_path, "a/b")
    for f in figs:
        plt.close(f)


def test_patch_label_grid_is_x_major():
    p_x, p_y, n = 3, 2, 4
    y = torch.zeros(p_x * p_y, n)
    for k in range(p_x * p_y):  # patch k = i * p_y + j sits at column i, row j
        i, j = divmod(k, p_y)
        y[k, (i + j) % n] = 1.0
    cls, top = plots.patch_label_grid(y, p_x, p_y)
    assert cls.shape == (p_y, p_x)
    assert all(cls[j, i] == (i + j) % n for i in range(p_x) for j in range(p_y))
    assert np.all(top == 1.0)
    with pytest.raises(PoddError):
        plots.patch_label_grid(y, 2, 2)


def test_report_sections_run_in_order_and_a_new_one_fits_in(tmp_path):
    report.save_results(tmp_path, "02_table1_less_than_one_ipc", [{"a": 1}], "smoke", title="Table 1")

    def claims(out_dir, results):
        return ["## Claims", "", f"{len(results)} results file(s) read from {out_dir.name}.", ""]

    md = report.build_report(tmp_path, sections=(report.header_section, claims, report.notebook_sections))
    assert md.index("Smoke numbers mean nothing") < md.index("## Claims") < md.index("## Table 1")
    assert "1 results file(s)" in md and "<h2>Claims</h2>" in (tmp_path / "report.html").read_text()
    assert report.SECTIONS == (claims_section, report.header_section, report.notebook_sections, report.where_section)


def test_where_section_lists_hosts_devices_and_failed_runs(tmp_path):
    from podd_lib.io import atomic_write_json

    atomic_write_json(tmp_path / "runs/cifar10/ipc1-aaa/result.json", {"computed_on": {"host": "n1", "device": "cuda",
                                                                                     "device_name": "H100"}})
    atomic_write_json(tmp_path / "runs/cifar10/ipc1-bbb/result.json", {"computed_on": {"host": "n1", "device": "cuda",
                                                                                     "device_name": "H100"}})
    atomic_write_json(tmp_path / "runs/cifar10/ipc0.5-ccc/job.json", {"state": "failed", "error": "OOM", "log": "j.err"})
    lines = "\n".join(report.where_section(tmp_path, []))
    assert "| n1 | H100 | 2 |" in lines and "1 runs failed" in lines and "`ipc0.5-ccc`: OOM (log: `j.err`)" in lines
    assert report.where_section(tmp_path / "empty", []) == []


def test_stack_soft_hard_and_fmt_acc():
    a = tables.table2_frame({"podd": run(1.0, 55.0)}, "cifar10")
    b = tables.table2_frame({"podd": run(1.0, 35.0, dataset="cifar100")}, "cifar100")
    both = tables.stack({"cifar10": a, "cifar100": b})
    assert list(both.columns) == ["dataset", *a.columns] and len(both) == len(a) + len(b)
    assert list(both[both["method"] == "PoDD (poster, 1 IPC)"]["dataset"]) == ["cifar10", "cifar100"]
    df = tables.soft_hard_frame([run(1.0, 60.0, 0.5)], "cifar10", 1.0).set_index("method")
    assert df.loc["PoDD, soft labels", "ours_mean"] == 60.0 and df.loc["PoDD, soft labels", "paper_mean"] == 59.1
    assert df.loc["PoDD, hard labels (argmax)", "ours_mean"] == 59.0
    assert pd.isna(df.loc["PoDD, hard labels (argmax)", "paper_mean"])
    assert tables.fmt_acc(run(1.0, 24.91, 0.44)) == "24.9 \u00b1 0.4" and tables.fmt_acc(None) == tables.DASH


def test_the_cross_architecture_table_keeps_each_seed_so_its_claim_pairs_them():
    from podd_lib.kit import claims

    def on(arch, rep, seed, mean):
        r = run(mean=mean, accs=[mean - 0.5, mean + 0.5])
        return {**r, "arch": arch, "representation": rep, "seed": seed, "config": {**r["config"], "seed": seed}}

    results = [on(a, rep, seed, 20.0 + seed + (3.0 if rep.startswith("poster") else 0.0))
               for a in ("convnet", "vgg11") for rep in ("poster, 1 IPC", "tiling, 1 IPC") for seed in (0, 1, 2)]
    df = tables.cross_arch_frame(results)
    row = df[(df.architecture == "VGG-11") & (df.representation == "poster, 1 IPC")].iloc[0]
    assert row["seed_means"] == {"0": 23.0, "1": 24.0, "2": 25.0}
    saved = [{"name": "09_cross_architecture", "rows": df.to_dict("records")}]
    [claim] = claims.posters_across_architectures(saved)
    assert claim["verdict"] == "shown" and "n = 3" in claim["gap"]
