"""helpers.running.sweep: grids expand into papermill jobs; the submitit path works with its local executor."""
import json
from pathlib import Path

import pytest

from helpers.running.sweep import expand_grid, parse_grid, plan, submit

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "notebooks" / "00_quickstart.ipynb"


def test_expand_grid_is_the_cartesian_product_in_order():
    assert expand_grid({"a": [1, 2], "b": ["x"]}) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]
    assert expand_grid({}) == [{}]
    with pytest.raises(ValueError, match="non-empty list"):
        expand_grid({"a": 3})


def test_parse_grid_reads_literals_and_lists():
    assert parse_grid(["seq_len=32,64", "bit_widths=[[8], [4]]", "model=tiny-llama"]) == {
        "seq_len": [32, 64], "bit_widths": [[8], [4]], "model": ["tiny-llama"]}


@pytest.mark.skipif(not QUICKSTART.exists(), reason="quickstart notebook not present")
def test_plan_points_every_job_at_one_results_table(tmp_path):
    jobs = plan(QUICKSTART, {"bit_widths": [[8], [4]]}, profile="tiny", folder=tmp_path)
    assert [j.parameters["bit_widths"] for j in jobs] == [[8], [4]]
    assert {j.parameters["results_path"] for j in jobs} == {str(tmp_path / "results.jsonl")}
    assert len({j.parameters["output_dir"] for j in jobs}) == 2
    assert all(j.parameters["model"] == "tiny-llama" for j in jobs)
    with pytest.raises(ValueError, match="not in 00_quickstart.ipynb's parameters"):
        plan(QUICKSTART, {"sparsity": [0.5]}, profile="tiny", folder=tmp_path)


@pytest.mark.skipif(not QUICKSTART.exists(), reason="quickstart notebook not present")
def test_submitit_local_executor_runs_the_quickstart_tiny(tmp_path):
    jobs = plan(QUICKSTART, {"bit_widths": [[8], [3]]}, profile="tiny", folder=tmp_path,
                base={"seq_len": 32, "max_windows": 1, "position_buckets": 4})
    submitted = submit(jobs, cluster="local", folder=tmp_path, timeout_min=10)
    results = [job.result() for job in submitted]          # raises if a job failed
    assert [r["job"] for r in results] == ["000", "001"]
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    rtn_bits = {r["settings"]["bits"] for r in records if r["method"] == "rtn"}
    assert rtn_bits == {8, 3}
    assert len({r["run"] for r in records}) == 2            # two runs, one shared table
    for job in jobs:
        assert Path(job.output).exists()
        assert (Path(job.parameters["output_dir"]) / "00_quickstart_kl.png").exists()
