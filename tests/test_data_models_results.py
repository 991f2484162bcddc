import json
import subprocess
import sys

import pytest
import torch

from helpers.data import (CalibrationSettings, DATASETS, calibration_samples, check_calibration, data_dir,
                          evaluation_windows, load_dataset, token_windows)
from helpers.models import ByteTokenizer, OFFLINE_ALIASES, load_model
from helpers.results import ResultsTable, run_key

HAVE_DATA = (data_dir() / "wikitext2").is_dir()
needs_data = pytest.mark.skipif(not HAVE_DATA, reason="the shared data folder is not present")


def test_token_windows_are_non_overlapping_and_drop_the_tail():
    stream = torch.arange(25)
    windows = token_windows(stream, 8)
    assert windows.shape == (3, 8)
    assert torch.equal(windows.reshape(-1), torch.arange(24))
    assert token_windows(stream, 8, max_windows=2).shape == (2, 8)
    with pytest.raises(ValueError, match="seq_len=30"):
        token_windows(stream, 30)


@pytest.mark.parametrize("max_windows", [0, -1, 1.5])
def test_max_windows_below_one_is_refused_before_any_text_is_read(max_windows):
    with pytest.raises(ValueError, match=rf"max_windows={max_windows}; expected a whole number of windows >= 1"):
        token_windows(torch.arange(25), 8, max_windows=max_windows)
    with pytest.raises(ValueError, match=rf"max_windows={max_windows}"):  # not: the token file does not exist
        evaluation_windows(None, seq_len=8, max_windows=max_windows, token_file="no-such-file.pt")


@needs_data
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_registered_dataset_loads_locally(name):
    data = load_dataset(name)
    assert len(data) > 0


@needs_data
def test_local_datasets_have_the_documented_sizes():
    assert len(load_dataset("mmlu", split="dev")) == 285
    assert len(load_dataset("cnndm_stories")) == 90
    assert len(load_dataset("vicuna_bench")) == 80
    assert load_dataset("wikitext2").startswith(" \n = Robert Boulter = \n") or "Robert Boulter" in load_dataset("wikitext2")[:200]


def test_missing_dataset_names_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSION_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_dataset("wikitext2")
    with pytest.raises(ValueError, match="not known"):
        load_dataset("imagenet")


@needs_data
def test_calibration_is_seeded_and_shaped():
    tokenizer = ByteTokenizer()
    settings = CalibrationSettings(n_samples=4, seq_len=64, seed=3)
    first, again = calibration_samples(tokenizer, settings), calibration_samples(tokenizer, settings)
    assert first.shape == (4, 64) and torch.equal(first, again)
    other = calibration_samples(tokenizer, CalibrationSettings(n_samples=4, seq_len=64, seed=4))
    assert not torch.equal(first, other)
    wiki = calibration_samples(tokenizer, CalibrationSettings(dataset="wikitext2", n_samples=2, seq_len=32))
    assert wiki.shape == (2, 32)


def test_calibration_from_saved_tokens(tmp_path):
    saved = torch.randint(0, 100, (5, 20))
    torch.save(saved, tmp_path / "calib.pt")
    got = calibration_samples(None, CalibrationSettings(n_samples=3, seq_len=10, token_file=str(tmp_path / "calib.pt")))
    assert torch.equal(got, saved[:3, :10])
    with pytest.raises(ValueError, match="shape"):
        calibration_samples(None, CalibrationSettings(n_samples=9, seq_len=10, token_file=str(tmp_path / "calib.pt")))


def test_a_calibration_longer_than_the_context_or_the_data_is_refused_without_a_model(tmp_path, monkeypatch):
    (tmp_path / "wikitext2").mkdir()
    (tmp_path / "wikitext2" / "wikitext-2-raw-test.txt").write_text("x" * 100)
    monkeypatch.setenv("COMPRESSION_DATA_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="seq_len=1024 tokens is longer than the model's context of 512 tokens"):
        check_calibration(CalibrationSettings(dataset="wikitext2", seq_len=1024), context_length=512)
    with pytest.raises(ValueError, match="cannot be drawn from wikitext2: its longest text has 100 bytes"):
        check_calibration(CalibrationSettings(dataset="wikitext2", seq_len=200), context_length=512)
    check_calibration(CalibrationSettings(dataset="wikitext2", seq_len=50), context_length=512)
    with pytest.raises(ValueError, match="cannot be drawn from wikitext2: it has 100 tokens"):  # the exact count
        calibration_samples(ByteTokenizer(), CalibrationSettings(dataset="wikitext2", n_samples=2, seq_len=100))
    assert calibration_samples(ByteTokenizer(), CalibrationSettings(dataset="wikitext2", n_samples=2,
                                                                    seq_len=50)).shape == (2, 50)


@needs_data
def test_a_calibration_longer_than_every_c4_document_is_refused_up_front():
    with pytest.raises(ValueError, match="seq_len=100000 tokens cannot be drawn from c4"):
        check_calibration(CalibrationSettings(seq_len=100000))
    with pytest.raises(ValueError, match="seq_len=100000 tokens cannot be drawn from c4"):  # not after 25,600 draws
        calibration_samples(ByteTokenizer(), CalibrationSettings(seq_len=100000))


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="imagenet"):
        CalibrationSettings(dataset="imagenet")
    with pytest.raises(ValueError, match="bfloat8"):
        load_model("tiny-llama", dtype="bfloat8")
    with pytest.raises(ValueError, match="tiny family"):
        load_model("tiny-bert")


def test_unreachable_hub_id_lists_the_offline_aliases(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError) as err:
        load_model("some-org/not-a-model-here")
    for alias in OFFLINE_ALIASES:
        assert alias in str(err.value)


def test_results_table_appends_and_skips(tmp_path):
    table = ResultsTable(tmp_path / "r.jsonl")
    key = run_key(method="wanda", sparsity=0.5)
    assert not table.done(key)
    table.append(model="m", method="wanda", metric="perplexity", value=torch.tensor(3.5),
                 settings={"sparsity": 0.5}, protocol={"seq_len": 8}, key=key)
    assert table.done(key)
    record = table.records()[0]
    assert record["value"] == 3.5 and record["versions"]["torch"] and record["time"]
    assert record["numbers_version"] and record["commit"]
    frame = table.frame()
    assert frame.loc[0, "settings.sparsity"] == 0.5


@needs_data
@pytest.mark.slow
def test_packaged_smollm2_loads_and_predicts_text(tmp_path):
    model, tokenizer = load_model("smollm2-135m")
    assert model.config.num_hidden_layers == 30
    windows = evaluation_windows(tokenizer, seq_len=128, max_windows=2)
    from helpers.evaluation.metrics import perplexity
    ppl = perplexity(model, windows, progress=False)
    assert 5 < ppl < 100  # a real LM on Wikipedia text; random weights would give ~49k


@needs_data
def test_cli_eval_prints_perplexity_and_records(tmp_path):
    results = tmp_path / "results.jsonl"
    out = subprocess.run([sys.executable, "-m", "helpers", "eval", "--model", "tiny-llama", "--seq-len", "64",
                          "--max-windows", "2", "--results", str(results), "--no-progress"],
                         capture_output=True, text=True, check=True)
    assert "perplexity=" in out.stdout
    record = json.loads(results.read_text().splitlines()[0])
    assert record["protocol"]["seq_len"] == 64 and record["metric"] == "perplexity"
    bad = subprocess.run([sys.executable, "-m", "helpers", "eval", "--model", "tiny-llama", "--seq-len", "1"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "seq_len=1" in bad.stderr


def test_series_styles_are_distinct_for_many_series():
    from helpers.plotting import series_styles
    labels = [f"variant {i}" for i in range(30)]
    families = {label: ("pruning" if i % 2 else "quantization") for i, label in enumerate(labels)}
    styles = series_styles(labels, families=families)
    assert len({(s["color"], s["marker"]) for s in styles.values()}) == 30
    assert len({s["color"] for s in list(styles.values())[:20]}) == 20  # 20 colours before any repeats
    assert {styles[l]["linestyle"] for l in labels if families[l] == "pruning"} == {"--"}
    assert styles["variant 0"]["linestyle"] == "-"


def test_centred_offsets_place_series_symmetrically_about_zero_in_order():
    from helpers.plotting import centred_offsets
    assert centred_offsets(["a", "b"]) == {"a": -0.5, "b": 0.5}
    assert centred_offsets(["a", "b", "a", "c"]) == {"a": -1.0, "b": 0.0, "c": 1.0}  # repeats counted once
    assert centred_offsets(["only"]) == {"only": 0.0} and centred_offsets([]) == {}


def test_figure_title_wraps_a_long_caption_to_the_figure_and_keeps_given_lines():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from helpers.plotting import figure_title

    fig = plt.figure(figsize=(4, 3))
    words = " | ".join(f"setting{i}=value{i}" for i in range(20))
    figure_title(fig, words + "\nsecond line")
    lines = fig._suptitle.get_text().split("\n")
    assert len(lines) > 3 and max(len(line) for line in lines) <= 4 * 15 and lines[-1] == "second line"
    assert " ".join(lines[:-1]) == words                       # wrapped, nothing lost
    plt.close(fig)


def test_ratio_axis_goes_log_on_the_data_span_not_the_axis_margin():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from helpers.plotting import ratio_axis

    fig, (wide, narrow) = plt.subplots(1, 2)
    wide.plot([0, 0.25, 0.5], [1.0, 2.8, 216.0])        # a linear axis's margin reaches below 0 here
    narrow.plot([0, 0.5], [1.0, 1.2])
    ratio_axis(wide, axis="y")
    ratio_axis(narrow, axis="y")
    assert wide.get_yscale() == "log" and narrow.get_yscale() == "linear"
    with pytest.raises(ValueError, match="axis='z'"):
        ratio_axis(wide, axis="z")
    plt.close(fig)


def test_committed_gzip_files_are_the_same_bytes_when_written_again(tmp_path, monkeypatch):
    import time
    from helpers.results import read_gzip_lines, write_gzip_lines

    records = [{"b": 1, "a": [0.5, 2]}, {"a": None}]
    first = write_gzip_lines(tmp_path / "r.jsonl.gz", records) and (tmp_path / "r.jsonl.gz").read_bytes()
    monkeypatch.setattr(time, "time", lambda: 2e9)               # another moment: no timestamp in the header
    assert write_gzip_lines(tmp_path / "r.jsonl.gz", records) == 2 and (tmp_path / "r.jsonl.gz").read_bytes() == first
    assert read_gzip_lines(tmp_path / "r.jsonl.gz") == records


def test_a_frozen_run_seeds_another_table_once(tmp_path):
    from helpers.results import ResultsTable

    table = ResultsTable(tmp_path / "a.jsonl")
    for model, value in (("m", 1.0), ("m", 2.0), ("other", 3.0)):
        table.append(model=model, method="x", metric="kl", value=value, protocol={"p": 1}, key=f"{model}{value}",
                     attempt=f"a{value}")
    table.append(model="m", method="x", metric="note", value=0.0)            # not a runner row: not frozen
    assert table.freeze(tmp_path / "run" / "rows.jsonl.gz", model="m", protocol={"p": 1}) == 2
    other = ResultsTable(tmp_path / "b.jsonl")
    assert other.seed(tmp_path / "run" / "rows.jsonl.gz") == 2
    assert other.seed(tmp_path / "run" / "rows.jsonl.gz") == 0                 # nothing twice
    assert [r["value"] for r in other.records()] == [1.0, 2.0]
    assert other.records()[0]["commit"] == table.records()[0]["commit"]       # provenance kept as recorded


def test_run_suffix_names_other_models_runs_and_respects_a_given_name():
    from helpers.results import run_suffix

    assert run_suffix("", "smollm2-135m") == ""
    assert run_suffix("", "gemma3-270m") == "_gemma3-270m"
    assert run_suffix("", "google/Gemma-3-270M/") == "_gemma-3-270m"
    assert run_suffix("gemma3-16k", "gemma3-270m") == "_gemma3-16k"
    assert run_suffix("mine", "smollm2-135m") == "_mine"


def test_gzip_shards_split_under_the_limit_and_read_back_in_order(tmp_path):
    import random
    from helpers.results import read_gzip_shards, shard_base, shard_paths, write_gzip_shards

    rng = random.Random(0)
    records = [{"i": i, "text": "".join(rng.choice("abcdefgh") for _ in range(200))} for i in range(300)]
    path = tmp_path / "task.jsonl.gz"
    assert write_gzip_shards(path, records, max_bytes=10_000) == 300
    parts = shard_paths(path)
    assert len(parts) > 2 and parts[0] == path and parts[1].name == "task.part2.jsonl.gz"
    assert all(part.stat().st_size <= 10_000 for part in parts)
    assert read_gzip_shards(path) == records                               # every record, in the order written
    assert {shard_base(part) for part in parts} == {path}
    # a smaller set written again leaves no stale part behind; one file when it fits
    assert write_gzip_shards(path, records[:5], max_bytes=10_000) == 5
    assert shard_paths(path) == [path] and read_gzip_shards(path) == records[:5]
    # a record larger than the limit is kept whole, in a part of its own
    assert write_gzip_shards(path, records[:3], max_bytes=100) == 3 and len(shard_paths(path)) == 3
    assert read_gzip_shards(path) == records[:3]
