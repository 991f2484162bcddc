"""helpers.running.reproduce on small synthetic notebooks: parameters per profile, failures, skipping, SUMMARY.md."""
import io
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from helpers.running import reproduce as rp

METADATA = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"}}


def write_notebook(path: Path, *cells: str, parameters: str = 'profile = "cpu"\nvalue = 1') -> Path:
    nb = new_notebook(metadata=METADATA, cells=[
        new_markdown_cell("# a test notebook"),
        new_code_cell(parameters, metadata={"tags": ["parameters"]}),
        *(new_code_cell(source) for source in cells)])
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


WRITES_RESULTS = '''
from pathlib import Path
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from helpers.plotting import save_figure
Path(results_path).parent.mkdir(parents=True, exist_ok=True)
Path(results_path).write_text('{"value": %d}\\n' % value)
fig, ax = plt.subplots()
ax.plot([0, 1], [0, value])
save_figure(fig, name, "../figures", pd.DataFrame({"x": [0, 1], "y": [0, value]}), finding=f"value is {value}.",
            protocol={"profile": profile})
'''


def test_profile_parameters_inject_only_what_differs(tmp_path, monkeypatch):
    notebook = write_notebook(tmp_path / "07_demo.ipynb", parameters='profile = "cpu"\nmodel = "smollm2-135m"\nseq_len = 512')
    monkeypatch.setitem(rp.PROFILES, "07_demo", {"tiny": {"model": "tiny-llama", "seq_len": 512}})
    assert rp.profile_parameters(notebook, "tiny") == {"model": "tiny-llama", "profile": "tiny"}
    assert rp.profile_parameters(notebook, "cpu") == {}          # cpu = the notebook's own defaults
    assert rp.profile_parameters(notebook, "paper") == {"profile": "paper"}
    unknown = write_notebook(tmp_path / "08_other.ipynb", parameters="x = 1")
    assert rp.profile_parameters(unknown, "tiny") == {}           # declares no `profile`: nothing injected
    with pytest.raises(ValueError, match="profile="):
        rp.profile_parameters(notebook, "huge")


def test_find_notebooks_takes_numbered_ones_and_only(tmp_path):
    for name in ("00_a.ipynb", "01_b.ipynb", "scratch.ipynb", "1_c.ipynb"):
        write_notebook(tmp_path / name)
    assert [p.name for p in rp.find_notebooks(tmp_path)] == ["00_a.ipynb", "01_b.ipynb"]
    assert [p.name for p in rp.find_notebooks(tmp_path, ["01"])] == ["01_b.ipynb"]
    with pytest.raises(ValueError, match="matches no notebook"):
        rp.find_notebooks(tmp_path, ["09"])


def test_inplace_is_for_the_cpu_profile_only(tmp_path):
    with pytest.raises(ValueError, match="--inplace"):
        rp.reproduce("tiny", inplace=True, notebooks_dir=tmp_path, repo_root=tmp_path)


def test_scrub_paths_removes_the_repository_and_home(tmp_path):
    nb = new_notebook(cells=[new_code_cell("x", outputs=[nbformat.v4.new_output(
        "stream", name="stderr", text=f"{tmp_path}/.venv/lib/x.py:1: Warning\n{Path.home()}/.cache/y\n")])])
    nb.metadata["papermill"] = {"input_path": str(tmp_path / "notebooks" / "00_a.ipynb")}
    clean = rp.scrub_paths(nb, tmp_path)
    text = nbformat.writes(clean)
    assert str(tmp_path) not in text and str(Path.home()) + "/" not in text
    assert clean.metadata.papermill.input_path == "notebooks/00_a.ipynb"


def test_reproduce_runs_all_reports_failures_skips_up_to_date(tmp_path):
    notebooks = tmp_path / "notebooks"
    params = 'profile = "cpu"\nvalue = 1\nname = "fig_{}"\nresults_path = "../results/{}.jsonl"'
    write_notebook(notebooks / "00_first.ipynb", WRITES_RESULTS, parameters=params.format("a", "a"))
    write_notebook(notebooks / "01_broken.ipynb", "raise RuntimeError('this notebook is broken')")
    write_notebook(notebooks / "02_last.ipynb", WRITES_RESULTS, parameters=params.format("b", "b"))
    log = []
    run = dict(notebooks_dir=notebooks, repo_root=tmp_path, output_dir=tmp_path / "build" / "tiny", log=log.append)

    outcomes = rp.reproduce("tiny", **run)
    assert [(o.notebook, o.status) for o in outcomes] == [
        ("00_first", "ran"), ("01_broken", "failed"), ("02_last", "ran")]
    assert "this notebook is broken" in outcomes[1].error
    assert any("FAILED 01_broken" in line for line in log)
    build = tmp_path / "build" / "tiny"
    executed = nbformat.read(str(build / "notebooks" / "00_first.ipynb"), as_version=4)
    assert executed.metadata.reproduce["profile"] == "tiny"
    assert str(tmp_path) not in nbformat.writes(executed)
    # tiny runs write under the build folder, never into the repository's figures/ or results/
    assert (build / "results" / "a.jsonl").exists() and not (tmp_path / "figures").exists()
    summary = (build / "figures" / "SUMMARY.md").read_text()
    assert "[fig_a.png](fig_a.png)" in summary and "value is 1." in summary and "profile=tiny" in summary

    again = rp.reproduce("tiny", **run)
    assert [o.status for o in again] == ["skipped", "failed", "skipped"]

    (build / "results" / "b.jsonl").unlink()                 # results gone: run again
    write_notebook(notebooks / "00_first.ipynb", WRITES_RESULTS + "\nprint('changed')",
                   parameters=params.format("a", "a"))       # code changed: run again
    assert [o.status for o in rp.reproduce("tiny", only=["00", "02"], **run)] == ["ran", "ran"]
    assert [o.status for o in rp.reproduce("tiny", only=["00"], redo=True, **run)] == ["ran"]
    stream = io.StringIO()                                   # a background run's log shows what cells print
    rp.reproduce("tiny", only=["00"], redo=True, stream=stream, **run)
    assert "changed" in stream.getvalue()


def test_inplace_refreshes_the_source_notebook_and_figures(tmp_path):
    notebooks = tmp_path / "notebooks"
    source = write_notebook(notebooks / "00_first.ipynb", WRITES_RESULTS,
                            parameters='profile = "cpu"\nvalue = 2\nname = "fig"\nresults_path = "../results/a.jsonl"')
    outcomes = rp.reproduce("cpu", inplace=True, notebooks_dir=notebooks, repo_root=tmp_path,
                            output_dir=tmp_path / "build" / "cpu", log=lambda _: None)
    assert [o.status for o in outcomes] == ["ran"]
    refreshed = nbformat.read(str(source), as_version=4)
    assert all(c.get("execution_count") for c in refreshed.cells if c.cell_type == "code")
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in refreshed.cells)
    assert {p.name for p in (tmp_path / "figures").iterdir()} == {"fig.png", "fig.csv", "fig.md", "SUMMARY.md"}


def test_long_profile_runs_only_notebooks_with_an_entry_and_keeps_the_cpu_notebook(tmp_path, monkeypatch):
    notebooks = tmp_path / "notebooks"
    source = write_notebook(notebooks / "00_first.ipynb", WRITES_RESULTS,
                            parameters='profile = "cpu"\nvalue = 2\nname = "fig"\nresults_path = "../results/a.jsonl"')
    write_notebook(notebooks / "01_other.ipynb", WRITES_RESULTS)
    before = source.read_text()
    with pytest.raises(ValueError, match="no selected notebook has a `long` profile entry"):
        rp.reproduce("long", notebooks_dir=notebooks, repo_root=tmp_path, log=lambda _: None)
    monkeypatch.setitem(rp.PROFILES, "00_first", {"long": {"value": 3, "name": "fig_long"}})
    outcomes = rp.reproduce("long", inplace=True, notebooks_dir=notebooks, repo_root=tmp_path,
                            output_dir=tmp_path / "build" / "long", log=lambda _: None)
    assert [(o.notebook, o.status) for o in outcomes] == [("00_first", "ran")]
    assert source.read_text() == before                      # the committed notebook keeps its cpu run
    run = nbformat.read(str(notebooks / "runs" / "00_first.long.ipynb"), as_version=4)
    assert run.metadata.reproduce["profile"] == "long" and run.metadata.reproduce["parameters"]["value"] == 3
    assert (tmp_path / "figures" / "fig_long.png").exists()
    # a third run (long32k) is a run of its own: its own copy, the long run's left alone
    monkeypatch.setitem(rp.PROFILES, "00_first", {"long": {"value": 3, "name": "fig_long"},
                                                  "long32k": {"value": 4, "name": "fig_32k"}})
    outcomes = rp.reproduce("long32k", inplace=True, notebooks_dir=notebooks, repo_root=tmp_path,
                            output_dir=tmp_path / "build" / "long32k", log=lambda _: None)
    assert [(o.notebook, o.status) for o in outcomes] == [("00_first", "ran")]
    third = nbformat.read(str(notebooks / "runs" / "00_first.long32k.ipynb"), as_version=4)
    assert third.metadata.reproduce["parameters"]["value"] == 4 and (tmp_path / "figures" / "fig_32k.png").exists()
    assert nbformat.read(str(notebooks / "runs" / "00_first.long.ipynb"), as_version=4
                         ).metadata.reproduce["parameters"]["value"] == 3
    with pytest.raises(ValueError, match="these have one: 00"):
        rp.reproduce("long32k", notebooks_dir=notebooks, repo_root=tmp_path, only=["01"], log=lambda _: None)


def test_summary_lists_figures_without_findings(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "b.png").write_bytes(b"")
    (tmp_path / "b.md").write_text("B grows.\n")
    text = rp.write_summary(tmp_path, "cpu").read_text()
    assert "- [a.png](a.png): *No finding recorded" in text
    assert "- [b.png](b.png): B grows." in text


def test_summary_carries_the_verdict_tables(tmp_path):
    import pandas as pd

    from helpers.claims.board import record_verdicts

    (tmp_path / "a.png").write_bytes(b"")
    flat = pd.DataFrame({"label": "wanda 50%", "window": range(8), "early_bin_kl": 0.2, "late_bin_kl": 0.2,
                         "ppl_ratio": 1.3, "family": "pruning", "method": "wanda", "sparsity": 0.5})
    record_verdicts({"context_growth": flat}, ("LC2",), "01_verdicts", tmp_path, tmp_path / "committed", title="01 run")
    text = rp.write_summary(tmp_path, "cpu").read_text()
    assert "## Verdicts" in text and "### 01 run" in text and "| LC2 | pruning (magnitude, Wanda) stays flat" in text
    assert "**reproduced**" in text and "01_verdicts" not in text.split("## Verdicts")[0]  # not listed as a figure
    record_verdicts({}, ("LC2",), "01_verdicts_gemma3", tmp_path, tmp_path / "committed", title="second run")
    assert "### second run" in rp.write_summary(tmp_path, "cpu").read_text()


def test_notebook_defaults_agree_with_papermill_on_every_committed_notebook():
    import papermill

    for notebook in rp.find_notebooks(rp.REPO_ROOT / "notebooks"):
        ours = rp.notebook_defaults(notebook)
        theirs = papermill.inspect_notebook(str(notebook))
        assert set(ours) == set(theirs), notebook.name
        for name, parameter in theirs.items():
            assert ours[name] == eval(parameter["default"]), (notebook.name, name)  # literals only


def test_parse_overrides_takes_literals_and_bare_strings():
    assert rp.parse_overrides(["device=cuda", "max_windows=2", "seeds=[0, 1]", "dtype='float16'", "x=None"]) == {
        "device": "cuda", "max_windows": 2, "seeds": [0, 1], "dtype": "float16", "x": None}
    for bad in ("device", "=cuda", "two words=1"):
        with pytest.raises(ValueError, match="NAME=VALUE"):
            rp.parse_overrides([bad])


def test_in_process_run_injects_overrides_and_names_the_failing_cell(tmp_path, monkeypatch):
    source = tmp_path / "notebooks"
    write_notebook(source / "00_ok.ipynb", WRITES_RESULTS, parameters=(
        'profile = "cpu"\nvalue = 1\nname = "ok"\nresults_path = "../results/ok.jsonl"\ndevice = "cpu"'))
    write_notebook(source / "01_bad.ipynb", "assert device == 'cpu', device", parameters='profile = "cpu"\ndevice = "cpu"')
    write_notebook(source / "02_nodevice.ipynb", "print(value)")
    monkeypatch.setitem(rp.PROFILES, "00_ok", {"tiny": {"value": 3}})
    out = tmp_path / "out"
    lines = []
    outcomes = rp.reproduce("tiny", notebooks_dir=source, output_dir=out, overrides={"device": "meta"}, kernel=False,
                            log=lines.append)
    by_name = {o.notebook: o for o in outcomes}
    assert by_name["00_ok"].status == "ran" and by_name["00_ok"].parameters == {
        "value": 3, "profile": "tiny", "device": "meta"}
    assert (out / "results" / "ok.jsonl").read_text() == '{"value": 3}\n'   # ran with cwd = out/notebooks
    assert not (out / "notebooks" / "00_ok.ipynb").exists()                 # no executed copy without a kernel
    assert by_name["01_bad"].status == "failed" and "cell 2" in by_name["01_bad"].error
    assert "meta" in by_name["01_bad"].error
    assert by_name["02_nodevice"].status == "ran" and "device" not in by_name["02_nodevice"].parameters
    again = rp.reproduce("tiny", notebooks_dir=source, output_dir=out, kernel=False, log=lines.append)
    assert [o.status for o in again] == ["ran", "ran", "ran"]  # no override now; nothing skipped (no executed copy)
    with pytest.raises(ValueError, match="--inplace"):
        rp.reproduce("cpu", notebooks_dir=source, output_dir=out, inplace=True, kernel=False)


def test_from_committed_seeds_the_committed_run_and_skips_notebooks_without_one(tmp_path, capsys):
    from helpers.results import ResultsTable

    repo = tmp_path / "repo"
    source = repo / "notebooks"
    counts = ('from helpers.results import ResultsTable\nfrom helpers.experiments.core import recorded_only\n'
              'print("rows", len(ResultsTable(results_path).records()), "recorded only", recorded_only())')
    write_notebook(source / "01_kept.ipynb", counts,
                   parameters='profile = "cpu"\nrun_name = ""\nresults_path = "../results/kept.jsonl"')
    write_notebook(source / "02_other.ipynb", "raise SystemExit('would measure for hours')",
                   parameters='profile = "cpu"\nresults_path = "../results/other.jsonl"')
    frozen = ResultsTable(tmp_path / "made.jsonl")
    frozen.append(model="m", method="x", metric="kl", value=1.0, key="k", attempt="a")
    rows = rp.committed_rows(source / "01_kept.ipynb", {}, repo)
    frozen.freeze(rows)
    lines = []
    # rows but no verdict frames: a run still in progress, skipped unless resumed
    outcomes = rp.reproduce("tiny", notebooks_dir=source, output_dir=tmp_path / "out", repo_root=repo, kernel=False,
                            from_committed=True, log=lines.append)
    assert [o.status for o in outcomes] == ["skipped", "skipped"] and "still in progress" in "\n".join(lines)
    capsys.readouterr()
    resumed = rp.reproduce("tiny", notebooks_dir=source, output_dir=tmp_path / "out", repo_root=repo, kernel=False,
                           from_committed=True, resume=True, log=lines.append)
    assert [o.status for o in resumed] == ["ran", "skipped"]
    assert "recorded only False" in capsys.readouterr().out        # resuming measures what the run lacks
    (rows.parent / "context_growth.csv").write_text("label,window\nx,0\n")  # the finished run's verdict frame
    lines = []
    outcomes = rp.reproduce("tiny", notebooks_dir=source, output_dir=tmp_path / "out2", repo_root=repo, kernel=False,
                            from_committed=True, log=lines.append)
    assert [(o.notebook, o.status) for o in outcomes] == [("01_kept", "ran"), ("02_other", "skipped")]
    assert "rows 1 recorded only True" in capsys.readouterr().out and "1 rows seeded from 01_verdicts" in "\n".join(lines)
    from helpers.experiments.core import recorded_only
    assert not recorded_only()                                      # put back after the run
    assert rp.committed_rows(source / "01_kept.ipynb", {"run_name": "gemma3"}, repo).parent.name == "01_verdicts_gemma3"


def test_checkpoint_freezes_a_run_in_progress_that_a_fresh_checkout_resumes(tmp_path):
    import json

    from helpers.experiments.kick import seed_records
    from helpers.results import ResultsTable, read_gzip_lines

    repo = tmp_path / "repo"
    source = repo / "notebooks"
    write_notebook(source / "03_task.ipynb", "print(1)", parameters=(
        'profile = "cpu"\nrun_name = ""\nresults_path = "../results/t.jsonl"\nrecords_dir = "../results/t_records"'))
    notebook = source / "03_task.ipynb"
    with pytest.raises(ValueError, match="no results table"):
        rp.checkpoint(notebook, {}, source, repo)
    table = ResultsTable(repo / "results" / "t.jsonl")
    for label, attempt in (("dense", "a1"), ("wanda 30%", "a2")):
        table.append(model="m", method=label, label=label, metric="score", task="qa", value=0.5, key=label,
                     attempt=attempt)
    records = repo / "results" / "t_records" / "qa.jsonl"
    records.parent.mkdir(parents=True)
    lines = [{"label": "dense", "attempt": "a1", "index": 0, "question": "q?", "gold": ["x"], "prompt": "P q?"},
             {"label": "wanda 30%", "attempt": "a2", "index": 0, "question": "q?", "gold": ["x"], "prompt": "P q?"},
             {"label": "sparsegpt 30%", "attempt": "a3", "index": 0, "question": "q?", "gold": ["x"]}]  # no score row yet
    records.write_text("".join(json.dumps(line) + "\n" for line in lines))
    folder = rp.checkpoint(notebook, {}, source, repo, log=lambda text: None)
    assert folder == repo / "results" / "committed" / "03_verdicts" and rp.in_progress(folder / "rows.jsonl.gz")
    assert [r["label"] for r in read_gzip_lines(folder / "rows.jsonl.gz")] == ["dense", "wanda 30%"]
    frozen = list(read_gzip_lines(folder / "records" / "qa.jsonl.gz"))
    assert [r["label"] for r in frozen] == ["dense", "wanda 30%"]              # only answers behind a score row
    assert "prompt" not in frozen[0] and "question" not in frozen[1]           # lean: the example once
    fresh = tmp_path / "fresh" / "t_records"
    assert seed_records(folder / "records", fresh) == 2
    restored = [json.loads(line) for line in (fresh / "qa.jsonl").read_text().splitlines()]
    assert [r["question"] for r in restored] == ["q?", "q?"]
    assert rp.checkpoint_runs("cpu", only=["03"], inplace=True, notebooks_dir=source, repo_root=repo,
                              log=lambda text: None) == [folder]
    (folder / "task_scores.csv").write_text("label\nx\n")                   # the finished run's verdict frame
    with pytest.raises(ValueError, match="finished run"):
        rp.checkpoint(notebook, {}, source, repo)


def test_a_second_runs_prose_is_its_own_and_survives_a_re_run(tmp_path):
    def notebook(path, prose):
        nb = new_notebook(metadata=METADATA, cells=[new_markdown_cell("# title"), new_code_cell("x = 1"),
                                                    new_markdown_cell(prose), new_markdown_cell("## Another heading")])
        nbformat.write(nb, str(path))
        return path

    cpu_prose = rp.PROSE_HEADING + "\nThe cpu run's model: 0.123."
    executed = notebook(tmp_path / "executed.ipynb", cpu_prose)
    copy = tmp_path / "runs" / "nb.long.ipynb"
    assert rp.carry_prose(executed, copy) == 1                # no earlier copy: a note instead of the cpu prose
    cells = nbformat.read(str(executed), as_version=4).cells
    assert cells[2].source == rp.PROSE_PENDING and cells[3].source == "## Another heading"
    copy.parent.mkdir()
    long_prose = rp.PROSE_HEADING + " (this run)\nThe long run's model: 0.456."
    notebook(copy, long_prose)
    executed = notebook(tmp_path / "executed.ipynb", cpu_prose)  # a re-run of the long profile
    assert rp.carry_prose(executed, copy) == 1
    assert nbformat.read(str(executed), as_version=4).cells[2].source == long_prose
