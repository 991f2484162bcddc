"""The command line reaches what the notebooks do: every flag maps to the spec field it names (the parsed
recipe equals the one the API builds), and a tiny-model run of each subcommand records its results."""
import json

import pytest

from conftest import cli_token_flags
import torch

from helpers.compression.compress import Recipe
from helpers.compression.quantizer import QuantSettings
from helpers.data import CalibrationSettings
from helpers.running.cli import build_parser, compress_variant, main


def parsed(*flags):
    return compress_variant(build_parser().parse_args(["compress", *flags]))


CALIBRATION = CalibrationSettings()  # the CLI's defaults: c4 128 x 2048, seed 0


@pytest.mark.parametrize("flags, recipe", [
    (["--method", "sparsegpt", "--sparsity", "0.5", "--pattern", "2:4"],
     Recipe(method="sparsegpt", sparsity=0.5, pattern="2:4", calibration=CALIBRATION)),
    (["--method", "gptq", "--bits", "4", "--group-size", "128", "--act-order", "--static-groups", "--true-sequential"],
     Recipe(method="gptq", quant=QuantSettings(bits=4, group_size=128, act_order=True, static_groups=True),
            true_sequential=True, calibration=CALIBRATION)),
    (["--method", "gptq", "--bits", "3", "--group-size", "64", "--group-fit", "updated", "--mse", "--symmetric"],
     Recipe(method="gptq", quant=QuantSettings(bits=3, group_size=64, group_fit="updated", mse=True, symmetric=True),
            calibration=CALIBRATION)),
    (["--method", "rtn", "--bits", "3", "--group-size", "64", "--protect-fraction", "0.02", "--protect-rule",
      "hessian", "--protect-bits", "16", "--protect-group-size", "32"],
     Recipe(method="rtn", quant=QuantSettings(bits=3, group_size=64, protect_fraction=0.02, protect_rule="hessian",
                                              protect_bits=16, protect_group_size=32), calibration=CALIBRATION)),
    (["--method", "rtn", "--bits", "4", "--group-size", "128", "--blocks", "full_attention"],
     Recipe(method="rtn", quant=QuantSettings(bits=4, group_size=128), blocks="full_attention", calibration=CALIBRATION)),
    (["--method", "magnitude", "--sparsity", "0.3", "--blocks", "5,11,17"],
     Recipe(method="magnitude", sparsity=0.3, blocks=(5, 11, 17), calibration=CALIBRATION)),
    (["--method", "sparsegpt", "--sparsity", "0.6", "--damping", "0.1", "--block-size", "64", "--seed", "3",
      "--calibration-samples", "16", "--calibration-seq-len", "256"],
     Recipe(method="sparsegpt", sparsity=0.6, damping=0.1, block_size=64, seed=3,
            calibration=CalibrationSettings(n_samples=16, seq_len=256, seed=3))),
])
def test_each_flag_maps_to_the_recipe_field_it_names(flags, recipe):
    assert parsed(*flags).recipe == recipe


def test_evaluation_and_schedule_flags_map_to_their_settings():
    w4a8 = parsed("--method", "rtn", "--bits", "4", "--activation-bits", "8", "--activation-granularity", "per_tensor")
    assert w4a8.label == "W4A8" and w4a8.settings["activations"] == {"bits": 8, "symmetric": False,
                                                                     "granularity": "per_tensor"}
    kv = parsed("--kv-bits", "3", "--kv-granularity", "per_channel", "--kv-token-group-size", "64")
    assert kv.recipe is None and kv.settings["kv_cache"]["token_group_size"] == 64
    sliding = parsed("--kv-bits", "3", "--blocks", "sliding_attention")
    assert sliding.settings["kv_cache"]["blocks"] == "sliding_attention" and sliding.label == "KV3 [sliding-window blocks]"
    owl = parsed("--method", "wanda", "--sparsity", "0.7", "--schedule", "owl", "--owl-multiplier", "7",
                 "--owl-spread", "0.1")
    assert owl.settings["schedule"]["owl"].outlier_multiplier == 7 and owl.settings["schedule"]["owl"].spread == 0.1
    assert owl.compress is not None and owl.label == "wanda 70% owl"
    hessian = parsed("--method", "sparsegpt", "--sparsity", "0.7", "--schedule", "hessian", "--schedule-levels", "3",
                     "--schedule-clustering", "binning", "--schedule-spread", "0.05", "--schedule-probe-sparsity",
                     "0.5", "--schedule-normalize-by-size")
    chosen = hessian.settings["schedule"]["hessian"]
    assert (chosen.levels, chosen.clustering, chosen.spread, chosen.probe_sparsity, chosen.normalize_by_size) == \
        (3, "binning", 0.05, 0.5, True)


@pytest.mark.parametrize("flags, message", [
    (["--method", "gptq"], "needs quant"),
    (["--method", "rtn", "--group-size", "64"], "without bits"),
    (["--method", "rtn", "--bits", "4", "--schedule", "owl"], "needs a pruning method"),
    (["--method", "sparsegpt", "--sparsity", "0.5", "--owl-spread", "0.1"], "without 'schedule'"),
    (["--method", "sparsegpt", "--sparsity", "0.5", "--schedule", "hessian", "--owl-spread", "0.1"], "belong to 'owl'"),
    (["--kv-bits", "9"], "bits=9"),
    (["--method", "rtn", "--bits", "4", "--group-fit", "late"], "group_fit='late'"),
    (["--method", "wanda", "--sparsity", "0.5", "--schedule", "owl", "--schedule-inputs", "dense"], "sparsegpt only"),
])
def test_bad_combinations_are_refused_before_any_model_is_loaded(flags, message, capsys):
    assert main(["compress", "--model", "no-such-model", *flags]) == 2
    assert message in capsys.readouterr().err


def test_an_unknown_block_selection_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["compress", "--model", "no-such-model", "--kv-bits", "3", "--blocks", "global"])
    assert exit_.value.code == 2 and "--blocks 'global': expected one of" in capsys.readouterr().err


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture()
def tokens(tmp_path):
    return cli_token_flags(tmp_path, calibration=6, windows=4)


def test_eval_records_perplexity(tmp_path, tokens, capsys):
    results = tmp_path / "r.jsonl"
    assert main(["eval", "--model", "tiny-llama", "--token-file", tokens[1], "--seq-len", "64",
                 "--results", str(results), "--no-progress"]) == 0
    assert records(results)[0]["metric"] == "perplexity" and "perplexity=" in capsys.readouterr().out


@pytest.mark.parametrize("flags", [
    ["--method", "sparsegpt", "--sparsity", "0.6", "--schedule", "owl"],
    ["--method", "sparsegpt", "--sparsity", "0.6", "--schedule", "hessian", "--schedule-levels", "2"],
    ["--method", "sparsegpt", "--sparsity", "0.6", "--bits", "4", "--schedule", "owl", "--schedule-inputs", "dense"],
    ["--kv-bits", "3"],
    ["--method", "gptq", "--bits", "4", "--group-size", "48", "--true-sequential"],
])
def test_compress_runs_every_kind_of_variant_on_tiny_llama(tmp_path, tokens, flags, capsys):
    results = tmp_path / "r.jsonl"
    assert main(["compress", "--model", "tiny-llama", *tokens, "--results", str(results), *flags]) == 0
    rows = records(results)
    labels = {r["label"] for r in rows}
    assert len(labels) == 2 and "dense" in labels
    kl = [r["value"] for r in rows if r["metric"] == "mean_kl" and r["label"] != "dense"]
    assert kl and kl[0] > 0
    if "--schedule" in flags:
        sparsity = [r for r in rows if r["label"] != "dense"][0]["achieved_sparsity"]
        assert abs(sparsity - 0.6) < 0.01  # the schedule keeps the target mean
    assert "recorded in" in capsys.readouterr().out


def test_context_kl_prints_intervals_over_windows_and_records_every_context(tmp_path, tokens, capsys):
    results = tmp_path / "r.jsonl"
    argv = ["context-kl", "--model", "tiny-llama", *tokens, "--results", str(results), "--method", "rtn", "--bits",
            "3", "--smallest-context", "8"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "95% t-interval over the 4 windows" in printed and "growth KL@64 / KL@8" in printed
    rows = [r for r in records(results) if r["metric"] == "kl_context"]
    assert sorted({r["context"] for r in rows}) == [8, 16, 32, 64] and len(rows) == 4 * 4
    assert main(argv) == 0 and "already" not in capsys.readouterr().err  # a re-run reads the recorded rows
    assert len([r for r in records(results) if r["metric"] == "kl_context"]) == 16


@pytest.mark.parametrize("command", ["eval", "compress", "context-kl"])
@pytest.mark.parametrize("value", ["-1", "0", "two"])
def test_max_windows_below_one_is_refused_by_the_parser(command, value, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--model", "no-such-model", "--max-windows", value])
    assert exit_.value.code == 2
    assert f"--max-windows: {value!r}: expected a whole number of windows >= 1" in capsys.readouterr().err


def test_eval_checks_its_window_settings_before_loading_the_model(capsys):
    assert main(["eval", "--model", "no-such-model", "--seq-len", "1"]) == 2
    assert "seq_len=1" in capsys.readouterr().err  # not the error of loading no-such-model


@pytest.fixture()
def no_forward_pass(monkeypatch):
    """The CLI's dense reference and evaluation raise if called: what is refused here is refused before them."""
    import helpers.running.cli as cli

    def forward(*args, **kwargs):
        raise AssertionError("a forward pass ran before the settings were refused")

    monkeypatch.setattr(cli, "DenseReference", forward)
    monkeypatch.setattr(cli, "evaluate", forward)


@pytest.mark.parametrize("flags, message", [
    (["--calibration-seq-len", "100000"], "calibration seq_len=100000 tokens is longer than the model's context of 512"),
    (["--calibration-seq-len", "128"], "expected at least [6, 128]"),  # the saved calibration rows hold 64 tokens
])
@pytest.mark.parametrize("command", ["compress", "context-kl"])
def test_a_calibration_that_cannot_be_drawn_is_refused_before_the_dense_pass(tmp_path, tokens, no_forward_pass,
                                                                            command, flags, message, capsys):
    argv = [command, "--model", "tiny-llama", *tokens, "--results", str(tmp_path / "r.jsonl"), "--method", "wanda",
            "--sparsity", "0.5", *flags]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r.jsonl").exists()


def test_every_variant_spec_key_has_one_flag_and_every_flag_is_a_spec_key():
    from helpers.experiments.core import SPEC_KEYS
    from helpers.running.cli import SPEC_OPTIONS

    flags = [key for options in SPEC_OPTIONS.values() for _, key, _, _ in options]
    assert len(flags) == len(set(flags))
    # label / family name a notebook's curves; seed is the run's own --seed (calibration and random pruning)
    assert set(flags) == SPEC_KEYS - {"label", "family", "seed"}, "the CLI and parse_variant must know the same keys"
