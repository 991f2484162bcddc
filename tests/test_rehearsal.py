"""The paper profile rehearsed on the CPU (helpers.running.rehearsal): every notebook with the paper profile's
parameters, the hub ids served by tiny stand-in checkpoints from a local hub cache, sizes cut to seconds."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers.running import rehearsal
from helpers.running.reproduce import PROFILES, REPO_ROOT, find_notebooks, notebook_defaults


def test_every_notebook_has_cuts_that_it_declares():
    for notebook in find_notebooks(REPO_ROOT / "notebooks"):
        assert "paper" in PROFILES[notebook.stem], notebook.stem
        overrides = rehearsal.rehearsal_overrides(notebook, device="cpu", dtype=None, judge_url="http://127.0.0.1:1/v1")
        assert set(overrides) <= set(notebook_defaults(notebook))
        paper = PROFILES[notebook.stem]["paper"]
        kept = {k for k in paper if k not in overrides}
        assert "dtype" in kept and "model" in kept  # the paper's precision and hub id are what runs


def test_stand_in_configs_keep_the_family_and_the_long_context():
    assert rehearsal.stand_in_config("facebook/opt-1.3b").model_type == "opt"
    long = rehearsal.stand_in_config("togethercomputer/LLaMA-2-7B-32K")
    assert long.model_type == "llama" and long.max_position_embeddings == 32768
    assert long.rope_scaling["factor"] == 8.0 and long.rope_scaling["rope_type"] == "linear"
    assert rehearsal.stand_in_config("lmsys/vicuna-7b-v1.5").max_position_embeddings == 4096


def run_rehearsal(tmp_path, *args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    env.pop("HF_HUB_CACHE", None)
    completed = subprocess.run([sys.executable, "-m", "helpers.running.rehearsal", "--output-dir", str(tmp_path),
                                "--json", str(tmp_path / "outcomes.json"), *args],
                               cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    outcomes = json.loads((tmp_path / "outcomes.json").read_text()) if (tmp_path / "outcomes.json").exists() else []
    return completed, {o["notebook"]: o for o in outcomes}


def test_the_paper_profile_runs_end_to_end_on_stand_in_models(tmp_path):
    completed, outcomes = run_rehearsal(tmp_path)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert set(outcomes) == {nb.stem for nb in find_notebooks(REPO_ROOT / "notebooks")}
    assert all(o["status"] == "ran" for o in outcomes.values())
    for stem, outcome in outcomes.items():
        parameters = outcome["parameters"]
        assert parameters["model"] == PROFILES[stem]["paper"]["model"] and parameters["dtype"] == "float16"
        assert parameters["device"] == "cpu"
    assert outcomes["03_llm_kick"]["parameters"]["task_settings"]["mmlu_shots"] == 5
    assert outcomes["01_context_length_kl"]["parameters"]["model"] == "togethercomputer/LLaMA-2-7B-32K"
    # the GPT-4 judge's path ran against the stand-in server, and the hub ids were served by the stand-in cache
    answered = [line for line in completed.stdout.splitlines() if "stand-in judge answered" in line]
    assert answered and int(answered[0].split("answered ")[1].split()[0]) > 0
    assert (tmp_path / "hub-cache" / "models--facebook--opt-1.3b" / "refs" / "main").exists()
    assert any((tmp_path / "results").glob("*.jsonl"))


def test_bfloat16_rehearsal_of_two_notebooks(tmp_path):
    completed, outcomes = run_rehearsal(tmp_path, "--dtype", "bfloat16", "--only", "00", "--only", "02")
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert {o["parameters"]["dtype"] for o in outcomes.values()} == {"bfloat16"} and len(outcomes) == 2
