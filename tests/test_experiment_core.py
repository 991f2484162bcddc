"""helpers.experiments.core: the spec parser, the checked snapshot, the one runner and its reader."""
import math
import warnings

import pytest
import torch

from helpers.compression.compress import Recipe
from helpers.compression.quantizer import QuantSettings
from helpers.evaluation.metrics import DenseReference
from helpers.experiments.core import (DENSE_LABEL, Measurement, ModelSnapshot, Runner, Variant, latest_frame,
                                      parse_variant)
from helpers.experiments.longcontext import context_kl_measurement, log_bin_edges, protection_measurement
from helpers.data import CalibrationSettings
from helpers.models import ByteTokenizer, compressed_linears, linear_weight, load_model
from helpers.results import ResultsTable


@pytest.fixture()
def tiny():
    model, tokenizer = load_model("tiny-llama")
    windows = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    return model, windows, DenseReference(model, windows, progress=False)


def quiet_runner(model, table, protocol=None, **kwargs):
    return Runner(model, table, "tiny-llama", {"dataset": "random"} if protocol is None else protocol, log=lambda *_: None,
                  progress=False, **kwargs)


def test_runner_restores_records_and_skips(tiny, tmp_path):
    model, windows, reference = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    table = ResultsTable(tmp_path / "r.jsonl")
    protocol = {"dataset": "random", "max_context": 24}
    variants = [Variant("magnitude 50%", Recipe(method="magnitude", sparsity=0.5), family="pruning"),
                Variant("rtn 3-bit", Recipe(method="rtn", quant=QuantSettings(bits=3)), family="quantization")]
    measure = [context_kl_measurement(reference, edges=log_bin_edges(24), contexts=[8, 24])]
    runner = quiet_runner(model, table, protocol)
    reports = runner.run(variants, measure)
    assert set(reports) == {"magnitude 50%", "rtn 3-bit"}
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # left dense
    frame = latest_frame(table, model="tiny-llama", protocol=protocol)
    kl_ctx = frame[(frame.metric == "kl_context") & (frame.label == "rtn 3-bit")]
    assert len(kl_ctx) == 2 * 2 and (kl_ctx.value > 0).all()
    full = frame[(frame.metric == "mean_kl") & (frame.label == "rtn 3-bit")].value.item()
    assert math.isclose(kl_ctx[kl_ctx.context == 24].value.mean(), full, rel_tol=1e-9)
    pruned = frame[frame.label == "magnitude 50%"]
    assert math.isclose(pruned.achieved_sparsity.iloc[0], 0.5, abs_tol=0.01)
    assert pruned.bits_per_weight.iloc[0] == pytest.approx(0.5 * 16 + 1, abs=0.02)  # fp16 kept + bitmap
    assert frame.storage_convention.nunique() == 1
    rows = len(table.records())
    # Re-run: both skipped, nothing written; a new variant runs alone.
    extra = Variant("random 10%", Recipe(method="random", sparsity=0.1))
    again = runner.run(variants + [extra], measure)
    assert set(again) == {"random 10%"}
    assert len(latest_frame(table, model="tiny-llama", protocol=protocol, labels=["magnitude 50%"])) == len(pruned)
    assert len(table.records()) > rows
    # Another protocol is another key: runs again.
    other = quiet_runner(model, table, {**protocol, "max_context": 23})
    assert set(other.run(variants[:1], measure)) == {"magnitude 50%"}
    for name, layer in compressed_linears(model).items():
        assert (linear_weight(layer) != 0).float().mean() > 0.9


def test_a_recorded_only_runner_measures_nothing_and_says_what_it_left_out(tiny, tmp_path, monkeypatch):
    from helpers.experiments.core import RECORDED_ONLY

    model, windows, reference = tiny
    table = ResultsTable(tmp_path / "r.jsonl")
    measure = [context_kl_measurement(reference, edges=log_bin_edges(24), contexts=[8, 24])]
    kept = Variant("magnitude 50%", Recipe(method="magnitude", sparsity=0.5))
    quiet_runner(model, table).run([kept], measure)
    rows = table.records()
    lines = []
    monkeypatch.setenv(RECORDED_ONLY, "1")
    runner = Runner(model, table, "tiny-llama", {"dataset": "random"}, log=lines.append, progress=False)
    new = Variant("random 10%", Recipe(method="random", sparsity=0.1))
    assert runner.run([kept, new], measure) == {} and table.records() == rows      # nothing measured or written
    assert lines[0].startswith("random 10%: context_kl not recorded, not measured")
    assert lines[1:] == ["magnitude 50%: already recorded, skipped"]
    monkeypatch.setenv(RECORDED_ONLY, "0")                                           # "0" is off
    assert set(runner.run([kept, new], measure)) == {"random 10%"}


def test_runner_refuses_a_model_that_was_not_restored(tiny, tmp_path, monkeypatch):
    model, _, reference = tiny
    snapshot = ModelSnapshot(model)
    snapshot.check(model)  # the dense model passes
    with torch.no_grad():
        next(iter(compressed_linears(model).values())).weight.mul_(0.5)
    with pytest.raises(RuntimeError, match="differ from the saved dense state"):
        snapshot.check(model)
    # A restore that does not restore (here: load_state_dict does nothing) stops the run before measuring.
    monkeypatch.setattr(model, "load_state_dict", lambda state: None)
    measured = []
    measurement = Measurement("probe", lambda point: measured.append(point.variant.label) or [])
    runner = quiet_runner(model, ResultsTable(tmp_path / "r.jsonl"), snapshot=snapshot)
    with pytest.raises(RuntimeError, match="not restored"):
        runner.run([Variant("magnitude 50%", Recipe(method="magnitude", sparsity=0.5))], [measurement])
    assert measured == [] and ResultsTable(tmp_path / "r.jsonl").records() == []


def test_a_killed_run_loses_nothing_and_resumes_past_a_half_written_line(tiny, tmp_path):
    model, _, reference = tiny
    path = tmp_path / "r.jsonl"
    calls = []

    def measure(point):
        calls.append(point.variant.label)
        if point.variant.label == "magnitude 30%" and len(calls) == 2:
            raise KeyboardInterrupt  # the kill, in the middle of the second variant
        return [{"metric": "mean_abs_weight",
                 "value": float(sum(linear_weight(m).detach().abs().sum() for m in compressed_linears(point.model).values()))}]

    variants = [Variant("magnitude 50%", Recipe(method="magnitude", sparsity=0.5)),
                Variant("magnitude 30%", Recipe(method="magnitude", sparsity=0.3))]
    measurement = Measurement("weights", measure)
    with pytest.raises(KeyboardInterrupt):
        quiet_runner(model, ResultsTable(path)).run(variants, [measurement])
    ModelSnapshot(model).check(model)  # restored even though the run died
    kept = path.read_text()
    assert '"magnitude 50%"' in kept and '"magnitude 30%"' not in kept
    with open(path, "a") as handle:  # what a kill during a write leaves: a cut line, no newline
        handle.write('{"model": "tiny-llama", "metric": "mean_abs_weight", "val')
    table = ResultsTable(path)
    with pytest.warns(UserWarning, match=rf"{path.name}, line 3: not a complete JSON record"):
        quiet_runner(model, table).run(variants, [measurement])
    assert calls == ["magnitude 50%", "magnitude 30%", "magnitude 30%"]  # the recorded one was skipped
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = latest_frame(table, model="tiny-llama")
    assert sorted(frame.label.unique()) == ["magnitude 30%", "magnitude 50%"]  # the new record was not swallowed
    assert len(frame[frame.metric == "mean_abs_weight"]) == 2


def test_each_variant_is_calibrated_on_the_tokens_its_recipe_records(tiny, tmp_path):
    """Two recipes that differ only in the calibration seed are calibrated on different tokens (each draw
    once), so a row's recorded seed is the seed its weights came from; the same seed reproduces the weights."""
    model, _, _ = tiny
    weights = {}

    def checksum(point):
        weights[point.variant.label] = torch.cat([linear_weight(m).flatten() for m in compressed_linears(model).values()])
        return [{"metric": "nonzero", "value": float((weights[point.variant.label] != 0).sum())}]

    variants = [Variant(f"wanda seed={k} ({i})", Recipe(method="wanda", sparsity=0.5, calibration=CalibrationSettings(
        dataset="c4", n_samples=2, seq_len=32, seed=k))) for i, k in enumerate((0, 1, 0))]
    runner = quiet_runner(model, ResultsTable(tmp_path / "r.jsonl"), tokenizer=ByteTokenizer())
    runner.run(variants, [Measurement("probe", checksum)])
    drawn = {settings.seed: ids for settings, ids in runner._calibration.items()}
    assert sorted(drawn) == [0, 1] and not torch.equal(drawn[0], drawn[1])
    first, other, again = (weights[v.label] for v in variants)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_runner_refuses_a_calibration_longer_than_the_context_before_any_measurement(tiny, tmp_path):
    model, _, _ = tiny
    measured = []
    measurement = Measurement("probe", lambda point: measured.append(point.variant.label) or [])
    too_long = Recipe(method="wanda", sparsity=0.5, calibration=CalibrationSettings(n_samples=2, seq_len=1024))
    runner = quiet_runner(model, ResultsTable(tmp_path / "r.jsonl"), tokenizer=ByteTokenizer())
    with pytest.raises(ValueError, match="seq_len=1024 tokens is longer than the model's context of 512"):
        runner.run([Variant.dense(), Variant("wanda 50%", too_long)], [measurement])
    assert measured == [] and ResultsTable(tmp_path / "r.jsonl").records() == []


def test_latest_frame_keeps_only_the_latest_attempt(tiny, tmp_path):
    model, _, _ = tiny
    table = ResultsTable(tmp_path / "r.jsonl")
    values = iter([1.0, 2.0])
    measurement = Measurement("count", lambda point: [{"metric": "x", "value": next(values)}])
    variant = [Variant("magnitude 50%", Recipe(method="magnitude", sparsity=0.5))]
    quiet_runner(model, table).run(variant, [measurement])
    first = latest_frame(table)
    # a second attempt of the same key (e.g. a forced re-run) supersedes the first
    for record in table.records():
        table.append(**{**record, "attempt": "later", "value": 2.0 if record["metric"] == "x" else record["value"]})
    frame = latest_frame(table)
    assert first[first.metric == "x"].value.item() == 1.0 and frame[frame.metric == "x"].value.item() == 2.0
    assert set(frame.attempt) == {"later"}


def test_runner_and_variants_reject_bad_input(tiny, tmp_path):
    model, _, reference = tiny
    v = Variant("x", Recipe(method="magnitude", sparsity=0.5))
    measure = [context_kl_measurement(reference, edges=[0, 24], contexts=[24])]
    with pytest.raises(ValueError, match="unique"):
        quiet_runner(model, ResultsTable(tmp_path / "r.jsonl")).run([v, v], measure)
    with pytest.raises(ValueError, match="neither"):
        Variant("x")
    with pytest.raises(ValueError, match="names the uncompressed model"):
        Variant(DENSE_LABEL, Recipe(method="magnitude", sparsity=0.5))
    assert Variant.dense().is_dense and Variant.dense().method == DENSE_LABEL


def test_spec_parser_labels_validates_and_equals_the_api_recipe():
    assert parse_variant({"method": "wanda", "sparsity": 0.5}).label == "wanda 50%"
    gptq = parse_variant({"method": "gptq", "bits": 3, "group_size": 64, "act_order": True})
    assert gptq.label == "GPTQ 3-bit g64 act-order" and gptq.family == "quantization"
    assert gptq.recipe == Recipe(method="gptq", quant=QuantSettings(bits=3, group_size=64, act_order=True))
    joint = parse_variant({"method": "sparsegpt", "sparsity": 0.5, "bits": 4})
    assert joint.label == "sparsegpt 50% + 4-bit per-channel" and joint.family == "joint"
    assert joint.recipe == Recipe(method="sparsegpt", sparsity=0.5, quant=QuantSettings(bits=4))
    protected = parse_variant({"method": "rtn", "bits": 3, "group_size": 32, "protect_fraction": 0.02})
    assert protected.label == "RTN 3-bit g32 + 2.0% magnitude@8" and protected.settings["protect_rule"] == "magnitude"
    assert parse_variant({"method": "rtn", "bits": 3, "group_size": 32}).settings["protect_rule"] == "none"
    sequential = parse_variant({"method": "gptq", "bits": 4, "group_size": 128, "act_order": True,
                                "true_sequential": True, "group_fit": "updated"})
    assert sequential.recipe == Recipe(method="gptq", true_sequential=True, quant=QuantSettings(
        bits=4, group_size=128, act_order=True, group_fit="updated"))
    assert sequential.label == "GPTQ 4-bit g128 act-order fit=updated true-sequential"
    w4a8 = parse_variant({"method": "rtn", "bits": 4, "activation_bits": 8})
    assert w4a8.label == "W4A8" and w4a8.recipe.quant.bits == 4 and w4a8.settings["activations"]["bits"] == 8
    kv = parse_variant({"kv_bits": 3, "kv_granularity": "per_channel"})
    assert kv.label == "KV3" and kv.recipe is None and kv.settings["kv_cache"]["granularity"] == "per_channel"
    for bad, match in [({"method": "rtn", "sparsity": 0.5}, "does not prune"), ({"bits": 4, "kv_bits": 4}, "without a method"),
                       ({"method": "nope"}, "method='nope'"), ({"method": "rtn", "bit": 4}, "unknown keys"),
                       ({"method": "magnitude", "group_size": 64}, "without bits"), ({}, "no method")]:
        with pytest.raises(ValueError, match=match):
            parse_variant(bad)


def test_kv_variant_changes_outputs_and_hooks_leave(tiny, tmp_path):
    model, windows, reference = tiny
    table = ResultsTable(tmp_path / "r.jsonl")
    quiet_runner(model, table).run([parse_variant({"kv_bits": 3})],
                                   [context_kl_measurement(reference, edges=log_bin_edges(24), contexts=[24])])
    kl = [r["value"] for r in table.records() if r["metric"] == "mean_kl"][0]
    assert kl > 0
    again = DenseReference(model, windows, progress=False)  # hooks removed: dense outputs again
    assert all(torch.equal(a, b) for a, b in zip(again.hidden, reference.hidden))


def test_protected_variants_record_their_bits_and_maps(tiny, tmp_path):
    model, _, reference = tiny
    plain = parse_variant({"method": "rtn", "bits": 3, "group_size": 32})
    kept = parse_variant({"method": "rtn", "bits": 3, "group_size": 32, "protect_fraction": 0.1})
    table = ResultsTable(tmp_path / "r.jsonl")
    quiet_runner(model, table, {}).run([plain, kept], [
        context_kl_measurement(reference, edges=log_bin_edges(24), contexts=[24]),
        protection_measurement(lambda variant: True)])
    frame = latest_frame(table, model="tiny-llama", protocol={})
    bits = frame.groupby("label").bits_per_weight.first()
    assert bits[plain.label] < bits[kept.label]  # protecting groups at 8 bits costs bits
    kl = frame[frame.metric == "mean_kl"].set_index("label").value
    assert kl[kept.label] < kl[plain.label]      # and keeping the largest groups at 8 bits helps
    share = frame[frame.metric == "protected_column_share"].value
    assert len(share) == 14 and ((share > 0) & (share <= 1)).all()


def test_latest_frame_drops_rows_of_a_label_recorded_under_an_older_key(tiny, tmp_path):
    """A label whose settings changed (or whose recorded fields grew with the code) is read from its
    newest key only: the stale rows of the old key do not mix into figures."""
    model, _, _ = tiny
    table = ResultsTable(tmp_path / "r.jsonl")
    measurement = Measurement("count", lambda point: [{"metric": "x", "value": point.variant.recipe.sparsity}])
    quiet_runner(model, table).run([Variant("pruned", Recipe(method="magnitude", sparsity=0.5))], [measurement])
    quiet_runner(model, table).run([Variant("pruned", Recipe(method="magnitude", sparsity=0.3))], [measurement])
    frame = latest_frame(table)
    assert frame[frame.metric == "x"].value.tolist() == [0.3]
    assert len({r["key"] for r in table.records()}) == 2  # both are kept in the file


def test_a_measurement_measures_again_what_it_no_longer_accepts(tiny, tmp_path):
    model, _, _ = tiny
    table = ResultsTable(tmp_path / "r.jsonl")
    variant = Variant("magnitude 50%", Recipe(method="magnitude", sparsity=0.5), family="pruning")
    calls = []

    def measurement(field_value, current=None):
        def measure(point):
            calls.append(field_value)
            return [{"metric": "score", "value": 1.0, **({"reference": field_value} if field_value else {})}]
        return Measurement("probe", measure, current=current)

    needs_reference = lambda row: row.get("metric") != "score" or bool(row.get("reference"))  # noqa: E731
    quiet_runner(model, table).run([variant], [measurement(None)])                         # an old row: no field
    quiet_runner(model, table).run([variant], [measurement("dense", needs_reference)])     # rejected: measured again
    quiet_runner(model, table).run([variant], [measurement("again", needs_reference)])     # the latest is accepted
    quiet_runner(model, table).run([variant], [measurement("plain")])                      # no check: skipped
    assert calls == [None, "dense"]
    frame = latest_frame(table, model="tiny-llama", protocol={"dataset": "random"})
    assert list(frame[frame.metric == "score"].reference) == ["dense"]
