"""Re-run every notebook in one profile and rebuild figures/SUMMARY.md.

    python -m helpers.running.reproduce --profile tiny                 # seconds per notebook, random tiny model
    python -m helpers.running.reproduce --profile cpu --inplace        # what `make reproduce` runs
    python -m helpers.running.reproduce --profile paper --only 02      # a hub model on a GPU

Profiles:
- `tiny`: a random-weight tiny model and very short contexts; checks that the code runs (CI).
- `cpu`: each notebook's own defaults (its `parameters` cell); the committed outputs and figures.
- `long`: a second committed run on another offline model, beyond the cpu budget (notebook 01:
  Gemma-3-270M at 16K tokens; notebook 03: the knowledge tasks on Gemma-3-270M, where SmolLM2 is at
  the floor; notebook 04: Gemma-3-270M, the main comparison at one sparsity); only
  notebooks with a `long` entry run. With `--inplace` its figures (named with
  the run's suffix) go to figures/, its results to results/ and its executed copy to
  `notebooks/runs/<name>.long.ipynb` (its "What the numbers show" prose is its own, kept across re-runs:
  `carry_prose`); the committed notebook keeps the cpu run.
- `long32k`: the same for a third run where a notebook has one (notebook 01: Gemma-3-270M at its native
  32,768 tokens, the check of the 16K run at the paper's longest context); copy `<name>.long32k.ipynb`.
- `paper`: the paper-scale settings, a hub model on cuda (needs a network or a local copy).

A notebook's parameters per profile live in PROFILES below: add your notebook's entry there (keyed
by its file name without `.ipynb`). Every profile also passes `profile=<name>` to notebooks that
declare a `profile` parameter; parameters equal to the notebook's own defaults are not injected.

Where things go: notebooks run with their working directory at `<root>/notebooks`, so the relative
paths of their parameters (`../figures`, `../results/...`) land in `<root>/figures` and
`<root>/results`. `<root>` is the repository with `--inplace` (cpu only: figures/ and the committed
notebooks are refreshed) and the output directory otherwise (default `build/<profile>`), so a tiny
or paper run never overwrites the committed figures. The executed notebook always goes to
`<output-dir>/notebooks/`; with `--inplace` it is also copied over the source notebook.

A notebook is skipped (unless --redo) when its executed copy was made from the same code and
parameters as now (a digest of the code cells stored in the copy's metadata: file times are not
kept by git checkouts) and its `results_path`, if it declares one, holds results.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_NAME = re.compile(r"^\d\d_.+\.ipynb$")
PROFILE_NAMES = ("tiny", "cpu", "long", "long32k", "paper")
# Second committed runs beside the cpu one: only notebooks with an entry run, their copies go to notebooks/runs/.
SECOND_RUN_PROFILES = ("long", "long32k")
INPLACE_PROFILES = ("cpu", *SECOND_RUN_PROFILES)

# Precision of the cpu and long profiles, chosen by the rule of helpers.claims.rules.precision_allows (bf16 only
# where its noise floor is below 5% of the smallest effect a claim needs) from benchmarks/precision.py's numbers
# (benchmarks/README.md): KL(float32 || bf16) of SmolLM2's dense model is 0.0007-0.0013 nats per token (0.0013 in
# [4096, 8192)), Gemma-3's 0.0005-0.0014; bf16 changes 11% (SmolLM2, NQ open book) and 15% (Gemma-3, TriviaQA)
# of greedy answers. 01 stays float32 (late-bin floor 0.0013 is 5.3% of a 10% growth of GPTQ g128's ~0.25 nats),
# 03 stays float32 (its claims turn on answers, which bf16 alone changes by 11-15%); 02 (protection moves KL by
# 0.05-0.34 nats: floor 0.4-2.6%) and 04 (schedules differ by >= 5% of ~0.8 nats: floor 2-3%) run in bf16, which
# also makes their compression passes 1.5x faster: bf16 is their parameters cell's default, so the committed cpu
# run is the notebook as it stands (no injected parameters). Their tiny profiles run float32 (FLOAT32), which keeps
# that path tested. The long profiles stay float32: on Gemma-3 the float32 head over its 262K-entry vocabulary
# dominates an evaluation, so bf16 buys little there.
FLOAT32 = {"dtype": "float32"}

# Per-notebook parameters for each profile; `cpu` is normally empty (the notebook's own defaults).
# A notebook without an entry gets only {"profile": name}. Tiny runs must finish in about 2 minutes
# on 2 CPU cores: tiny-<family> models, contexts of tens of tokens, one or two windows.
PROFILES: dict[str, dict[str, dict]] = {
    "00_quickstart": {
        "tiny": {"model": "tiny-llama", "seq_len": 64, "max_windows": 2},
        "cpu": {},
        "paper": {"model": "meta-llama/Llama-2-7b-hf", "dtype": "float16", "device": "cuda",
                  "seq_len": 4096, "max_windows": 40},
    },
    "04_hessian_scheduler": {
        "tiny": {"model": "tiny-llama", "calibration_count": 4, "calibration_seq_len": 32, "eval_seq_len": 64,
                 "max_windows": 6, "seeds": [0, 1], "ladder": [0.5, 0.7], "target_ratios": [], "nominal": [0.5, 0.7],
                 "quant_bits": [4], "ablations": ["decades"], "kind_probes": ["down_proj"], "dense_statistics": False,
                 **FLOAT32},
        # cpu: the notebook's defaults (SmolLM2, 3 seeds x 64 windows of 512 tokens, bf16: see FLOAT32)
        "cpu": {},
        # the second architecture: Gemma-3-270M, 3 seeds, the schedules at the 1.3x and 2x rungs, joint 4-bit at the
        # lower one, four layer-type probes, uniform from the dense Hessians at both rungs (HS4, HS6; first seed).
        # Measured: ~45 s compression + ~85 s evaluation per point (the float32 262K-entry head dominates), 33 points
        # and the ladder: ~1.9 h. No 3-bit (it collapses SmolLM2 at the lowest rung), no nominal 0.70 beyond its
        # ladder rung (uniform, first seed: 9.36x), no ablations.
        # Its ladder starts at 0.20: Gemma-3 is 1.33x dense already at 0.30 (SmolLM2 1.14x), 2.63x at 0.50.
        "long": {"model": "gemma3-270m", "max_windows": 16, "run_name": "gemma3", **FLOAT32,
                 "ladder": [0.2, 0.3, 0.4, 0.5, 0.6, 0.7], "target_ratios": [1.3, 2.0], "nominal": [], "quant_bits": [4],
                 "ablations": [], "kind_probes": ["k_proj", "v_proj", "o_proj", "down_proj"],
                 "results_path": "../results/hessian_scheduler_gemma3.jsonl"},
        "paper": {"model": "facebook/opt-1.3b", "dtype": "float16", "device": "cuda", "threads": 8,
                  "kind_probes": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
                  "calibration_count": 128, "calibration_seq_len": 2048, "eval_seq_len": 2048, "max_windows": None,
                  "ladder": [0.5, 0.6, 0.7, 0.8], "target_ratios": [1.3, 2.0, 3.5], "nominal": [0.7, 0.8],
                  "ablations": ["decades", "per weight", "levels 2", "probe 0.5", "spread 0.04"]},
    },
    "03_llm_kick": {
        "tiny": {"model": "tiny-llama", "threads": 1, "eval_seq_len": 32, "eval_windows": 3,
                 "methods": ["magnitude", "wanda"], "sparsities": [0.3, 0.5], "nm_patterns": ["2:4"],
                 "nm_methods": ["wanda"], "quantization": [{"method": "rtn", "bits": 8}, {"method": "gptq", "bits": 4}],
                 "quantization_group_size": 16, "seed_repeats": ["wanda"], "seed_repeat_sparsity": 0.3,
                 "task_counts": {"mmlu_examples": 3, "freebaseqa_examples": 3, "triviaqa_examples": 3,
                                 "nq_closed_examples": 3, "nq_open_examples": 3, "kv_examples": 2,
                                 "summarization_examples": 2, "instruction_examples": 2},
                 "task_settings": {"mmlu_shots": 0, "mmlu_scorings": ["generate", "loglik", "cloze"],
                                   "passage_chars": 100, "short_answer_tokens": 4, "kv_pairs": 2, "kv_long_pairs": 3,
                                   "kv_new_tokens": 8, "summary_article_tokens": 32, "summary_new_tokens": 8,
                                   "instruction_new_tokens": 8},
                 # a random model is at the floor everywhere: name the swept tasks so every cell runs
                 "sweep_tasks": ["freebaseqa", "nq_open_book"],
                 "focus_tasks": ["kv_retrieval", "summarization", "instruction_following"],
                 "focus_points": [{"method": "rtn", "bits": 8}, {"method": "wanda", "sparsity": 0.5}],
                 "calibration_samples": 2, "calibration_seq_len": 32, "ablation_samples": [2, 4],
                 "ablation_seeds": [0, 1], "ablation_tasks": {"nq_open_book": 0.3}},
        # cpu: the notebook's defaults (SmolLM2: the dense model on every task at full size, the sweep on the
        # tasks clearly above the floor, the focus tasks at the damage-matched and the nominal 50% and RTN 8-bit)
        "cpu": {},
        # the knowledge tasks on the second model: Gemma-3-270M (base), where SmolLM2 sits at the floor: TriviaQA
        # closed book on all 3,000 questions at every working point (KI1, KI2, KI8), FreebaseQA 1,000 dense only, NQ
        # open book and key-value retrieval at Wanda 30% / 50% and RTN 8-bit (KI5 on a base model). The sweep: 10 /
        # 20 / 25 / 30 / 50% for the three pruners (KI1's 10-30%), 2:4, 4:8 and 1:4 for Wanda and SparseGPT (1:4
        # beside unstructured 25%: KI2 where N:M still works; 2:4 and 4:8 beside unstructured 50%, where they may be
        # collapsed on this model, as on SmolLM2, 4.8-7.3x), RTN / GPTQ 8-bit and GPTQ 4-bit: 24 points. working_only:
        # a point beyond 3x dense perplexity skips its tasks (no verdict reads them). Sized from
        # benchmarks/kick_task_costs.py --batch-sizes (float32, 2 cores): 0.178 s per TriviaQA answer in batches of
        # 32 (1.94x batch 8's, identical answers), so 534 s per point, + 8 WikiText-2 windows (~70 s) + compression
        # (~60 s): ~11 min per working point, ~2.5 min per collapsed one; with ~18 working points, the dense pass on
        # every task (~17 min) and 3 focus points (~4 min each): ~4 h over two sessions, resumable (the first 16
        # points in one, 10%, 20% and 4:8 added in the next). The calibration ablation (KI6: Wanda and SparseGPT at
        # 50%, where both still work here, 2.66x / 2.70x dense, 5 seeds x 8 / 32 / 128 sequences) on the 8 windows
        # alone: 30 points, 3,148 s measured (compression 9-146 s + perplexity and KL 42-68 s a point); a task at
        # every point would add TriviaQA's 534 s (~4.5 h), beyond the profile's budget. MMLU (1,000 questions,
        # 0-shot, letter and cloze log-likelihood) on the dense model only: where the base model stands against
        # chance (SmolLM2's letter scoring is at chance), not swept.
        "long": {"model": "gemma3-270m", "run_name": "gemma3", "eval_windows": 8,
                 "sparsities": [0.1, 0.2, 0.25, 0.3, 0.5], "nm_patterns": ["2:4", "4:8", "1:4"], "seed_repeats": [],
                 "working_only": True,
                 "task_counts": {"mmlu_examples": 1000, "freebaseqa_examples": 1000, "triviaqa_examples": 3000,
                                 "nq_closed_examples": 0, "nq_open_examples": 300, "kv_examples": 100,
                                 "summarization_examples": 0, "instruction_examples": 0},
                 "task_settings": {"mmlu_shots": 0, "mmlu_scorings": ["loglik", "cloze"], "passage_chars": 3072,
                                   "short_answer_tokens": 12, "short_answer_batch": 32, "kv_pairs": 3,
                                   "kv_long_pairs": 0, "kv_new_tokens": 48, "summary_article_tokens": 512,
                                   "summary_new_tokens": 64, "instruction_new_tokens": 64},
                 "sweep_tasks": ["triviaqa_closed_book"], "dense_only_tasks": ["freebaseqa", "mmlu"],
                 "focus_tasks": ["nq_open_book", "kv_retrieval"],
                 "focus_points": [{"method": "wanda", "sparsity": 0.3}, {"method": "wanda", "sparsity": 0.5},
                                  {"method": "rtn", "bits": 8}],
                 "ablation_tasks": {},
                 "results_path": "../results/03_llm_kick_gemma3.jsonl",
                 "records_dir": "../results/03_llm_kick_gemma3_records"},
        "paper": {"model": "lmsys/vicuna-7b-v1.5", "dtype": "float16", "device": "cuda", "threads": None,
                  "eval_seq_len": 4096, "eval_windows": None, "sparsities": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
                  "quantization": [{"method": "rtn", "bits": 8}, {"method": "gptq", "bits": 8},
                                   {"method": "gptq", "bits": 4}, {"method": "gptq", "bits": 3}],
                  "task_counts": {"mmlu_examples": None, "freebaseqa_examples": None, "triviaqa_examples": None,
                                  "nq_closed_examples": None, "nq_open_examples": None, "kv_examples": 100,
                                  "summarization_examples": 90, "instruction_examples": 80},
                  "task_settings": {"mmlu_shots": 5, "mmlu_scorings": ["generate", "loglik", "cloze"],
                                    "passage_chars": 3072, "short_answer_tokens": 12, "kv_pairs": 20,
                                    "kv_long_pairs": 50, "kv_new_tokens": 48, "summary_article_tokens": 1536,
                                    "summary_new_tokens": 256, "instruction_new_tokens": 512},
                  "judges": ["rouge", "embedding"], "dense_only_tasks": [],
                  "openai_judge": {"base_url": "https://api.openai.com/v1", "model": "gpt-4",
                                   "api_key_env": "OPENAI_API_KEY"},
                  "focus_points": [{"method": "rtn", "bits": 8}, {"method": "gptq", "bits": 4},
                                   {"method": "wanda", "sparsity": 0.5}, {"method": "sparsegpt", "sparsity": 0.5}],
                  "calibration_samples": 128, "calibration_seq_len": 2048, "ablation_samples": [8, 32, 128, 256]},
    },
    "01_context_length_kl": {
        "tiny": {"model": "tiny-gemma3", "max_context": 128, "n_windows": 3, "smallest_context": 16,
                 "methods": [{"method": "magnitude", "sparsity": 0.5}, {"method": "random", "sparsity": 0.1},
                             {"method": "rtn", "bits": 4, "group_size": None},
                             {"method": "gptq", "bits": 3, "group_size": None},
                             {"method": "rtn", "bits": 3, "group_size": None, "blocks": "full_attention"},
                             {"method": "rtn", "bits": 3, "group_size": None, "blocks": "sliding_attention"}],
                 "calibration_samples": 4, "calibration_seq_len": 64, "simulation_positions": 128},
        "cpu": {},
        # Gemma-3-270M at 16K tokens, 8 windows of 16,384 tokens: the mechanism test (LC8: 4-bit weights and the 3-bit
        # KV cache of its 3 global vs its 15 sliding-window (512-token) blocks) and LC1-LC4 on a second model: 4-bit
        # g128 on every block, Wanda 30% (Gemma-3's damage-matched point for Wanda 50% on LLaMA-2-7B: 25% is 1.08x
        # dense perplexity on 512-token windows) and random 1% (LC4 where the model works). Measured
        # (benchmarks/kl_memory.py --model gemma3-270m --context 16384 --threads 2, float32): per 16K window the
        # dense pass 112 s, a compressed forward 48 s (sliding-window blocks attended block by block; 141 s with
        # sdpa over the whole masked square), the head + NLL + KL 139 s; peak RSS 2.7 GiB. 7 variants x 8 windows x
        # ~190 s ~ 3.0 h + the dense pass 15 min, resumable across sessions (rows are written per variant). No
        # 3-bit weights: RTN 3-bit g128 is 5.8x dense perplexity on SmolLM2 (notebook 02), collapsed.
        "long": {"model": "gemma3-270m", "max_context": 16384, "n_windows": 8, "smallest_context": 64,
                 "methods": [{"method": "rtn", "bits": 4, "group_size": 128, "blocks": "full_attention"},
                             {"method": "rtn", "bits": 4, "group_size": 128, "blocks": "sliding_attention"},
                             {"method": "rtn", "bits": 4, "group_size": 128}, {"method": "wanda", "sparsity": 0.3},
                             {"method": "random", "sparsity": 0.01}],
                 "activation_methods": [{"kv_bits": 3, "blocks": "full_attention"},
                                        {"kv_bits": 3, "blocks": "sliding_attention"}],
                 "run_name": "gemma3-16k", "results_path": "../results/01_context_length_kl_gemma3_16k.jsonl"},
        # The check at Gemma-3's native 32,768 tokens (the paper's longest context): 5 windows, 4-bit g128 on every
        # block and Wanda 30% (the damage-matched pruning point), so LC1-LC3 rest on >= 5 windows there too.
        # Estimated from the 16K measurements (full-attention blocks quadratic, the rest linear): ~250 s a dense
        # window and ~400 s a compressed one (forward ~115 s, head + KL ~280 s): ~1.5 h. Measured (float32, 2
        # cores): the dense pass ~250 s a window (cached, 84 MB a window), RTN 4-bit g128 2,053 s for the 5
        # windows (411 s a window): ~1.4 h with Wanda 30%.
        "long32k": {"model": "gemma3-270m", "max_context": 32768, "n_windows": 5, "smallest_context": 64,
                    "methods": [{"method": "rtn", "bits": 4, "group_size": 128}, {"method": "wanda", "sparsity": 0.3}],
                    "activation_methods": [],
                    "run_name": "gemma3-32k", "results_path": "../results/01_context_length_kl_gemma3_32k.jsonl"},
        "paper": {"model": "togethercomputer/LLaMA-2-7B-32K", "dtype": "float16", "device": "cuda",
                  "max_context": 32768, "n_windows": 8, "smallest_context": 1024,
                  "calibration_samples": 128, "calibration_seq_len": 2048, "simulation_positions": 4096},
    },
    "02_outlier_protection": {
        "tiny": {"model": "tiny-llama", "max_context": 64, "n_windows": 3, "smallest_context": 8,
                 "grids": [{"method": "rtn", "bits": 3, "group_size": 32}],
                 "protections": [["magnitude", 0.05], ["random", 0.05]],
                 "heatmap_fraction": 0.05, "calibration_samples": 4, "calibration_seq_len": 32, **FLOAT32},
        "cpu": {},  # the notebook's defaults, bf16 (see FLOAT32 above)
        # LC6 where notebook 01 finds growth on the second model: Gemma-3-270M, 8 windows of 16,384 tokens (the 01
        # long run's windows). RTN 4-bit g128 grows there when only the 3 global blocks are quantized (late/early
        # 1.30 [1.15, 1.48], 8 windows), not when only the sliding-window ones are (1.00 [0.94, 1.06]); on every
        # block it grows 1.21 [1.07, 1.37] at 2.18x dense perplexity (working). The grids:
        # 4-bit g128 on the global blocks (the growing setting) and on every block, each unprotected and with 2% of
        # its groups at 8 bits by magnitude (the paper's rule); random 2% on the growing grid (LC7's control). No
        # Hessian rule (its 3 seeds would double the run). 5 variants x ~26 min (a compressed 16K window 193 s, 01
        # long) + the dense pass 15 min: ~2.4 h, resumable.
        "long": {"model": "gemma3-270m", "max_context": 16384, "n_windows": 8, "smallest_context": 64,
                 "grids": [{"method": "rtn", "bits": 4, "group_size": 128, "blocks": "full_attention"},
                           {"method": "rtn", "bits": 4, "group_size": 128}],
                 "protections": [["magnitude", 0.02], ["random", 0.02]],
                 "other_protections": [["magnitude", 0.02]], "hessian_seeds": [0], "heatmap_fraction": 0.02,
                 **FLOAT32, "run_name": "gemma3-16k", "results_path": "../results/02_outlier_protection_gemma3_16k.jsonl"},
        "paper": {"model": "togethercomputer/LLaMA-2-7B-32K", "dtype": "float16", "device": "cuda",
                  "max_context": 32768, "n_windows": 8, "smallest_context": 1024,
                  "grids": [{"method": "rtn", "bits": 3, "group_size": 128}, {"method": "rtn", "bits": 4, "group_size": 128}],
                  "protections": [["magnitude", 0.005], ["magnitude", 0.01], ["magnitude", 0.02], ["magnitude", 0.05],
                                  ["random", 0.02], ["hessian", 0.02]],
                  "calibration_samples": 128, "calibration_seq_len": 2048},
    },
}


# --------------------------------------------------------------------------- notebooks and parameters
def find_notebooks(folder: Path, only: list[str] | None = None) -> list[Path]:
    """notebooks/NN_*.ipynb in order; `only` keeps those whose name starts with one of the given names."""
    found = sorted(p for p in Path(folder).glob("*.ipynb") if NOTEBOOK_NAME.match(p.name))
    if only:
        found = [p for p in found if any(p.stem == o or p.stem.startswith(o) or p.name == o for o in only)]
        if not found:
            raise ValueError(f"--only {only} matches no notebook in {folder}; expected a name such as "
                             f"'00_quickstart' or a prefix such as '00'.")
    return found


def _source(cell: dict) -> str:
    """A notebook cell's source as one string (nbformat stores a list of lines or a string)."""
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _code_cells(notebook: Path) -> list[dict]:
    """The notebook's code cells as plain dicts (source joined), read as JSON: no jupyter package needed."""
    cells = json.loads(Path(notebook).read_text(encoding="utf-8"))["cells"]
    return [{"source": _source(c), "tags": c.get("metadata", {}).get("tags", [])}
            for c in cells if c["cell_type"] == "code"]


def notebook_defaults(notebook: Path) -> dict:
    """The values of the notebook's `parameters` cell (literal assignments only; others are left out),
    as papermill reads them, without needing papermill."""
    defaults = {}
    for cell in _code_cells(notebook):
        if "parameters" not in cell["tags"]:
            continue
        for node in ast.parse(cell["source"]).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                try:
                    defaults[node.targets[0].id] = ast.literal_eval(node.value)
                except ValueError:
                    continue
    return defaults


def profile_parameters(notebook: Path, profile: str, overrides: dict | None = None) -> dict:
    """Parameters to inject for `profile`: PROFILES' entry plus `profile`, minus the notebook's defaults; then
    `overrides` where the notebook declares them (always injected: they were asked for)."""
    if profile not in PROFILE_NAMES:
        raise ValueError(f"profile={profile!r}; expected one of {PROFILE_NAMES}.")
    defaults = notebook_defaults(notebook)
    wanted = {**PROFILES.get(Path(notebook).stem, {}).get(profile, {}), "profile": profile}
    if "profile" not in defaults:
        wanted.pop("profile")
    return {**{k: v for k, v in wanted.items() if k not in defaults or defaults[k] != v},
            **{k: v for k, v in (overrides or {}).items() if k in defaults}}


def code_digest(notebook: Path, parameters: dict) -> str:
    """sha256 of the notebook's code cells (not outputs, not markdown) and the injected parameters."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    digest = hashlib.sha256(json.dumps(parameters, sort_keys=True, default=str).encode())
    for cell in nb.cells:
        if cell.cell_type == "code" and "injected-parameters" not in cell.metadata.get("tags", []):
            digest.update(cell.source.encode())
    return digest.hexdigest()


def run_parameter(notebook: Path, parameters: dict, name: str, default=None):
    """A parameter as the run sees it: the injected value, else the notebook's default."""
    return parameters[name] if name in parameters else notebook_defaults(notebook).get(name, default)


def _results_recorded(notebook: Path, parameters: dict, cwd: Path) -> bool:
    results = run_parameter(notebook, parameters, "results_path")
    if not results:
        return True
    path = cwd / results
    return path.exists() and path.stat().st_size > 0


def committed_rows(notebook: Path, parameters: dict, repo_root: Path = REPO_ROOT) -> Path:
    """Where the run these parameters make keeps its frozen rows: results/committed/<NN>_verdicts[_<run_name>]/
    rows.jsonl.gz (the notebooks name a run's outputs after `run_name`; the profile's default run has none)."""
    from ..results import run_suffix

    name = f"{notebook.stem[:2]}_verdicts" + run_suffix(run_parameter(notebook, parameters, "run_name", ""),
                                                        run_parameter(notebook, parameters, "model", ""))
    return Path(repo_root) / "results" / "committed" / name / "rows.jsonl.gz"


def in_progress(frozen: Path) -> bool:
    """Whether a committed run (its frozen rows.jsonl.gz) is a checkpoint of a run still measuring: rows,
    but none of the verdict frames its notebook writes beside them when it finishes (claims.board)."""
    from ..claims.board import committed_frame_paths

    return not committed_frame_paths(Path(frozen).parent)


def seed_results(notebook: Path, parameters: dict, cwd: Path, frozen: list[Path], *, log=print) -> None:
    """Append the rows of each frozen run (`ResultsTable.freeze`) to the notebook's results table (its
    `results_path` as run from `cwd`), skipping rows it already holds."""
    from ..results import ResultsTable

    results = run_parameter(notebook, parameters, "results_path")
    if not results:
        raise ValueError(f"{notebook.name} declares no results_path, so committed rows have nowhere to go.")
    table = ResultsTable(cwd / results)
    records = run_parameter(notebook, parameters, "records_dir")
    for path in frozen:
        log(f"{table.seed(path)} rows seeded from {path.parent.name}")
        if records and (path.parent / "records").is_dir():  # a task notebook's answers (experiments.kick)
            from ..experiments.kick import seed_records

            log(f"{seed_records(path.parent / 'records', cwd / records)} task records seeded from {path.parent.name}")


def checkpoint(notebook: Path, parameters: dict, cwd: Path, repo_root: Path = REPO_ROOT, *, log=print) -> Path:
    """Freeze what a run still measuring holds so far (its results table as run from `cwd`, and a task
    notebook's records behind its score rows) where its committed run lives (`committed_rows`): a checkpoint
    that a fresh checkout goes on with (`reproduce(from_committed=True, resume=True)`); the inverse of
    `seed_results`. Refuses to replace a finished committed run (one with verdict frames). Returns the folder."""
    from ..results import ResultsTable

    results = run_parameter(notebook, parameters, "results_path")
    table = Path(cwd) / results if results else None
    if table is None or not table.is_file():
        raise ValueError(f"{notebook.name}: no results table to checkpoint ({table or 'no results_path declared'}); "
                         "run it first (reproduce --profile ... --only ...).")
    frozen = committed_rows(notebook, parameters, repo_root)
    if frozen.is_file() and not in_progress(frozen):
        raise ValueError(f"{_relative(frozen.parent, repo_root)} holds a finished run (its verdict frames); a "
                         "checkpoint would replace its rows. Re-execute the notebook to commit a new finished run.")
    rows = ResultsTable(table)
    log(f"{notebook.stem}: {rows.freeze(frozen)} rows frozen in {_relative(frozen, repo_root)}")
    records = run_parameter(notebook, parameters, "records_dir")
    if records and (Path(cwd) / records).is_dir():  # a task notebook's answers (experiments.kick)
        from ..experiments.core import latest_frame
        from ..experiments.kick import freeze_records

        count = freeze_records(latest_frame(rows), Path(cwd) / records, frozen.parent / "records")
        log(f"{notebook.stem}: {count} task records frozen in {_relative(frozen.parent / 'records', repo_root)}")
    return frozen.parent


def checkpoint_runs(profile: str, *, only: list[str] | None = None, output_dir: Path | None = None,
                    inplace: bool = False, notebooks_dir: Path | None = None, repo_root: Path = REPO_ROOT,
                    overrides: dict | None = None, log=print) -> list[Path]:
    """`checkpoint` each selected notebook of `profile` that has a results table, where `reproduce` with the
    same arguments runs it (the repository with `inplace`, else `output_dir`); returns the folders written
    (commit them: `git add results/committed/<folder>`)."""
    repo_root = Path(repo_root).resolve()
    cwd = _run_root(profile, inplace, output_dir, repo_root) / "notebooks"
    notebooks = profile_notebooks(profile, Path(notebooks_dir or repo_root / "notebooks").resolve(), only)
    return [checkpoint(nb, profile_parameters(nb, profile, overrides), cwd, repo_root, log=log) for nb in notebooks]


def profile_notebooks(profile: str, notebooks_dir: Path, only: list[str] | None = None) -> list[Path]:
    """The notebooks a run of `profile` executes: `find_notebooks`, and for a second run (SECOND_RUN_PROFILES)
    only those with an entry for it in PROFILES (an error when none is selected)."""
    notebooks = find_notebooks(notebooks_dir, only)
    if profile not in SECOND_RUN_PROFILES:
        return notebooks
    notebooks = [nb for nb in notebooks if profile in PROFILES.get(nb.stem, {})]
    if not notebooks:
        having = sorted(stem[:2] for stem, entries in PROFILES.items() if profile in entries)
        raise ValueError(f"no selected notebook has a `{profile}` profile entry (see PROFILES); "
                         f"these have one: {', '.join(having) or 'none'} (--only NN).")
    return notebooks


def _run_root(profile: str, inplace: bool, output_dir: Path | None, repo_root: Path) -> Path:
    """Where a run's results/, figures/ and notebooks/ (its working directory) are: the repository with
    `inplace`, else `output_dir` (default build/<profile>)."""
    return repo_root if inplace else Path(output_dir or repo_root / "build" / profile).resolve()


def is_up_to_date(notebook: Path, output: Path, parameters: dict, cwd: Path) -> bool:
    if not output.exists():
        return False
    import nbformat

    recorded = nbformat.read(str(output), as_version=4).metadata.get("reproduce", {})
    return (recorded.get("digest") == code_digest(notebook, parameters) and not recorded.get("failed")
            and _results_recorded(notebook, parameters, cwd))


# --------------------------------------------------------------------------- execution
def _scrub(value, replacements: list[tuple[str, str]]):
    """Replace machine-specific path prefixes in every string of a notebook (outputs and metadata)."""
    if isinstance(value, str):
        for old, new in replacements:
            value = value.replace(old, new)
        return value
    if isinstance(value, list):
        return [_scrub(v, replacements) for v in value]
    if isinstance(value, dict):
        return type(value)({k: _scrub(v, replacements) for k, v in value.items()})
    return value


def scrub_paths(nb, root: Path = REPO_ROOT):
    """The notebook with the repository path made relative and the home folder written as ~."""
    import nbformat

    home = str(Path.home())
    replacements = [(str(root) + os.sep, ""), (str(root), ".")]
    if home not in ("/", ""):
        replacements.append((home, "~"))
    return nbformat.from_dict(_scrub(nbformat.from_dict(nb), replacements))


def execute(notebook: Path, output: Path, parameters: dict, cwd: Path, *, profile: str = "custom",
            timeout: int | None = None, root: Path = REPO_ROOT, stream=None) -> None:
    """Run one notebook with papermill; the executed copy records how it was made (even on failure).

    Paths under `root` in the executed copy are made relative to it (see `scrub_paths`). stream: a text file
    (e.g. sys.stdout) the cells' printed output is copied to as it comes, so a run in the background shows
    its progress (each recorded variant) in its log; the executed copy is also saved after every cell.
    """
    import nbformat
    import papermill

    output.parent.mkdir(parents=True, exist_ok=True)
    cwd.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    error = None
    try:
        papermill.execute_notebook(str(notebook), str(output), parameters=parameters, cwd=str(cwd),
                                   progress_bar=False, execution_timeout=timeout, stdout_file=stream,
                                   stderr_file=stream)
    except Exception as err:  # noqa: BLE001 - recorded, then raised again
        error = err
    if output.exists():
        nb = scrub_paths(nbformat.read(str(output), as_version=4), root)
        nb.metadata["reproduce"] = {"profile": profile, "parameters": parameters,
                                    "digest": code_digest(notebook, parameters),
                                    "seconds": round(time.perf_counter() - started, 1), "failed": error is not None}
        nbformat.write(nb, str(output))
    if error is not None:
        raise error


PROSE_HEADING = "## What the numbers show"
PROSE_PENDING = (PROSE_HEADING + " (this run)\n*Written from this run's printed numbers once it has finished: the "
                 "notebook's own prose is about its cpu run (another model), so it is not repeated here.*")


def carry_prose(executed: Path, previous: Path) -> int:
    """A second committed run's interpretation (its markdown cells that start with PROSE_HEADING) is its own:
    rewrite `executed`'s such cells with `previous`'s (the committed copy of an earlier run of this profile), or
    with PROSE_PENDING where there is none, since the notebook's prose quotes the cpu run's numbers. Returns the
    number of cells rewritten."""
    nb = json.loads(Path(executed).read_text(encoding="utf-8"))
    old = json.loads(Path(previous).read_text(encoding="utf-8"))["cells"] if Path(previous).is_file() else []
    kept = [_source(c) for c in old if c["cell_type"] == "markdown" and _source(c).startswith(PROSE_HEADING)]
    rewritten = 0
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown" and _source(cell).startswith(PROSE_HEADING):
            text = kept[rewritten] if rewritten < len(kept) else PROSE_PENDING
            cell["source"] = text.splitlines(keepends=True)
            rewritten += 1
    Path(executed).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return rewritten


def execute_in_process(notebook: Path, parameters: dict, cwd: Path, *, log=print) -> float:
    """Run the notebook's code cells in this Python process, `parameters` assigned right after the
    `parameters` cell (as papermill injects them); returns the seconds taken.

    For machines without a Jupyter kernel (a lent GPU with only torch installed): the same cells run,
    no executed copy is written and figures go where the notebook saves them. `display` prints the
    object's text form. A failing cell raises RuntimeError naming the cell's number and first line.
    """
    import traceback

    import matplotlib
    matplotlib.use("Agg")
    cells = _code_cells(notebook)
    if not any("parameters" in cell["tags"] for cell in cells):
        raise ValueError(f"{notebook} has no cell tagged 'parameters'; expected one (papermill's convention).")
    cwd = Path(cwd)
    cwd.mkdir(parents=True, exist_ok=True)
    namespace = {"__name__": "__main__", "display": lambda *objects: print(*objects)}
    injected = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
    started = time.perf_counter()
    previous = Path.cwd()
    os.chdir(cwd)
    try:
        for number, cell in enumerate(cells, 1):
            try:
                exec(compile(cell["source"], f"<{Path(notebook).stem} cell {number}>", "exec"), namespace)
                if "parameters" in cell["tags"] and injected:
                    exec(compile(injected, f"<{Path(notebook).stem} injected parameters>", "exec"), namespace)
            except Exception as err:  # noqa: BLE001 - named with its cell, then raised
                first = next((line for line in cell["source"].splitlines() if line.strip()), "")
                log(traceback.format_exc(limit=-6))
                raise RuntimeError(f"cell {number} ({first[:60]!r}) failed: {type(err).__name__}: {err}") from err
    finally:
        os.chdir(previous)
        import matplotlib.pyplot as plt
        plt.close("all")
    return time.perf_counter() - started


@dataclass
class Outcome:
    notebook: str
    status: str            # "ran" | "skipped" | "failed"
    seconds: float = 0.0
    error: str = ""
    output: Path | None = None
    parameters: dict = field(default_factory=dict)


def reproduce(profile: str, *, only: list[str] | None = None, redo: bool = False,
              output_dir: Path | None = None, inplace: bool = False,
              notebooks_dir: Path | None = None, repo_root: Path = REPO_ROOT,
              overrides: dict | None = None, kernel: bool = True, from_committed: bool = False,
              resume: bool = False, log=print, stream=None) -> list[Outcome]:
    """Run the notebooks of `notebooks_dir` in `profile`; one failure does not stop the others.

    from_committed: re-execute only the notebooks that have committed runs (results/committed/NN_verdicts*/
    rows.jsonl.gz), each after seeding its results table with those rows, so nothing is measured again
    (`make figures`); the others are skipped with a note, as is a run in progress (`in_progress`: its rows
    are committed so a fresh checkout can go on with it, its verdicts not yet) unless `resume`, which
    re-executes it and so measures what it still lacks.

    overrides: parameters set on top of the profile's (e.g. {"device": "cuda"}), for every notebook that
    declares them. kernel=False runs the code cells in this process (`execute_in_process`): no executed
    copy, every notebook runs (nothing is skipped), for a machine with torch but no Jupyter.
    """
    if inplace and (profile not in INPLACE_PROFILES or overrides or not kernel):
        raise ValueError(f"--inplace writes into the committed notebooks, figures and results, which carry the "
                         f"{' and '.join(INPLACE_PROFILES)} profiles' runs made with a kernel and no --set; "
                         f"it cannot be used with --profile {profile}, --set or --no-kernel.")
    repo_root = Path(repo_root).resolve()
    notebooks_dir = Path(notebooks_dir or repo_root / "notebooks").resolve()
    output_dir = _run_root(profile, False, output_dir, repo_root)
    run_root = _run_root(profile, inplace, output_dir, repo_root)
    cwd = run_root / "notebooks"
    notebooks = profile_notebooks(profile, notebooks_dir, only)
    outcomes = []
    total = time.perf_counter()
    log(f"reproduce: profile={profile}, {len(notebooks)} notebook(s), executed copies in "
        f"{_relative(output_dir / 'notebooks', repo_root)}, figures in {_relative(run_root / 'figures', repo_root)}")
    for index, notebook in enumerate(notebooks, 1):
        output = output_dir / "notebooks" / notebook.name
        prefix = f"[{index}/{len(notebooks)}] {notebook.stem}"
        try:
            parameters = profile_parameters(notebook, profile, overrides)
        except Exception as err:  # noqa: BLE001 - an unreadable notebook is one failure among others
            outcomes.append(Outcome(notebook.stem, "failed", error=f"{type(err).__name__}: {err}"))
            log(f"{prefix}: FAILED to read its parameters: {err}")
            continue
        if from_committed:
            frozen = committed_rows(notebook, parameters, repo_root)
            if not frozen.is_file():
                outcomes.append(Outcome(notebook.stem, "skipped", output=output, parameters=parameters))
                log(f"{prefix}: no committed run of this profile ({_relative(frozen, repo_root)}), skipped")
                continue
            if in_progress(frozen) and not resume:
                outcomes.append(Outcome(notebook.stem, "skipped", output=output, parameters=parameters))
                log(f"{prefix}: the committed run in {_relative(frozen.parent, repo_root)} is still in progress (rows, "
                    "no verdict frames yet), skipped; --resume goes on with it (measuring what it lacks)")
                continue
            seed_results(notebook, parameters, cwd, [frozen], log=lambda text: log(f"{prefix}: {text}"))
        elif kernel and not redo and is_up_to_date(notebook, output, parameters, cwd):
            outcomes.append(Outcome(notebook.stem, "skipped", output=output, parameters=parameters))
            log(f"{prefix}: up to date, skipped (--redo to run it anyway)")
            continue
        log(f"{prefix}: running with {parameters or 'its defaults'} ...")
        started = time.perf_counter()
        try:
            with _recorded_only(from_committed and not resume):  # make figures measures nothing
                if kernel:
                    execute(notebook, output, parameters, cwd, profile=profile, root=repo_root, stream=stream)
                else:
                    execute_in_process(notebook, parameters, cwd, log=log)
        except Exception as err:  # noqa: BLE001 - report at the end, go on with the next notebook
            seconds = time.perf_counter() - started
            message = _short_error(err)
            outcomes.append(Outcome(notebook.stem, "failed", seconds, message, output, parameters))
            log(f"{prefix}: FAILED after {seconds:.0f} s: {message}")
            continue
        seconds = time.perf_counter() - started
        if not kernel:
            output = None
        elif inplace and profile == "cpu":
            shutil.copyfile(output, notebook)
        elif inplace:  # a second committed run beside the notebook, which keeps the cpu run
            copy = notebooks_dir / "runs" / f"{notebook.stem}.{profile}.ipynb"
            copy.parent.mkdir(exist_ok=True)
            carry_prose(output, copy)
            shutil.copyfile(output, copy)
        outcomes.append(Outcome(notebook.stem, "ran", seconds, output=output, parameters=parameters))
        log(f"{prefix}: done in {seconds:.0f} s")
    summary = write_summary(run_root / "figures", "cpu" if inplace else profile)
    failed = [o for o in outcomes if o.status == "failed"]
    log(f"reproduce: {sum(o.status == 'ran' for o in outcomes)} ran, "
        f"{sum(o.status == 'skipped' for o in outcomes)} skipped, {len(failed)} failed "
        f"in {time.perf_counter() - total:.0f} s; summary in {_relative(summary, repo_root)}")
    for outcome in failed:
        where = f" (see {_relative(outcome.output, repo_root)})" if outcome.output and outcome.output.exists() else ""
        log(f"  FAILED {outcome.notebook}: {outcome.error}{where}")
    return outcomes


@contextlib.contextmanager
def _recorded_only(on: bool):
    """Within the block, with `on`, the Runner of this process and of the kernels it starts measures nothing
    (experiments.core.RECORDED_ONLY); the variable is put back as it was."""
    from ..experiments.core import RECORDED_ONLY

    before = os.environ.get(RECORDED_ONLY)
    if on:
        os.environ[RECORDED_ONLY] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(RECORDED_ONLY, None)
        else:
            os.environ[RECORDED_ONLY] = before


def _short_error(err: Exception) -> str:
    name = getattr(err, "ename", None) or type(err).__name__
    value = getattr(err, "evalue", None) or str(err)
    lines = [line for line in str(value).splitlines() if line.strip()]
    return f"{name}: {lines[-1] if lines else ''}"[:300]


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- figures/SUMMARY.md
def write_summary(figures_dir: Path, profile: str) -> Path:
    """figures/SUMMARY.md: every PNG in the folder with its one-line finding (from `<name>.md`), then
    the notebooks' verdict tables (`<NN>_verdicts[_<run name>].md`)."""
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# Figures", "",
             f"Made by `python -m helpers.running.reproduce --profile {profile}` "
             f"({_dt.date.today().isoformat()}). Each figure's data is the CSV beside it; each line is the "
             "finding its notebook wrote (`helpers.plotting.save_figure(..., finding=...)`). Figures whose "
             "name ends in a run name (e.g. `_gemma3-16k`) come from `--profile long`.", ""]
    pngs = sorted(figures_dir.glob("*.png"))
    for png in pngs:
        note = png.with_suffix(".md")
        finding = note.read_text(encoding="utf-8").strip() if note.exists() else \
            "*No finding recorded: pass `finding=` to `helpers.plotting.save_figure`.*"
        table = f" ([data]({png.with_suffix('.csv').name}))" if png.with_suffix(".csv").exists() else ""
        lines.append(f"- [{png.name}]({png.name}){table}: {finding}")
    if not pngs:
        lines.append("*No figures yet.*")
    verdicts = sorted(figures_dir.glob("*_verdicts*.md"))  # helpers.claims.board.record_verdicts
    if verdicts:
        lines += ["", "## Verdicts", "", "Each table is computed by its notebook from the numbers above "
                  "(`helpers.claims.board.record_verdicts`).", ""]
        for note in verdicts:
            lines += [note.read_text(encoding="utf-8").strip(), ""]
    path = figures_dir / "SUMMARY.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m helpers.running.reproduce", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=PROFILE_NAMES, default="cpu",
                        help="tiny: seconds, random tiny model; cpu: the notebooks' defaults; long: a second "
                             "offline model (01: 16K context; 04: Gemma-3-270M); paper: GPU scale")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="run only this notebook (name or prefix such as 02); repeatable")
    parser.add_argument("--redo", action="store_true", help="run notebooks even when their outputs are up to date")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="where executed notebooks go (default build/<profile>)")
    parser.add_argument("--inplace", action="store_true",
                        help="cpu / long: write the executed notebook over notebooks/ (long: notebooks/runs/), "
                             "figures into figures/ and results into results/")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="overrides",
                        help="set a parameter on top of the profile's, in every notebook that declares it; VALUE "
                             "is a Python literal or a bare string (e.g. --set device=cuda --set dtype=float16)")
    parser.add_argument("--from-committed", action="store_true",
                        help="re-execute only the notebooks with committed runs (results/committed/), over their "
                             "committed rows: every figure and verdict regenerated, nothing measured (make figures)")
    parser.add_argument("--resume", action="store_true",
                        help="with --from-committed: also go on with committed runs still in progress (rows "
                             "committed, no verdict frames yet), measuring what they lack")
    parser.add_argument("--checkpoint", action="store_true",
                        help="measure nothing: freeze the rows (and task records) the selected runs hold so far "
                             "under results/committed/, for a fresh checkout to go on with (--from-committed "
                             "--resume); then commit that folder")
    parser.add_argument("--no-kernel", action="store_true",
                        help="run the code cells in this process (no Jupyter needed, no executed copy written; "
                             "for a machine with torch alone)")
    return parser


def parse_overrides(pairs: list[str]) -> dict:
    """['device=cuda', 'max_windows=2'] -> {'device': 'cuda', 'max_windows': 2}; a value that is no Python
    literal is taken as a string."""
    overrides = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.isidentifier():
            raise ValueError(f"--set {pair!r}: expected NAME=VALUE with NAME a parameter name, e.g. device=cuda.")
        try:
            overrides[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[name] = value
    return overrides


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars are noise in executed notebooks
    try:
        if args.checkpoint:
            folders = checkpoint_runs(args.profile, only=args.only, output_dir=args.output_dir, inplace=args.inplace,
                                      overrides=parse_overrides(args.overrides))
            print("commit with: git add " + " ".join(_relative(f, REPO_ROOT) for f in folders) if folders
                  else "nothing to checkpoint: no selected notebook of this profile")
            return 0
        outcomes = reproduce(args.profile, only=args.only, redo=args.redo, output_dir=args.output_dir,
                             inplace=args.inplace, overrides=parse_overrides(args.overrides),
                             kernel=not args.no_kernel, from_committed=args.from_committed,
                             resume=args.resume, stream=sys.stdout)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 1 if any(o.status == "failed" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
