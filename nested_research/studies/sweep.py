"""Run a W&B sweep definition locally, without a W&B server.

``python -m nested_research.studies.sweep sweeps/X.yaml --count N`` proposes trials
with the open-source W&B sweep engine (the ``sweeps`` package: grid, random,
bayes; hyperband early termination), runs each as the sweep file's
``command`` (``${args_no_hyphens}`` becomes Hydra overrides), groups the
offline W&B runs under the sweep's name, and prints a leaderboard.

- Each trial writes into ``<out>/<trial>/`` (Hydra's run dir); the trainer's
  ``progress.jsonl`` feeds hyperband, which may stop a trial early (state
  ``stopped``).  A trial that exits non-zero is recorded as ``failed`` and the
  sweep goes on.
- ``<out>/sweep.json`` records every trial; running the same command again
  resumes the sweep (finished trials are not rerun; ``--count`` counts new
  trials).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

import yaml

from nested_research.core.files import replace_file

STATES = ("finished", "failed", "stopped")


@dataclass
class Trial:
    name: str
    params: dict
    state: str = "pending"
    metric: float | None = None
    history: list = field(default_factory=list)
    returncode: int | None = None
    wall_time: float = 0.0
    run_dir: str = ""


def load_sweep(path: str) -> dict:
    """Read and schema-check a sweep file; raise ``ValueError`` listing violations."""
    import sweeps

    with open(path) as fh:
        config = yaml.safe_load(fh)
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a sweep file must be a YAML mapping")
    problems = sweeps.schema_violations_from_proposed_config(config)
    if problems:
        raise ValueError(f"{path}: invalid sweep definition: " + "; ".join(problems))
    for key in ("metric", "command"):
        if key not in config:
            raise ValueError(f"{path}: the sweep needs a `{key}` entry")
    return config


def hydra_overrides(params: dict) -> list[str]:
    """``{"memory": "fixed", "optimizer.learning_rate": 0.01}`` -> ``["memory=fixed", ...]``."""
    out = []
    for key, value in params.items():
        if isinstance(value, bool):
            value = str(value).lower()
        elif value is None:
            value = "null"
        out.append(f"{key}={value}")
    return out


def expand_command(config: dict, overrides: list[str]) -> list[str]:
    """The sweep file's ``command`` with W&B's macros filled in for a local run."""
    program = config.get("program", "nested_research.train")
    argv = []
    for token in config["command"]:
        if token == "${env}":
            continue
        if token == "${interpreter}":
            argv.append(sys.executable)
        elif token == "${program}":
            argv.append(program)
        elif token == "${args_no_hyphens}":
            argv.extend(overrides)
        elif token in ("${args}", "${args_no_boolean_flags}", "${args_json}",
                       "${args_json_file}"):
            raise ValueError(f"command macro {token} is not supported; use ${{args_no_hyphens}}")
        else:
            argv.append(token)
    return argv


def _sweep_run(trial: Trial, metric: str, running: bool = False):
    import sweeps

    state = {"finished": sweeps.RunState.finished, "failed": sweeps.RunState.failed,
             "stopped": sweeps.RunState.killed}.get(trial.state, sweeps.RunState.running)
    summary = {metric: trial.metric} if trial.metric is not None else {}
    # By alias: under pydantic 2 the engine's models no longer accept the field names.
    return sweeps.SweepRun(name=trial.name, state=sweeps.RunState.running if running else state,
                           config={k: {"value": v} for k, v in trial.params.items()},
                           summaryMetrics=summary, sampledHistory=list(trial.history))


def _read_progress(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


class LocalSweep:
    def __init__(self, config: dict, out_dir: str, extra_overrides=(), poll: float = 0.5,
                 name: str | None = None):
        self.config = config
        self.out_dir = out_dir
        self.extra = list(extra_overrides)
        self.poll = poll
        self.name = name or config.get("name") or "sweep"
        self.metric = config["metric"]["name"]
        self.goal = config["metric"].get("goal", "minimize")
        self.record = os.path.join(out_dir, "sweep.json")
        self.trials: list[Trial] = []
        if os.path.exists(self.record):
            with open(self.record) as fh:
                self.trials = [Trial(**t) for t in json.load(fh)["trials"]]
            # A trial cut off by a crash of the runner itself is proposed again.
            self.trials = [t for t in self.trials if t.state in STATES]

    def save(self) -> None:
        os.makedirs(self.out_dir, exist_ok=True)
        replace_file(self.record, json.dumps(
            {"name": self.name, "metric": self.metric, "goal": self.goal,
             "config": self.config, "trials": [asdict(t) for t in self.trials]},
            indent=2, default=str))

    def propose(self) -> Trial | None:
        import sweeps

        runs = [_sweep_run(t, self.metric) for t in self.trials]
        suggestion = sweeps.next_run(self.config, runs, validate=False)
        if suggestion is None:
            return None
        params = {k: v["value"] for k, v in suggestion.config.items()}
        return Trial(name=f"trial_{len(self.trials):03d}", params=params)

    def _should_stop(self, trial: Trial) -> bool:
        import sweeps

        if "early_terminate" not in self.config or not trial.history:
            return False
        runs = [_sweep_run(t, self.metric) for t in self.trials if t is not trial] + \
            [_sweep_run(trial, self.metric, running=True)]
        stopped = sweeps.stop_runs(self.config, runs, validate=False)
        return any(r.name == trial.name for r in stopped)

    def run_trial(self, trial: Trial) -> Trial:
        trial.run_dir = os.path.join(self.out_dir, trial.name)
        overrides = hydra_overrides(trial.params) + self.extra + [f"hydra.run.dir={trial.run_dir}"]
        argv = expand_command(self.config, overrides)
        # The tracker groups and tags W&B runs by the sweep id (offline runs group locally).
        env = dict(os.environ, WANDB_SWEEP_ID=self.name, WANDB_RUN_GROUP=self.name,
                   WANDB_MODE=os.environ.get("WANDB_MODE", "offline"))
        env.pop("WANDB_SERVICE", None)  # each trial owns its W&B service (a killed one frees it)
        progress = os.path.join(trial.run_dir, "progress.jsonl")
        start = time.perf_counter()
        print(f"[{self.name}] {trial.name}: {' '.join(shlex.quote(a) for a in overrides[:-1])}",
              flush=True)
        log_path = os.path.join(self.out_dir, f"{trial.name}.log")
        os.makedirs(self.out_dir, exist_ok=True)
        with open(log_path, "w") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
            seen = 0
            while proc.poll() is None:
                time.sleep(self.poll)
                rows = _read_progress(progress)
                if len(rows) > seen:
                    seen = len(rows)
                    trial.history = rows
                    if self._should_stop(trial):
                        proc.terminate()
                        proc.wait(timeout=60)
                        trial.state = "stopped"
                        break
        trial.history = _read_progress(progress)
        trial.returncode = proc.returncode
        trial.wall_time = time.perf_counter() - start
        results = os.path.join(trial.run_dir, "results.json")
        if trial.state != "stopped":
            if proc.returncode == 0 and os.path.exists(results):
                with open(results) as fh:
                    trial.metric = json.load(fh)["metrics"].get(self.metric)
                trial.state = "finished"
            else:
                trial.state = "failed"
        elif trial.history:
            values = [r[self.metric] for r in trial.history if self.metric in r]
            trial.metric = values[-1] if values else None
        print(f"[{self.name}] {trial.name}: {trial.state} {self.metric}={trial.metric}",
              flush=True)
        return trial

    def run(self, count: int) -> list[Trial]:
        for _ in range(count):
            trial = self.propose()
            if trial is None:
                print(f"[{self.name}] search space exhausted")
                break
            self.trials.append(trial)
            self.run_trial(trial)
            self.save()
        self.save()
        return self.trials

    def leaderboard(self) -> str:
        done = [t for t in self.trials if t.metric is not None]
        reverse = self.goal == "maximize"
        done.sort(key=lambda t: t.metric, reverse=reverse)
        rest = [t for t in self.trials if t.metric is None]
        keys = sorted({k for t in self.trials for k in t.params})
        header = ["rank", "trial", "state", self.metric] + keys + ["seconds"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for rank, t in enumerate(done + rest, 1):
            metric = f"{t.metric:.4f}" if t.metric is not None else "-"
            row = [str(rank), t.name, t.state, metric] + \
                [str(t.params.get(k, "")) for k in keys] + [f"{t.wall_time:.0f}"]
            lines.append("| " + " | ".join(row) + " |")
        return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nested_research.studies.sweep",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_file")
    parser.add_argument("--count", type=int, default=10, help="new trials to run (default 10)")
    parser.add_argument("--out", default=None,
                        help="sweep directory (default outputs/sweeps/<sweep name>)")
    parser.add_argument("overrides", nargs="*",
                        help="extra Hydra overrides for every trial, e.g. trainer.epochs=3")
    args = parser.parse_intermixed_args(argv)
    if args.count < 1:
        parser.error(f"--count={args.count} must be >= 1")
    try:
        config = load_sweep(args.sweep_file)
    except (OSError, ValueError) as err:
        print(f"nested_research.studies.sweep: error: {err}", file=sys.stderr)
        return 2
    name = config.get("name") or os.path.splitext(os.path.basename(args.sweep_file))[0]
    out = args.out or os.path.join(os.environ.get("NESTED_RESEARCH_OUTPUT_DIR", "outputs"),
                                   "sweeps", name)
    sweep = LocalSweep(config, out, args.overrides, name=name)
    sweep.run(args.count)
    board = sweep.leaderboard()
    with open(os.path.join(out, "leaderboard.md"), "w") as fh:
        fh.write(board + "\n")
    print(board)
    print(f"sweep record: {sweep.record}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
