"""Computing a plan's runs through an executor: this process, submitit's LocalExecutor, or SLURM.

Every run is one job. A job computes its run exactly as a notebook would (kit.experiments, cwd
notebooks/, the notebook's out_dir), so the notebooks then render from the cache alone. While it
runs it keeps <run folder>/progress.json up to date, which the main job reads to print progress;
when it ends the main job writes <run folder>/job.json (state, log, error line). Jobs follow
submitit's checkpointing protocol: on preemption or timeout `RunJob.checkpoint` resubmits the same
call, which resumes the distillation from its checkpoint.pt and the evaluation from eval-progress/.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from submitit.helpers import Checkpointable, DelayedSubmission

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from ..errors import PoddError
from ..io import atomic_write_json
from . import experiments
from .plan import estimate, fmt_seconds, run_label

EXECUTORS = ("local", "submitit-local", "slurm")
SLURM_KEYS = {"partition": str, "gpus_per_run": int, "cpus_per_run": int, "mem_gb": int, "time_min": int,
              "array_parallelism": int, "sbatch": dict, "setup": list, "python": str}


# ----------------------------------------------------------------------------- one run


class ProgressFile:
    """Writes a run's progress.json atomically, at most once a second and at the end of each phase."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / "progress.json"
        self.started = time.time()
        self.last = 0.0
        self.phases: dict[str, list[int]] = {}

    def __call__(self, phase: str, step: int, total: int) -> None:
        self.phases[phase] = [step, total]
        now = time.time()
        if now - self.last >= 1.0 or step >= total:
            self.last = now
            atomic_write_json(self.path, {"phases": self.phases, "started": self.started, "updated": now,
                                          "host": socket.gethostname(), "pid": os.getpid(),
                                          "slurm_job": os.environ.get("SLURM_JOB_ID")})


def compute_run(run: dict, notebooks_dir: str, data_root: str | None, device: str = "auto", force: bool = False,
                report: Callable[[str, int, int], None] | None = None) -> dict:
    """Compute one planned run as its notebook would (cwd notebooks_dir); returns its result."""
    from .session import limit_threads, speed_settings

    os.chdir(notebooks_dir)
    speed_settings()
    limit_threads(run["profile"])
    report = report or ProgressFile(run["folder"])
    common = dict(data_root=data_root, force=force, device=device, report=report)
    if run["kind"] == "distill":
        return experiments.distill_and_evaluate(run["dataset"], run["ipc"], run["profile"], run["out_dir"],
                                                run["overrides"], tag=run["tag"], **common)
    if run["kind"] == "random":
        return experiments.random_real_baseline(run["dataset"], run["ipc"], run["profile"], run["out_dir"],
                                                run["overrides"], **common)
    if run["kind"] == "full":
        return experiments.full_data_baseline(run["dataset"], run["profile"], run["out_dir"], run["overrides"],
                                              **common)
    if run["kind"] == "arch":
        return experiments.cross_arch_run(run["source_kind"], run["dataset"], run["ipc"], run["profile"], run["arch"],
                                          run["eval_models"], run["eval_step_list"], run["out_dir"], run["overrides"],
                                          tag=run["tag"], **common)
    raise PoddError(f"unknown run kind {run['kind']!r}")


class RunJob(Checkpointable):
    """A planned run as a callable for submitit; compute_run resumes from the run's checkpoints."""

    def __call__(self, run: dict, notebooks_dir: str, data_root: str | None, device: str = "auto",
                 force: bool = False) -> dict:
        """Compute the run and return where and how long (the result itself is in the run folder)."""
        t0 = time.time()
        result = compute_run(run, notebooks_dir, data_root, device, force)
        return {"folder": run["folder"], "seconds": time.time() - t0, "computed_on": result.get("computed_on")}

    def checkpoint(self, run: dict, notebooks_dir: str, data_root: str | None, device: str = "auto",
                   force: bool = False) -> DelayedSubmission:
        """On preemption or timeout: the same call again, without force; it resumes from the run's checkpoints."""
        return DelayedSubmission(self, run, notebooks_dir, data_root, device, False)


# ----------------------------------------------------------------------------- settings


def load_slurm_settings(path: str | os.PathLike | None, overrides: dict | None = None) -> dict:
    """SLURM settings from a TOML file ([slurm] table) and flags; PoddError naming a bad key or type."""
    settings: dict = {"gpus_per_run": 1, "cpus_per_run": 8, "time_min": 240, "array_parallelism": 16, "sbatch": {},
                      "setup": []}
    if path:
        p = Path(path)
        if not p.is_file():
            raise PoddError(f"--slurm-config {path}: no such file")
        try:
            data = tomllib.loads(p.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise PoddError(f"--slurm-config {path}: not valid TOML ({e})") from None
        settings.update(data.get("slurm", data))
    settings.update({k: v for k, v in (overrides or {}).items() if v is not None})
    for k, v in settings.items():
        if k not in SLURM_KEYS:
            raise PoddError(f"SLURM setting {k!r} is unknown; known: {', '.join(SLURM_KEYS)}")
        if not isinstance(v, SLURM_KEYS[k]) or (SLURM_KEYS[k] is int and (isinstance(v, bool) or v < 0)):
            raise PoddError(f"SLURM setting {k} must be a {'non-negative integer' if SLURM_KEYS[k] is int else SLURM_KEYS[k].__name__}, got {v!r}")
    return settings


def make_executor(kind: str, log_dir: Path, slurm: dict | None = None, timeout_min: int = 24 * 60) -> Any:
    """A submitit executor writing each job's logs under log_dir/<job id>/."""
    import submitit

    if kind == "submitit-local":
        ex = submitit.LocalExecutor(folder=str(log_dir))
        ex.update_parameters(timeout_min=timeout_min)
        return ex
    s = slurm or load_slurm_settings(None)
    ex = submitit.AutoExecutor(folder=str(log_dir), cluster="slurm")
    params = dict(timeout_min=s["time_min"], slurm_array_parallelism=s["array_parallelism"], name="podd",
                  cpus_per_task=s["cpus_per_run"], slurm_additional_parameters=dict(s["sbatch"]),
                  slurm_setup=list(s["setup"]), slurm_signal_delay_s=120)
    if s["gpus_per_run"]:
        params["gpus_per_node"] = s["gpus_per_run"]
    if s.get("partition"):
        params["slurm_partition"] = s["partition"]
    if s.get("mem_gb"):
        params["mem_gb"] = s["mem_gb"]
    if s.get("python"):
        params["slurm_python"] = s["python"]
    ex.update_parameters(**params)
    return ex


# ----------------------------------------------------------------------------- progress


def _read_progress(folder: Path) -> dict | None:
    """A run's progress.json, or None while there is none (or it is being replaced)."""
    try:
        return json.loads((folder / "progress.json").read_text())
    except (OSError, ValueError):
        return None


def progress_text(run: dict, phases: dict, elapsed: float, rates: dict) -> str:
    """'distill 40/100, eval soft 0/300 | 32 s elapsed, ~48 s left' for one run."""
    parts = [f"{ph} {s}/{t}" for ph, (s, t) in phases.items()]
    done = 0.0
    for ph, (s, _t) in phases.items():
        if ph == "distill":
            done += s * rates["step"].get(run["algorithm"], rates["step_default"])
        else:
            done += s * (run["eval_models"] if ph.startswith("eval") else 1) * rates["model_step"]
    total = estimate(run, rates)
    left = elapsed * max(0.0, total - done) / done if done > 0 else total
    return f"{', '.join(parts) or 'starting'} | {fmt_seconds(elapsed)} elapsed, ~{fmt_seconds(left)} left"


class Board:
    """The main job's view of the runs: counts per state, one progress line per run, failures with logs."""

    def __init__(self, runs: Sequence[dict], root: Path, rates: dict, stream: Any = None) -> None:
        self.runs = {r["folder"]: r for r in runs}
        self.root, self.rates = root, rates
        self.state = {f: ("cached" if r["cached"] else "queued") for f, r in self.runs.items()}
        self.started: dict[str, float] = {}
        self.failures: dict[str, str] = {}
        self.stream = stream or sys.stdout
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.last_beat = time.time()
        self.width = 0

    def counts(self) -> str:
        """'12 planned, 3 cached, 5 queued, 2 running, 1 done, 1 failed'."""
        c = {k: sum(v == k for v in self.state.values()) for k in ("cached", "queued", "running", "done", "failed")}
        return f"{len(self.runs)} planned, " + ", ".join(f"{v} {k}" for k, v in c.items())

    def _line(self, folder: str, status: str) -> str:
        run = self.runs[folder]
        prog = _read_progress(self.root / folder) or {}
        elapsed = time.time() - self.started.get(folder, time.time())
        return f"run_all: [{status}] {run_label(run)}: {progress_text(run, prog.get('phases', {}), elapsed, self.rates)}"

    def _print(self, text: str, final: bool) -> None:
        if self.tty:
            pad = max(0, self.width - len(text))
            self.stream.write("\r" + text + " " * pad + ("\n" if final else ""))
            self.width = 0 if final else len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def start(self, folder: str) -> None:
        """A run's job started (or was submitted and is running)."""
        self.state[folder] = "running"
        self.started.setdefault(folder, time.time())

    def tick(self) -> None:
        """Refresh: on a terminal, one line for the running runs; elsewhere a line a minute."""
        running = [f for f, s in self.state.items() if s == "running"]
        if not running:
            return
        if self.tty:
            self._print(" || ".join(self._line(f, "running")[len("run_all: "):] for f in running)[:400], final=False)
        elif time.time() - self.last_beat >= 60:
            self.last_beat = time.time()
            for f in running:
                self._print(self._line(f, "running"), final=True)

    def finish(self, folder: str, ok: bool, log: str | None = None, error: str | None = None,
               job_id: str | None = None) -> None:
        """A run ended: one line for it, and job.json in its folder."""
        self.state[folder] = "done" if ok else "failed"
        line = self._line(folder, "done" if ok else "FAILED")
        if not ok:
            self.failures[folder] = f"{error or 'failed'} (log: {log})"
            line += f" | {error} | log: {log}"
        self._print(f"{line} | {self.counts()}", final=True)
        info = {"state": "done" if ok else "failed", "log": log, "job_id": job_id, "finished": time.time()}
        if error:
            info["error"] = error
        atomic_write_json(self.root / folder / "job.json", info)

    def summary(self) -> str:
        """The closing lines: the counts, then each failure with its log."""
        lines = [f"run_all: runs: {self.counts()}"]
        lines += [f"run_all: FAILED {run_label(self.runs[f])}: {why}" for f, why in self.failures.items()]
        return "\n".join(lines)


def error_line(log: str | os.PathLike | None, fallback: str = "") -> str:
    """The last line of a job's log that names an error, else its last non-empty line, else fallback."""
    try:
        lines = [ln.strip() for ln in Path(log).read_text(errors="replace").splitlines() if ln.strip()] if log else []
    except OSError:
        lines = []
    named = [ln for ln in lines if "Error" in ln or "error:" in ln or "Exception" in ln]
    return (named or lines or [fallback])[-1][:300]


# ----------------------------------------------------------------------------- executors


def execute(plan: dict, executor: str, jobs: int, notebooks_dir: str | os.PathLike, data_root: str | None,
            device: str = "auto", force: bool = False, slurm: dict | None = None, poll_s: float = 1.0,
            stream: Any = None) -> Board:
    """Compute every run of the plan that is not cached (all with force); returns the board with the outcome."""
    from .plan import rates_for

    if executor not in EXECUTORS:
        raise PoddError(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    root = Path(notebooks_dir).resolve()
    runs = [{**r, "out_dir": plan["out_dir"], "cached": r["cached"] and not force} for r in plan["runs"]]
    board = Board(runs, root, rates_for(root / plan["out_dir"], plan["profile"]), stream)
    todo = [r for r in runs if not r["cached"]]
    if executor == "local":
        _execute_local(board, todo, str(root), data_root, device, force)
    else:
        log_dir = root / plan["out_dir"] / "jobs"
        ex = make_executor(executor, log_dir, slurm)
        _execute_submitit(board, ex, todo, str(root), data_root, device, force,
                          jobs if executor == "submitit-local" else len(todo), poll_s)
    return board


def _execute_local(board: Board, todo: list[dict], root: str, data_root: str | None, device: str, force: bool) -> None:
    """One run after another in this process; a failure is recorded and the next run starts."""
    import traceback

    cwd = os.getcwd()
    log_dir = Path(root) / todo[0]["out_dir"] / "jobs" if todo else None
    for run in todo:
        board.start(run["folder"])
        progress = ProgressFile(Path(root) / run["folder"])

        def report(phase: str, step: int, total: int, progress: ProgressFile = progress) -> None:
            progress(phase, step, total)
            board.tick()

        try:
            compute_run(run, root, data_root, device, force, report)
            board.finish(run["folder"], True, job_id=f"local-{os.getpid()}")
        except Exception as exc:  # one failed run must not stop the others
            log = log_dir / f"{Path(run['folder']).name}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(traceback.format_exc())
            board.finish(run["folder"], False, str(log), f"{type(exc).__name__}: {exc}"[:300])
        finally:
            os.chdir(cwd)


def waits_for(run: dict, folders: Iterable[str]) -> bool:
    """Whether run lies inside the folder of a run still to compute: an evaluation on another architecture
    (<set>/arch/<name>) starts only once its set is there, or two jobs would compute the set at once."""
    inside = Path(run["folder"]).parents
    return any(Path(f) in inside for f in folders)


def _execute_submitit(board: Board, ex: Any, todo: list[dict], root: str, data_root: str | None, device: str,
                      force: bool, jobs: int, poll_s: float) -> None:
    """Submit the runs (at most `jobs` in flight, none before the run it lies in), follow them, record each outcome."""
    job = RunJob()
    pending, active = list(todo), {}
    while pending or active:
        batch = []
        busy = set(active) | {r["folder"] for r in pending}
        for run in [r for r in pending if not waits_for(r, busy)]:
            if len(active) + len(batch) >= max(1, jobs):
                break
            pending.remove(run)
            batch.append(run)
        if batch:
            with ex.batch():
                handles = [ex.submit(job, run, root, data_root, device, force) for run in batch]
            for run, h in zip(batch, handles):
                active[run["folder"]] = h
                board.start(run["folder"])
        time.sleep(poll_s)
        board.tick()
        for folder, h in list(active.items()):
            if not h.done():
                continue
            del active[folder]
            log = str(h.paths.stderr)
            try:
                h.result()
                board.finish(folder, True, log, job_id=str(h.job_id))
            except Exception as exc:  # submitit raises the job's error, or FailedJobError with the log's tail
                board.finish(folder, False, log, error_line(log, f"{type(exc).__name__}: {exc}"),
                             job_id=str(h.job_id))
