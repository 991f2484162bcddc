"""Provenance: the numbers this code produces are pinned to helpers.results.NUMBERS_VERSION (golden values on a
fixed tiny model), every row records that version and the git commit, and the Runner measures again, saying so,
what code with other numbers recorded.

To regenerate the golden values after an intended change: bump NUMBERS_VERSION in helpers/results.py, run
`python tests/test_provenance.py` and paste what it prints over GOLDEN_VERSION and GOLDEN below."""
import json
import math

import pytest
import torch

from helpers import results
from helpers.compression.compress import Recipe, compress_model
from helpers.compression.quantizer import QuantSettings
from helpers.evaluation.metrics import DenseReference, evaluate
from helpers.experiments.core import Measurement, ModelSnapshot, Runner, Variant
from helpers.models import load_model
from helpers.results import NUMBERS_VERSION, ResultsTable

# Measured once by the code of NUMBERS_VERSION 1 (one torch thread, float32, CPU).
GOLDEN_VERSION = 1
GOLDEN = {
    "dense": {"perplexity": 349.4235260428321},
    "sparsegpt 50%": {"perplexity": 360.6152389791472, "mean_kl": 0.10430256050312892},
    "gptq 4-bit g16": {"perplexity": 348.3677346398644, "mean_kl": 0.006893819521792466},
    "rtn 4-bit": {"perplexity": 355.03901197716306, "mean_kl": 0.015296432458853815},
    "wanda 2:4": {"perplexity": 331.2717309038594, "mean_kl": 0.18074495356995612},
    "magnitude 50%": {"perplexity": 348.961220893174, "mean_kl": 0.11923061331617646},
}
# 1 vs 2 threads agree to ~1e-6 here; 1e-3 leaves room for another CPU's float32 kernels, while a change of
# an algorithm or metric moves these numbers by far more
RELATIVE_TOLERANCE = 1e-3

RECIPES = {
    "sparsegpt 50%": Recipe(method="sparsegpt", sparsity=0.5),
    "gptq 4-bit g16": Recipe(method="gptq", quant=QuantSettings(bits=4, group_size=16)),
    "rtn 4-bit": Recipe(method="rtn", quant=QuantSettings(bits=4)),
    "wanda 2:4": Recipe(method="wanda", sparsity=0.5, pattern="2:4"),
    "magnitude 50%": Recipe(method="magnitude", sparsity=0.5),
}


def golden_model():
    """tiny-llama (2 blocks, seed 0) with its matrices scaled x4: at the default init (std 0.02) the logits are
    near uniform and a 4-bit grid moves the mean KL by ~5e-5 nats, where the torch thread count alone moves it by
    2e-4 of itself; scaled, every method moves KL by 0.007-0.18 nats and rounding stays below 1e-6 of it."""
    model, _ = load_model("tiny-llama", seed=0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.mul_(4.0)
    return model


def measure_numbers() -> dict:
    """Dense perplexity of 2 fixed random 64-token windows, then perplexity and mean KL (nats per token) of
    each recipe of RECIPES, calibrated on 8 fixed random 64-token sequences."""
    model = golden_model()
    windows = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(11))
    calibration = torch.randint(0, 256, (8, 64), generator=torch.Generator().manual_seed(12))
    reference = DenseReference(model, windows, progress=False)
    numbers = {"dense": {"perplexity": reference.perplexity}}
    snapshot = ModelSnapshot(model)
    for label, recipe in RECIPES.items():
        snapshot.restore(model)
        compress_model(model, recipe, calibration_ids=calibration, progress=False)
        result = evaluate(model, windows, reference, progress=False)
        numbers[label] = {"perplexity": result.perplexity, "mean_kl": result.mean_kl()}
    return numbers


def test_compression_and_metric_numbers_equal_the_golden_values_of_this_numbers_version(single_thread):
    numbers = measure_numbers()
    advice = (f"compression or metric numbers changed: if intended, bump NUMBERS_VERSION in {results.__file__} and "
              f"update these golden values (GOLDEN_VERSION and GOLDEN in {__file__}; `python {__file__}` prints them)")
    changed = [f"{label} {metric}: golden {golden!r}, now {numbers[label][metric]!r}"
               for label, metrics in GOLDEN.items() for metric, golden in metrics.items()
               if not math.isclose(numbers[label][metric], golden, rel_tol=RELATIVE_TOLERANCE)]
    assert not changed, advice + ":\n  " + "\n  ".join(changed)
    assert GOLDEN_VERSION == NUMBERS_VERSION, (
        f"the golden values belong to NUMBERS_VERSION {GOLDEN_VERSION} but the code says {NUMBERS_VERSION}; these "
        f"values did not change: if numbers outside this set did, set GOLDEN_VERSION = {NUMBERS_VERSION} in {__file__}, "
        "else set NUMBERS_VERSION back.")


def test_every_record_carries_the_numbers_version_and_the_commit(tmp_path):
    record = ResultsTable(tmp_path / "r.jsonl").append(model="m", method="rtn", metric="perplexity", value=3.0)
    assert record["numbers_version"] == NUMBERS_VERSION
    assert isinstance(record["commit"], str) and record["commit"]
    assert json.loads((tmp_path / "r.jsonl").read_text())["numbers_version"] == NUMBERS_VERSION


def test_the_commit_is_unknown_outside_a_git_checkout(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "REPO_ROOT", tmp_path)
    results.git_commit.cache_clear()
    try:
        assert results.git_commit() == "unknown"
    finally:
        results.git_commit.cache_clear()


def rewrite_versions(path, version):
    """What older code left: every row's numbers_version set to `version` (None: no field) and its key to match."""
    rows = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        key = json.loads(row["key"])
        row.pop("numbers_version")
        key.pop("numbers_version")
        if version is not None:
            row["numbers_version"] = key["numbers_version"] = version
        row["key"] = json.dumps(key, sort_keys=True)
        rows.append(json.dumps(row))
    path.write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize("version, named", [(None, "unknown"), (NUMBERS_VERSION - 1, str(NUMBERS_VERSION - 1))])
def test_rows_of_other_numbers_are_measured_again_and_the_log_says_so(tmp_path, version, named):
    model, _ = load_model("tiny-llama")
    path = tmp_path / "r.jsonl"
    measured, log = [], []
    measurement = Measurement("count", lambda point: measured.append(point.variant.label) or [{"metric": "x", "value": 1}])
    runner = Runner(model, ResultsTable(path), "tiny-llama", {"dataset": "random"}, log=log.append, progress=False)
    variant = Variant("magnitude 50%", Recipe(method="magnitude", sparsity=0.5))
    runner.run([variant], [measurement])
    runner.run([variant], [measurement])
    assert measured == ["magnitude 50%"] and log[-1] == "magnitude 50%: already recorded, skipped"
    rewrite_versions(path, version)
    runner.run([variant], [measurement])
    assert measured == ["magnitude 50%"] * 2
    assert f"magnitude 50%: recorded by numbers version {named}, this code is {NUMBERS_VERSION}: measured again" in log
    assert ResultsTable(path).records()[-1]["numbers_version"] == NUMBERS_VERSION


if __name__ == "__main__":  # print the golden values of this code, to paste above
    torch.set_num_threads(1)
    print(f"GOLDEN_VERSION = {NUMBERS_VERSION}\nGOLDEN = {{")
    for label, metrics in measure_numbers().items():
        print(f"    {label!r}: {{" + ", ".join(f"{metric!r}: {value!r}" for metric, value in metrics.items()) + "},")
    print("}")
