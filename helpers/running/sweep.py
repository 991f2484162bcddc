"""Sweeps: a grid of notebook parameters, one papermill run per point, all results in one table.

    from helpers.running.sweep import plan, submit
    jobs = plan("notebooks/00_quickstart.ipynb", {"seq_len": [512, 1024], "bit_widths": [[4], [3]]},
                profile="paper", folder="runs/rtn-context")
    submitted = submit(jobs, cluster="slurm", folder="runs/rtn-context",
                       timeout_min=120, gpus_per_node=1, slurm_partition="gpu")
    [job.result() for job in submitted]       # waits; the results are in runs/rtn-context/results.jsonl

    python -m helpers.running.sweep notebooks/00_quickstart.ipynb --profile tiny --grid seq_len=32,64 \
        --grid 'bit_widths=[[8], [4]]' --folder runs/demo --cluster local

Each job runs the notebook with the profile's parameters (helpers.running.reproduce.PROFILES), then the
grid point's. A notebook that declares `results_path` writes to the sweep's shared
`<folder>/results.jsonl` (one JSON line per measurement, appended, so jobs can share it on a shared
file system); one that declares `output_dir` gets `<folder>/figures/<job>/`. Executed notebooks go to
`<folder>/notebooks/<name>-<job>.ipynb`. Clusters are submitit's: "slurm" for real use, "local"
(one subprocess per job, this machine) and "debug" (in this process) for trying a sweep out;
`cluster=None` runs the jobs one after another without submitit.
"""
from __future__ import annotations

import argparse
import ast
import itertools
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .reproduce import execute, notebook_defaults, profile_parameters


def expand_grid(grid: dict[str, list]) -> list[dict]:
    """Every combination of the grid's values, in order: {"a": [1, 2], "b": [3]} -> [{a:1,b:3}, {a:2,b:3}]."""
    for name, values in grid.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"grid[{name!r}] = {values!r}; expected a non-empty list of values to try "
                             f"(write [{values!r}] for a single value).")
    names = list(grid)
    return [dict(zip(names, point)) for point in itertools.product(*(grid[n] for n in names))]


@dataclass(frozen=True)
class NotebookJob:
    """One papermill run of a notebook with given parameters (picklable, so submitit can ship it)."""
    notebook: str
    parameters: dict
    output: str
    cwd: str
    name: str = "job"

    def __call__(self) -> dict:
        started = time.perf_counter()
        execute(Path(self.notebook), Path(self.output), self.parameters, Path(self.cwd), profile="sweep")
        return {"job": self.name, "output": self.output, "parameters": self.parameters,
                "seconds": round(time.perf_counter() - started, 1)}


def plan(notebook: str | Path, grid: dict[str, list], *, profile: str = "cpu", folder: str | Path = "runs/sweep",
         base: dict | None = None) -> list[NotebookJob]:
    """The jobs of a sweep: profile parameters, then `base`, then each grid point."""
    notebook = Path(notebook).resolve()
    folder = Path(folder).resolve()
    declared = notebook_defaults(notebook)
    unknown = sorted(set(grid) - set(declared))
    if unknown:
        raise ValueError(f"grid parameters {unknown} are not in {notebook.name}'s parameters cell "
                         f"({sorted(declared)}); a sweep can only vary declared parameters.")
    common = {**profile_parameters(notebook, profile), **(base or {})}
    if "results_path" in declared:
        common["results_path"] = str(folder / "results.jsonl")
    jobs = []
    for index, point in enumerate(expand_grid(grid)):
        name = f"{index:03d}"
        parameters = {**common, **point}
        if "output_dir" in declared:
            parameters["output_dir"] = str(folder / "figures" / name)
        jobs.append(NotebookJob(str(notebook), parameters, str(folder / "notebooks" / f"{notebook.stem}-{name}.ipynb"),
                                str(folder / "notebooks"), name))
    return jobs


def _run(job: NotebookJob) -> dict:
    return job()


def submit(jobs: list[NotebookJob], *, cluster: str | None = "slurm", folder: str | Path = "runs/sweep",
           **executor_parameters):
    """Submit the jobs through submitit (cluster "slurm", "local" or "debug"), or run them here (None).

    `executor_parameters` go to `AutoExecutor.update_parameters` (timeout_min, gpus_per_node,
    slurm_partition, slurm_array_parallelism, ...). Returns submitit jobs (`.result()` waits), or
    with cluster=None the jobs' result dicts.
    """
    if cluster is None:
        return [job() for job in jobs]
    import submitit

    executor = submitit.AutoExecutor(folder=Path(folder) / "submitit" / "%j", cluster=cluster)
    executor.update_parameters(**{"timeout_min": 60, "name": "notebook-sweep", **executor_parameters})
    return executor.map_array(_run, jobs)


# --------------------------------------------------------------------------- command line
def parse_grid(items: list[str]) -> dict[str, list]:
    """`name=v1,v2` (comma-separated literals) or `name=[v1, v2]` (a Python list of values)."""
    grid = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--grid {item!r}; expected name=v1,v2 or name=[v1, v2].")
        text = text.strip()
        raw = ast.literal_eval(text) if text.startswith("[") else [_literal(v) for v in text.split(",")]
        grid[name.strip()] = list(raw)
    return grid


def _literal(text: str):
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.running.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("notebook", help="the notebook to run for every grid point")
    parser.add_argument("--grid", action="append", default=[], metavar="NAME=VALUES",
                        help="a parameter and its values: seq_len=512,1024 or 'bit_widths=[[4], [3]]'; repeatable")
    parser.add_argument("--profile", default="cpu", help="base parameters: tiny | cpu | paper")
    parser.add_argument("--folder", default="runs/sweep", help="results.jsonl, executed notebooks, figures, logs")
    parser.add_argument("--cluster", default="slurm", help="slurm | local | debug | none (run here, one by one)")
    parser.add_argument("--timeout-min", type=int, default=60, help="time limit of each job")
    parser.add_argument("--no-wait", action="store_true", help="submit and return (slurm) instead of waiting")
    args = parser.parse_args(argv)
    try:
        jobs = plan(args.notebook, parse_grid(args.grid), profile=args.profile, folder=args.folder)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cluster = None if args.cluster == "none" else args.cluster
    print(f"sweep: {len(jobs)} job(s) of {Path(args.notebook).name} on {args.cluster}, folder {args.folder}")
    started = time.perf_counter()
    submitted = [None] * len(jobs) if cluster is None else submit(
        jobs, cluster=cluster, folder=args.folder, timeout_min=args.timeout_min)
    if cluster is not None and args.no_wait:
        print("submitted:", ", ".join(str(job.job_id) for job in submitted))
        return 0
    failures = 0
    for job, handle in zip(jobs, submitted):
        try:
            result = job() if handle is None else handle.result()
            print(f"  {job.name} {job.parameters}: done in {result['seconds']} s")
        except Exception as err:  # noqa: BLE001 - report each failed job, go on
            failures += 1
            print(f"  {job.name} {job.parameters}: FAILED: {str(err).strip().splitlines()[-1:]}")
    print(f"sweep: {len(jobs) - failures} done, {failures} failed in {time.perf_counter() - started:.0f} s; "
          f"results in {Path(args.folder) / 'results.jsonl'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
