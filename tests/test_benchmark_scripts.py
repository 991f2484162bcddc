"""benchmarks/reference_protocol.py and benchmarks/gpu_check.py run end to end on a tiny model on the CPU
(the GPU check is meant for a lent accelerator; --device cpu --quick is how it is checked here)."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(script, *args, tmp_path):
    completed = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], cwd=tmp_path,
                               capture_output=True, text=True, timeout=600,
                               env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                                    "PYTHONPATH": str(REPO), "HOME": str(Path.home())})
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    return completed.stdout


def test_reference_protocol_records_a_row_per_configuration_and_resumes(tmp_path):
    args = ["--model", "tiny-llama", "--windows", "2", "--samples", "4", "--seq-len", "32", "--eval-len", "32",
            "--threads", "1", "--seeds", "1", "--only", "sparsegpt 50%", "gptq 3-bit", "gptq 4-bit true-sequential",
            "--output", str(tmp_path / "reference")]
    printed = run("reference_protocol.py", *args, tmp_path=tmp_path)
    rows = {row["label"]: row for row in csv.DictReader(open(tmp_path / "reference.csv"))}
    assert set(rows) == {"dense", "sparsegpt 50%", "gptq 3-bit", "gptq 3-bit (calibration seed 1)",
                         "gptq 4-bit true-sequential"}
    assert abs(float(rows["sparsegpt 50%"]["achieved_sparsity"]) - 0.5) < 0.01
    assert float(rows["sparsegpt 50%"]["bits_per_weight"]) == 9.0
    for label in ("sparsegpt 50%", "gptq 3-bit"):
        split = sum(float(rows[label][k]) for k in ("seconds_capture", "seconds_statistics", "seconds_solve",
                                                    "seconds_propagation"))
        assert abs(split - float(rows[label]["seconds_compression"])) < 0.05 + 0.05 * split
        assert float(rows[label]["time_over_floor"]) > 0 and float(rows[label]["mean_kl"]) > 0
    assert "time_over_floor" in printed
    again = run("reference_protocol.py", *args, tmp_path=tmp_path)
    assert again.count("already recorded, skipped") == 5


def test_gpu_check_script_runs_on_the_cpu(tmp_path):
    printed = run("gpu_check.py", "--device", "cpu", "--quick", "--tokens", "256", "--only", "layers", "end-to-end",
                  "engine", "long-kl", "--output", str(tmp_path / "gpu.csv"), tmp_path=tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "gpu.csv")))
    assert len(rows) == 3 * 4 + 2 and all(row["finite"] == "True" for row in rows)
    assert {row["config"] for row in rows if row["check"] == "layer"} == {
        "sparsegpt 50%", "sparsegpt 2:4", "gptq 4-bit", "gptq 4-bit g128 act-order"}
    engine = {row["config"]: row for row in csv.DictReader(open(tmp_path / "gpu_engine.csv"))}
    assert set(engine) == {"sparsegpt 50%", "gptq 4-bit g128"}
    assert abs(float(engine["sparsegpt 50%"]["achieved_sparsity"]) - 0.5) < 1e-3
    assert all(row["blocks_back_home"] == "True" and row["finite"] == "True" for row in engine.values())
    long_kl = list(csv.DictReader(open(tmp_path / "gpu_long_kl.csv")))
    assert [int(row["context"]) for row in long_kl] == [64, 128, 256] * 2
    assert all(float(row["mean_kl"]) > 0 for row in long_kl if row["mean_kl"])
    protocol = json.loads((tmp_path / "gpu.json").read_text())
    assert {k: v["status"] for k, v in protocol["sections"].items()} == {
        "layers": "ok", "end-to-end": "ok", "engine": "ok", "long-kl": "ok"}
    assert "device: " in printed and "torch: " in printed


def test_precision_script_records_every_unit_and_resumes(tmp_path):
    output = tmp_path / "precision.jsonl"
    printed = run("precision.py", "--quick", "--threads", "1", "--output", str(output), "--export",
                  str(tmp_path / "precision.csv"), tmp_path=tmp_path)
    rows = [json.loads(line) for line in output.read_text().splitlines() if line.strip()]
    keys = {row["key"] for row in rows if row.get("key")}
    assert {key.split("/")[0] for key in keys} == {"compress", "floor", "timing", "answers"}
    kl = [row["value"] for row in rows if row["metric"] == "kl_bin"]
    assert kl and all(value >= 0 for value in kl) and max(kl) < 1e-3  # bf16 rounding of a tiny model: a small KL
    same = next(row for row in rows if row["metric"] == "same_answer")
    assert 0 <= same["low"] <= same["value"] <= same["high"] <= 1
    assert "identical answers [95% Wilson]" in printed and "CPU bf16 flags" in printed
    again = run("precision.py", "--quick", "--threads", "1", "--output", str(output), tmp_path=tmp_path)
    assert again.count("already recorded, skipped") == len(keys)
    from_csv = run("precision.py", "--report", "--output", str(tmp_path / "precision.csv"), tmp_path=tmp_path)
    assert "identical answers [95% Wilson]" in from_csv and "min-max" in from_csv
