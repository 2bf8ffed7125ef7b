"""The written report: results files of the notebooks, and outputs/report.md and report.html built from them.

Each notebook writes one results file, out_dir/results/<notebook>.json (`save_results`): its table,
the profile, notes and the commands that produced every number. `build_report` reads them all and
writes out_dir/report.md, section by section (`SECTIONS`), and an HTML copy rendered by markdown-it-py.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..determinism import environment
from ..errors import PoddError
from ..io import atomic_write_json, atomic_write_text
from .tables import NUMERIC_HELPERS, markdown_table
from . import claims

REPO_ROOT = Path(__file__).resolve().parents[2]
TITLE = "# podd-kit report: Distilling Datasets Into Less Than One Image (PoDD)"

PROFILE_MEANING = {
    "smoke": "the smoke profile: a sliver of the data, a tiny network and a few distillation steps "
             "(see podd_lib/configs/profiles.toml). It only checks that everything runs end to end: its "
             "accuracies mean nothing and must not be compared with the paper.",
    "quick": "the quick profile: a reduced reproduction for a 2-core CPU (narrower network, shorter "
             "unroll, smaller real batches and far fewer distillation steps than the paper, see "
             "podd_lib/configs/profiles.toml). Expect lower accuracies than the paper.",
    "cpu-long": "the cpu-long profile: the quick profile at the paper's width (128 filters) with learned labels at "
                "every IPC (the paper: fixed labels from 0.7 IPC up on CIFAR-10), the cheapest setting probed on a CPU "
                "where the poster beat the tiling on two seeds, not by the paired rule over three (benchmarks/probes.md). "
                "Expect lower accuracies than the paper.",
    "paper": "the paper profile: the paper's settings, run as the authors' release runs them (the release "
             "produced the paper's numbers: class-area init, one curriculum draw per epoch, its clipping "
             "order, epoch-walk real batches; meant for a GPU).",
    "paper-text": "the paper-text profile: the paper's settings as its text describes them (N(0, 1) init, "
                  "a curriculum draw every step, clipping before the EMA update, random real batches; "
                  "meant for a GPU).",
}
HOW_TO_READ = (
    "How to read the tables: **ours** is this kit's test accuracy (%) with soft labels at the last "
    "evaluation step, mean \u00b1 population std over the evaluation networks; **paper** is the number "
    "printed in the paper (mean \u00b1 std over 8 networks where the paper gives one); **delta** is ours "
    "\u2212 paper in accuracy points; **cmd** points to the command that produced the row (run from the "
    "repository root). An empty cell means not run or not reported."
)
HTML_STYLE = ("body{font-family:sans-serif;max-width:72em;margin:2em auto;padding:0 1em;line-height:1.45}"
              "table{border-collapse:collapse;margin:0.5em 0 1em}td,th{border:1px solid #bbb;padding:3px 8px;"
              "font-size:0.9em}th{background:#eef}code{background:#f4f4f4;font-size:0.85em}img{max-width:100%}")

# A report section: (out_dir, every results file's content) -> markdown lines.
Section = Callable[[Path, list[dict]], list[str]]


# ----------------------------------------------------------------------------- results files


def _plain(value: Any) -> Any:
    """JSON-ready copy: numpy/pandas scalars to Python, NaN to None, tuples to lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _rows_of(rows: Any) -> list[dict]:
    """A DataFrame or a list of dicts as a list of plain dicts."""
    if hasattr(rows, "to_dict"):
        rows = rows.to_dict("records")
    return [_plain(dict(r)) for r in rows]


def root_relative(command: str, out_dir: str | os.PathLike) -> str:
    """Rewrite the out_dir prefix in a command so the command runs from the repository root.

    The notebooks run in notebooks/ with out_dir '../outputs'; the commands in the report should
    read 'outputs/runs/...'. Outside the repository the prefix becomes an absolute path.
    """
    prefix = str(out_dir).rstrip("/\\")
    if not prefix or prefix == ".":
        return command
    target = Path(out_dir).resolve()
    try:
        new = target.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        new = str(target)
    pattern = re.compile(r"(?<![\w./-])" + re.escape(prefix) + r"(?=[/\\])")
    return pattern.sub(new.replace("\\", "\\\\"), command)


def save_results(out_dir: str | os.PathLike, name: str, rows: Any, profile: str, commands: Sequence[str] = (),
                 notes: Sequence[str] = (), title: str | None = None, columns: Sequence[str] | None = None,
                 tables: Mapping[str, Any] | None = None, computed_with: Sequence[Mapping | None] = ()) -> Path:
    """Write out_dir/results/<name>.json: {"name", "title", "profile", "rows", "columns", "commands", "notes", ...}.

    rows: a DataFrame or a list of dicts (the table, with 'command' per row when known); commands:
    further commands that produced the numbers (row commands are added); columns: the columns the
    report shows (default: all but the numeric helper columns and 'command'); tables: optional
    further tables {caption: rows}; computed_with: the `computed_on` records of the runs behind the
    rows (each distinct one is kept once, beside the environment that wrote the file, `rendered_with`).
    Commands are rewritten to run from the repository root.
    """
    if not name or "/" in name or "\\" in name:
        raise PoddError(f"results name must be a plain file name, got {name!r}")
    plain = _rows_of(rows)
    extra = {str(k): _rows_of(v) for k, v in (tables or {}).items()}
    for r in [*plain, *(r for t in extra.values() for r in t)]:
        if r.get("command"):
            r["command"] = " ; ".join(root_relative(c, out_dir) for c in r["command"].split(" ; "))
    cmds = [root_relative(c, out_dir) for c in commands]
    for r in [*plain, *(r for t in extra.values() for r in t)]:
        cmds += [c for c in (r.get("command") or "").split(" ; ") if c]
    payload = {
        "name": name, "title": title or name, "profile": profile, "rows": plain,
        "columns": list(columns) if columns is not None else None,
        "commands": list(dict.fromkeys(cmds)), "notes": [str(n) for n in notes], "tables": extra,
        "computed_with": _distinct(c for c in computed_with if c), "rendered_with": environment(),
    }
    return atomic_write_json(Path(out_dir) / "results" / f"{name}.json", payload)


def _distinct(records: Iterable[Mapping]) -> list[dict]:
    """Each distinct record once, in first-seen order."""
    seen: dict[str, dict] = {}
    for r in records:
        seen.setdefault(json.dumps(r, sort_keys=True, default=str), dict(r))
    return list(seen.values())


def load_results(out_dir: str | os.PathLike) -> list[dict]:
    """Every out_dir/results/*.json, sorted by file name."""
    folder = Path(out_dir) / "results"
    out = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise PoddError(f"{path} is not valid JSON: {exc.msg} (line {exc.lineno})") from None
        data.setdefault("name", path.stem)
        out.append(data)
    return out


def _display_columns(rows: list[dict], columns: Sequence[str] | None) -> list[str]:
    """The columns a results table shows in the report."""
    if columns:
        return list(columns)
    seen: dict[str, None] = {}
    for r in rows:
        for k in r:
            if k not in NUMERIC_HELPERS and k != "command":
                seen.setdefault(k, None)
    return list(seen)


def _table_with_commands(rows: list[dict], columns: Sequence[str] | None, commands: list[str]) -> str:
    """A results table with a 'cmd' column pointing into the numbered command list."""
    import pandas as pd

    if not rows:
        return "_(no rows)_\n"
    cols = [c for c in _display_columns(rows, columns) if c != "command"]
    shown = []
    for r in rows:
        refs = [f"[{commands.index(c) + 1}]" for c in (r.get("command") or "").split(" ; ") if c in commands]
        shown.append({**r, "cmd": " ".join(refs)})
    if any(s["cmd"] for s in shown):
        cols.append("cmd")
    return markdown_table(pd.DataFrame(shown), cols)


# ----------------------------------------------------------------------------- the report


def _profile_header(results: list[dict]) -> list[str]:
    """Which profile produced the numbers, and what that means."""
    profiles = sorted({r.get("profile", "?") for r in results})
    lines = []
    if len(profiles) == 1:
        lines.append(f"**All numbers computed here come from the `{profiles[0]}` profile.**")
    else:
        lines.append("**The numbers come from several profiles: " + ", ".join(f"`{p}`" for p in profiles)
                     + "; each section names its own.**")
    lines.append("")
    for p in profiles:
        if p in PROFILE_MEANING:
            lines.append(f"- `{p}`: {PROFILE_MEANING[p]}")
    if "smoke" in profiles:
        lines += ["", "**Smoke numbers mean nothing.** They come from a few seconds of compute and only show "
                  "that the pipeline runs; run `./run_all.sh --profile quick` (or `paper` on a GPU) for numbers "
                  "worth reading."]
    return lines


def header_section(out_dir: Path, results: list[dict]) -> list[str]:
    """The top of the report: the profiles behind the numbers and how to read the tables."""
    if not results:
        return [f"No results yet: no files in `{(out_dir / 'results').as_posix()}`. Run the notebooks "
                "(`./run_all.sh`) first.", ""]
    return _profile_header(results) + ["", HOW_TO_READ, ""]


def _section_figures(out_dir: Path, name: str, shown: set[str]) -> list[Path]:
    """The figures of a notebook: out_dir/figures/<number>_*.png for a results name '<number>_...' (once)."""
    m = re.match(r"^(\d+)_", name)
    if not m or m.group(1) in shown:
        return []
    shown.add(m.group(1))
    return sorted((out_dir / "figures").glob(f"{m.group(1)}_*.png"))


def notebook_section(res: dict, out_dir: Path, shown_prefixes: set[str]) -> list[str]:
    """One results file: title, notes, its tables with numbered commands, and its notebook's figures."""
    title = res.get("title") or res["name"]
    lines = [f"## {title}", "", f"Notebook `{res['name']}`, profile `{res.get('profile', '?')}`.", ""]
    notes = [n for n in res.get("notes") or [] if n]
    lines += [f"- {n}" for n in notes] + ([""] if notes else [])
    cmds = list(res.get("commands") or [])
    if res.get("rows"):
        lines += [_table_with_commands(res["rows"], res.get("columns"), cmds), ""]
    for caption, trows in (res.get("tables") or {}).items():
        lines += [f"**{caption}**", "", _table_with_commands(trows, None, cmds), ""]
    if cmds:
        lines += ["Commands:", ""] + [f"{i}. `{c}`" for i, c in enumerate(cmds, 1)] + [""]
    figs = _section_figures(out_dir, res["name"], shown_prefixes)
    if figs:
        lines += ["Figures (PNG; a PDF of each lies beside it):", ""]
        lines += [f"![{f.stem}](figures/{f.name})" for f in figs] + [""]
    return lines


def notebook_sections(out_dir: Path, results: list[dict]) -> list[str]:
    """One section per results file, in file-name order."""
    shown: set[str] = set()
    return [line for res in results for line in notebook_section(res, out_dir, shown)]


def where_section(out_dir: Path, results: list[dict]) -> list[str]:
    """Where each cached run was computed (host, device, SLURM job), and the runs whose job failed, with logs."""
    from .experiments import cached_result

    where: dict[tuple, list[str]] = {}
    failed = []
    for folder in sorted(p for p in (out_dir / "runs").glob("*/*") if p.is_dir()):
        res, job = folder / "result.json", folder / "job.json"
        result = cached_result(res)
        if result is not None:
            on = result.get("computed_on") or {}
            key = (on.get("host", "not recorded"), on.get("device_name") or on.get("device", "not recorded"))
            where.setdefault(key, []).append(folder.name)
        elif job.exists():
            info = json.loads(job.read_text())
            if info.get("state") == "failed":
                failed.append(f"- `{folder.name}`: {info.get('error', 'failed')} (log: `{info.get('log')}`)")
    if not where and not failed:
        return []
    lines = ["## Where the runs were computed", "", "| host | device | runs |", "| --- | --- | --- |"]
    lines += [f"| {h} | {d} | {len(v)} |" for (h, d), v in sorted(where.items())]
    if failed:
        lines += ["", f"**{len(failed)} runs failed** (their rows show a dash):", ""] + failed
    return lines + [""]


# The report's sections in order: the paper's claims first, then the profile header, one section per notebook,
# and where the runs were computed.
SECTIONS: tuple[Section, ...] = (claims.section, header_section, notebook_sections, where_section)


def build_report(out_dir: str | os.PathLike = "outputs", sections: Sequence[Section] = SECTIONS) -> str:
    """Read out_dir/results/*.json and write out_dir/report.md and report.html; returns the markdown."""
    out_dir = Path(out_dir)
    results = load_results(out_dir)
    lines = [TITLE, ""]
    for section in sections:
        lines += section(out_dir, results)
    text = "\n".join(lines).rstrip() + "\n"
    atomic_write_text(out_dir / "report.md", text)
    atomic_write_text(out_dir / "report.html", markdown_to_html(text, title="podd-kit report"))
    return text


def markdown_to_html(md: str, title: str = "report") -> str:
    """A standalone HTML page of markdown (CommonMark with tables; raw HTML in the text is escaped)."""
    import html

    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(md)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">\n<title>{html.escape(title)}</title>\n"
            f"<style>{HTML_STYLE}</style>\n</head><body>\n{body}</body></html>\n")
