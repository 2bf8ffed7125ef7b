"""One call sets a notebook up; the session it returns runs the notebook's cached experiments.

    s = kit.setup("02_table1_less_than_one_ipc", profile, out_dir, data_root, device, force, datasets, seeds)
    results = s.distill(0.5) + s.tiling()          # cached runs, one per seed
    s.show_deviations()                             # what the profile changes from the paper
    s.figure(fig, "02_table1_cifar10")              # PNG + PDF under out_dir/figures, shown
    s.save_results(table, title="Table 1")          # out_dir/results/<name>.json, for the report

The session holds what every call shares (profile, datasets, seeds, out_dir, data root, device,
force), so the notebooks never repeat them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..config import irrelevant_keys, profile_out_dir, profile_seeds, resolve_config, tiling_overrides
from ..errors import PoddError
from . import experiments, plots, report


def speed_settings() -> None:
    """Turn on the fast backend's process-wide settings (huge pages for large tensors) for this process.

    PyTorch reads THP_MEM_ALLOC_ENABLE at its first allocation of 2 MB or more, which a notebook
    makes only after set-up; a value already exported (0 opts out) is kept.
    """
    from ..fast import enable_runtime

    enable_runtime()


def limit_threads(profile: str) -> int:
    """Set torch's intra-op threads for a notebook: $PODD_NUM_THREADS, else 1 under the smoke profile.

    The smoke profile's tensors are tiny; on a small shared machine extra threads only wait on each
    other. Other profiles keep torch's default unless the variable is set. Returns the thread count
    now in use.
    """
    import torch

    env = os.environ.get("PODD_NUM_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise PoddError(f"PODD_NUM_THREADS must be a positive integer, got {env!r}") from None
        if n < 1:
            raise PoddError(f"PODD_NUM_THREADS must be a positive integer, got {env!r}")
        torch.set_num_threads(n)
    elif profile == "smoke":
        torch.set_num_threads(1)
    return torch.get_num_threads()


def profile_deviations(dataset: str, profile: str, ipc: float = 1.0, overrides: dict | None = None) -> list[str]:
    """One line per setting the profile changes from the paper's config: 'width = 8 (paper: 128)'.

    The paper's config is the dataset config with the kit's defaults, i.e. the paper's text (profile
    `paper-text`); under `paper` the lines are where the authors' release differs from the text.
    Settings of other algorithms than the one in overrides (default RaT-BPTT) are not listed; the
    other algorithms' settings are compared with the kit's defaults, taken from their own papers.
    """
    from ..config import algorithm_defaults

    cfg = resolve_config(dataset, ipc, profile, overrides)
    base = resolve_config(dataset, ipc, "paper-text", overrides)
    unused, defaults = irrelevant_keys(cfg), algorithm_defaults()

    def shown(key: str, value: Any) -> str:
        return "0 (all)" if key.endswith("_per_class") and value == 0 else repr(value)

    return [f"{k} = {shown(k, v)} ({'default' if k in defaults else 'paper'}: {shown(k, getattr(base, k))})"
            for k, v in cfg.profile_overrides.items() if k not in unused and v != getattr(base, k)]


def notebook_root(cwd: Path | None = None) -> Path:
    """The kit's root seen from a notebook: the parent of notebooks/ (papermill and nbval run there), else cwd."""
    cwd = Path.cwd() if cwd is None else cwd
    return cwd.parent if cwd.name == "notebooks" else cwd


def _display_markdown(text: str) -> None:
    """Show markdown in a notebook, or print it elsewhere."""
    try:
        from IPython.display import Markdown, display
    except ImportError:
        print(text)
        return
    display(Markdown(text))


@dataclass
class Session:
    """A notebook's settings, and its calls into the run cache, tables, figures and results files."""

    name: str
    profile: str
    out_dir: str
    data_root: str
    device: str
    force: bool
    datasets: list[str]
    seeds: list[int]
    dataset: str  # the dataset of single-dataset experiments: the first of datasets unless the notebook fixes it
    threads: int
    computed: list = field(default_factory=list)  # results this session returned, for their provenance

    def _seen(self, results: list[dict]) -> list[dict]:
        """Remember results (their `computed_on` goes into the results file); return them."""
        self.computed += results
        return results

    # ------------------------------------------------------------------ cached runs

    def distill(self, ipc: float, overrides: dict | None = None, tag: str = "podd", dataset: str | None = None,
                seeds: Sequence[int] | None = None) -> list[dict]:
        """Distil and evaluate one poster per seed (kit.experiments.distill_and_evaluate, cached)."""
        return self._seen([experiments.distill_and_evaluate(
            dataset or self.dataset, ipc, self.profile, self.out_dir, {**(overrides or {}), "seed": seed},
            self.data_root, tag=tag, force=self.force, device=self.device) for seed in (seeds or self.seeds)])

    def tiling(self, dataset: str | None = None) -> list[dict]:
        """The RaT-BPTT baseline at 1 IPC, one per seed: patches that tile the poster (cached)."""
        ds = dataset or self.dataset
        return self.distill(1.0, tiling_overrides(ds, self.profile), tag="ratbptt", dataset=ds)

    def random_baseline(self, ipc: float = 1.0, dataset: str | None = None) -> list[dict]:
        """Random real images within the pixel budget, one set per seed (cached)."""
        return self._seen([experiments.random_real_baseline(dataset or self.dataset, ipc, self.profile, self.out_dir,
                                                            {"seed": seed}, self.data_root, self.force, self.device)
                           for seed in self.seeds])

    def full_baseline(self, dataset: str | None = None) -> list[dict]:
        """The network trained on the whole (profile-sliced) training set, at the first seed: no claim compares it."""
        return self._seen([experiments.full_data_baseline(dataset or self.dataset, self.profile, self.out_dir,
                                                          {"seed": seed}, self.data_root, self.force, self.device)
                           for seed in self.seeds[:1]])

    def algorithm(self, algorithm: str, representation: str, sampling: str, overrides: dict | None = None,
                  dataset: str | None = None) -> dict:
        """One algorithm on the poster or the tiling, with random or DREAM batches (cached)."""
        return self._seen([experiments.algorithm_run(dataset or self.dataset, algorithm, representation, sampling,
                                                     self.profile, self.out_dir, overrides, self.data_root, self.force,
                                                     self.device)])[0]

    def cross_arch(self, kind: str, ipc: float, arch: str, num_models: int, steps: Sequence[int],
                   overrides: dict | None = None, tag: str | None = None, dataset: str | None = None,
                   seeds: Sequence[int] | None = None) -> list[dict]:
        """A poster or tiling (kind 'distill') or random real images ('random') evaluated on arch, one per seed (cached)."""
        return [experiments.cross_arch_run(kind, dataset or self.dataset, ipc, self.profile, arch, num_models,
                                           list(steps), self.out_dir, {**(overrides or {}), "seed": seed},
                                           self.data_root, tag, self.force, self.device)
                for seed in seeds or self.seeds]

    def load_run(self, result: dict) -> dict:
        """A finished run's poster, labels and geometry (distill.load_run), with its preprocessor as 'prep'."""
        from ..data import Preprocessor
        from ..run import load_run

        run = load_run(result["run_dir"], self.data_root)
        return {**run, "prep": Preprocessor.from_state_dict(run["preprocess"]) if run["preprocess"] else None}

    # ------------------------------------------------------------------ deterministic printouts

    def show_deviations(self, ipc: float = 1.0, overrides: dict | None = None, datasets: Sequence[str] | None = None,
                        label: str | None = None) -> None:
        """Print every setting in which the profile differs from the paper's config, per dataset."""
        for ds in datasets or self.datasets:
            changes = profile_deviations(ds, self.profile, ipc, overrides)
            print(f"{label or ds}, profile {self.profile!r}: "
                  + ("the paper's settings" if not changes else f"{len(changes)} changes"))
            for line in changes:
                print("  " + line)

    def deviation_notes(self, ipc: float = 1.0, overrides: dict | None = None,
                        datasets: Sequence[str] | None = None, label: str | None = None) -> list[str]:
        """The report's note on the profile's deviations from the paper's text, per dataset (default: `dataset`)."""
        what = f" ({label})" if label else ""
        changes = {ds: profile_deviations(ds, self.profile, ipc, overrides) for ds in datasets or [self.dataset]}
        return [f"profile {self.profile} deviates from the paper{what}: " + "; ".join(lines)
                for lines in changes.values() if lines]

    def geometry(self, ipc: float, overrides: dict | None = None) -> Any:
        """The poster geometry of a config, from the config alone (no data needed)."""
        from ..run import geometry_from_config

        return geometry_from_config(resolve_config(self.dataset, ipc, self.profile, overrides))

    def show_geometry(self, ipc: float, overrides: dict | None = None) -> None:
        """Print the poster geometry of a config, with its labels, order and init."""
        import json

        cfg = resolve_config(self.dataset, ipc, self.profile, overrides)
        print(json.dumps(self.geometry(ipc, overrides).to_dict(), indent=1))
        print("labels:", cfg.label_kind, "| class order:", cfg.order, "| init:", cfg.init)

    def show_run(self, result: dict) -> None:
        """Print where a run lives, its steps and seconds per step, and the command that reproduces it."""
        sps = result.get("seconds_per_step_median")
        print("run folder:", result["run_dir"])
        print(f"{result['steps']} outer steps" + (f", median {sps:.2f} s per step" if sps else ""))
        print("command:", result["command"])

    # ------------------------------------------------------------------ tables, figures, results

    def show_table(self, df: Any, columns: Sequence[str], by: str | None = None) -> None:
        """Show a table as markdown; with `by`, one table per value of that column under a bold heading."""
        from .tables import markdown_table

        if by is None:
            _display_markdown(markdown_table(df, columns))
            return
        for value, part in df.groupby(by, sort=False):
            _display_markdown(f"**{value}**\n\n" + markdown_table(part, [c for c in columns if c != by]))

    def show_markdown(self, text: str) -> None:
        """Show markdown in the notebook (printed outside IPython)."""
        _display_markdown(text)

    def figure(self, fig: Any, name: str) -> None:
        """Save a figure as out_dir/figures/<name>.png and .pdf, show it and close it."""
        plots.show_figure(fig, self.out_dir, name)

    def save_results(self, rows: Any, title: str, notes: Sequence[str] = (), columns: Sequence[str] | None = None,
                     name: str | None = None, **kwargs: Any) -> Path:
        """Write out_dir/results/<name>.json (default: the notebook's name) for the report."""
        return report.save_results(self.out_dir, name or self.name, rows, self.profile, notes=notes, title=title,
                                   columns=columns, computed_with=[r.get("computed_on") for r in self.computed],
                                   **kwargs)


def setup(name: str, profile: str, out_dir: str = "../outputs", data_root: str | None = None, device: str = "auto",
          force: bool = False, datasets: Sequence[str] = ("cifar10",), seeds: Sequence[int] | None = (0,),
          dataset: str | None = None) -> Session:
    """Set a notebook up: check the parameters, place smoke results apart, set threads and speed settings.

    data_root None is the kit's ./data. Under the smoke profile results go to <out_dir>/smoke, so that
    they never replace real ones. `dataset` fixes the dataset of a single-dataset experiment (a paper
    figure on CIFAR-10), whatever `datasets` says; by default it is the first of `datasets`.
    """
    seeds = profile_seeds(profile, seeds)  # an unknown profile fails here, in one line  # None: the profile's seeds (configs/runs.toml)
    if isinstance(datasets, str) or not datasets:
        raise PoddError(f"datasets must be a non-empty list of names, got {datasets!r}")
    if device not in ("auto", "cpu") and not str(device).startswith("cuda"):
        raise PoddError(f"device must be auto, cpu or cuda[:N], got {device!r}")
    dataset = dataset or datasets[0]
    for ds in [*datasets, dataset]:
        resolve_config(ds, 1.0, profile)  # an unknown dataset or profile fails here, in one line
    root = str(Path(data_root)) if data_root else str(notebook_root() / "data")
    out = profile_out_dir(out_dir, profile)
    speed_settings()
    s = Session(name, profile, out, root, device, bool(force), list(datasets), seeds, dataset, limit_threads(profile))
    print(f"profile={profile}  datasets={s.datasets}  seeds={seeds}  data_root={root}  out_dir={out}  "
          f"torch threads={s.threads}")
    return s
