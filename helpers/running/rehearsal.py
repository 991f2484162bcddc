"""Rehearse the `paper` profile on any machine, offline, in about a minute.

    python -m helpers.running.rehearsal                        # CPU, in the paper profile's float16
    python -m helpers.running.rehearsal --device cuda          # the same on a GPU
    python -m helpers.running.rehearsal --only 03 --dtype bfloat16

Every notebook runs with the `paper` profile's parameters (`reproduce.PROFILES[...]["paper"]`) with three
things changed, and only these:
- each hub model id (Llama-2-7B, LLaMA-2-7B-32K, Vicuna-7B, OPT-1.3B) resolves, through the Hugging Face
  hub's own offline cache lookup, to a tiny random checkpoint of the same family (Llama or OPT; the 32K model
  keeps its linear RoPE x8 and 32,768 positions) with a real byte-level BPE tokenizer, written into a fresh
  cache folder (`HF_HUB_CACHE`). The hub id is what the notebook loads: the path `load_model` takes for a
  hub model is the path that runs;
- the sizes are cut to seconds (`CUTS`: contexts, windows, calibration samples and lengths, examples, new
  tokens); every other parameter (dtype, methods, sparsities, bit widths, group size 128, 5-shot MMLU,
  seeds, ablations) is the paper profile's;
- the device is `--device` (cpu by default), and notebook 03's GPT-4 judge posts to a stand-in
  OpenAI-compatible server on 127.0.0.1 that answers every request with the same scores, so the judge path
  (prompts, HTTP, parsing) runs without a key. Those scores mean nothing.

The notebooks run in this process (`reproduce.execute_in_process`: no Jupyter kernel needed); figures and
results go under `--output-dir` (default build/rehearsal), never into the committed figures/.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .reproduce import PROFILES, REPO_ROOT, Outcome, find_notebooks, notebook_defaults, parse_overrides, reproduce

# The sizes of each notebook's paper run, cut to seconds; the rest of the paper profile is kept.
CUTS: dict[str, dict] = {
    "00_quickstart": {"seq_len": 64, "max_windows": 2},
    "01_context_length_kl": {"max_context": 256, "n_windows": 2, "smallest_context": 32, "calibration_samples": 4,
                             "calibration_seq_len": 64, "simulation_positions": 128},
    "02_outlier_protection": {"max_context": 128, "n_windows": 2, "smallest_context": 16, "calibration_samples": 4,
                              "calibration_seq_len": 64},
    "03_llm_kick": {"eval_seq_len": 64, "eval_windows": 2,
                    "task_counts": PROFILES["03_llm_kick"]["tiny"]["task_counts"],  # the tiny profile's examples
                    "task_settings": {"mmlu_shots": 5, "mmlu_scorings": ["generate", "loglik", "cloze"],
                                      "passage_chars": 200, "short_answer_tokens": 4, "kv_pairs": 2, "kv_long_pairs": 3,
                                      "kv_new_tokens": 8, "summary_article_tokens": 48, "summary_new_tokens": 8,
                                      "instruction_new_tokens": 8},
                    "calibration_samples": 4, "calibration_seq_len": 32, "ablation_samples": [2, 4, 8],
                    "ablation_seeds": [0, 1],
                    # a random model is at the floor everywhere: name the swept tasks so every cell runs
                    "sweep_tasks": ["freebaseqa", "nq_open_book"],
                    "focus_tasks": ["kv_retrieval", "summarization", "instruction_following"]},
    "04_hessian_scheduler": {"calibration_count": 4, "calibration_seq_len": 32, "eval_seq_len": 64, "max_windows": 2,
                             "threads": 1, "seeds": [0, 1],
                             # a random stand-in's perplexity does not rise with sparsity: no damage ladder to read
                             "target_ratios": []},
}
STAND_IN_VOCAB = 384          # byte-level BPE trained on a slice of WikiText-2
STAND_IN_COMMIT = "0" * 40    # the snapshot name the cache's refs/main points to


def paper_models() -> dict[str, str]:
    """notebook stem -> the hub model id its paper profile names."""
    return {stem: entry["paper"]["model"] for stem, entry in PROFILES.items() if "model" in entry.get("paper", {})}


def stand_in_config(model_id: str):
    """A tiny random config of the hub model's family: OPT for OPT ids, Llama otherwise (Llama-2, Vicuna,
    LLaMA-2-7B-32K with its linear RoPE scaling x8 over 32,768 positions)."""
    import transformers as tf

    if "opt" in model_id.lower().split("/")[-1]:
        return tf.OPTConfig(vocab_size=STAND_IN_VOCAB, hidden_size=128, ffn_dim=256, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=2048, word_embed_proj_dim=128)
    long = "32k" in model_id.lower()
    return tf.LlamaConfig(vocab_size=STAND_IN_VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=4,
                          max_position_embeddings=32768 if long else 4096,
                          rope_scaling={"rope_type": "linear", "factor": 8.0} if long else None)


def stand_in_tokenizer():
    """A byte-level BPE tokenizer (<unk>, <s>, </s>) trained on the first 200,000 characters of WikiText-2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from ..data import load_dataset

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=STAND_IN_VOCAB, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator([load_dataset("wikitext2")[:200_000]], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>")


def write_hub_cache(cache: Path, model_ids, *, seed: int = 0) -> Path:
    """Write a stand-in checkpoint for each hub id into `cache` in the hub cache's layout
    (models--org--name/refs/main -> snapshots/<commit>/), where an offline `from_pretrained(id)` finds it."""
    import torch
    from transformers import AutoModelForCausalLM

    cache = Path(cache)
    tokenizer = stand_in_tokenizer()
    for model_id in sorted(set(model_ids)):
        repo = cache / f"models--{model_id.replace('/', '--')}"
        snapshot = repo / "snapshots" / STAND_IN_COMMIT
        snapshot.mkdir(parents=True, exist_ok=True)
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(STAND_IN_COMMIT)
        torch.manual_seed(seed)
        AutoModelForCausalLM.from_config(stand_in_config(model_id)).save_pretrained(snapshot)
        tokenizer.save_pretrained(snapshot)
    return cache


class LocalJSONServer:
    """An HTTP server on 127.0.0.1 that hands every POST to `respond(path, headers, body bytes) -> (status, reply)`
    (reply: text, or anything JSON-able) and sends the reply as JSON: the stand-in for an OpenAI-compatible
    endpoint, here and in the judge's tests. A context manager; `url` is its base URL (…/v1)."""

    def __init__(self, respond):
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                status, reply = respond(self.path, dict(self.headers),
                                        self.rfile.read(int(self.headers.get("Content-Length", 0))))
                data = reply.encode() if isinstance(reply, str) else json.dumps(reply).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


class StandInJudge(LocalJSONServer):
    """A chat-completions stand-in that answers every request with the same reply (scores for both answers);
    counts the requests."""

    REPLY = "7 5\nStand-in judge: the same scores for every pair (a rehearsal, not a judgement)."

    def __init__(self):
        self.requests = 0
        super().__init__(self._respond)

    def _respond(self, path, headers, body):
        self.requests += 1
        return 200, {"choices": [{"message": {"role": "assistant", "content": self.REPLY}}]}


def rehearsal_overrides(notebook: Path, *, device: str, dtype: str | None, judge_url: str | None,
                        extra: dict | None = None) -> dict:
    """What the rehearsal sets on top of the paper profile for one notebook: its cuts, the device, the
    dtype if given, (notebook 03) the judge endpoint, then `extra` where the notebook declares it."""
    declared = notebook_defaults(notebook)
    overrides = {**CUTS.get(Path(notebook).stem, {}), "device": device}
    if dtype:
        overrides["dtype"] = dtype
    if judge_url and "openai_judge" in declared:
        overrides["openai_judge"] = {**declared["openai_judge"], "base_url": judge_url, "api_key_env": None}
    overrides.update({k: v for k, v in (extra or {}).items() if k in declared})
    unknown = [k for k in overrides if k not in declared]
    if unknown:
        raise ValueError(f"rehearsal cuts for {Path(notebook).stem} name parameters the notebook does not declare: "
                         f"{unknown}; update helpers.running.rehearsal.CUTS.")
    return overrides


def rehearse(*, device: str = "cpu", dtype: str | None = None, only: list[str] | None = None,
             output_dir: Path | None = None, notebooks_dir: Path | None = None, extra: dict | None = None,
             log=print) -> list[Outcome]:
    """Run every notebook (or `only`) as the paper profile would, on stand-in models (see the module doc).

    HF_HUB_CACHE must point at a cache written by `write_hub_cache` before transformers is imported (the
    command line does this); HF_HUB_OFFLINE=1 keeps the hub from being asked.
    """
    output_dir = Path(output_dir or REPO_ROOT / "build" / "rehearsal").resolve()
    notebooks = find_notebooks(Path(notebooks_dir or REPO_ROOT / "notebooks"), only)
    outcomes = []
    with StandInJudge() as judge:
        for notebook in notebooks:
            overrides = rehearsal_overrides(notebook, device=device, dtype=dtype, judge_url=judge.url, extra=extra)
            outcomes += reproduce("paper", only=[notebook.stem], output_dir=output_dir, notebooks_dir=notebook.parent,
                                  overrides=overrides, kernel=False, log=log)
        log(f"rehearsal: the stand-in judge answered {judge.requests} request(s)")
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.running.rehearsal", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    parser.add_argument("--dtype", default=None, help="override the paper profile's dtype (float16) for every notebook")
    parser.add_argument("--only", action="append", metavar="NAME", help="this notebook only (name or prefix); repeatable")
    parser.add_argument("--output-dir", type=Path, default=None, help="figures and results (default build/rehearsal)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="overrides",
                        help="set a parameter in every notebook that declares it, after the cuts (e.g. "
                             "--set \"judges=['rouge']\" --set \"free_text_scorings=['rouge']\" where the "
                             "embedding judge's package is missing)")
    parser.add_argument("--json", type=Path, default=None, help="also write the outcomes here as JSON")
    args = parser.parse_args(argv)
    output_dir = Path(args.output_dir or REPO_ROOT / "build" / "rehearsal").resolve()
    if "transformers" in sys.modules or "huggingface_hub" in sys.modules:
        raise RuntimeError("the rehearsal must set HF_HUB_CACHE before transformers is imported; run it as a command.")
    os.environ["HF_HUB_CACHE"] = str(output_dir / "hub-cache")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TQDM_DISABLE", "1")
    started = time.perf_counter()
    write_hub_cache(output_dir / "hub-cache", paper_models().values())
    print(f"rehearsal: stand-in checkpoints for {', '.join(sorted(set(paper_models().values())))} in "
          f"{output_dir / 'hub-cache'} ({time.perf_counter() - started:.0f} s)")
    outcomes = rehearse(device=args.device, dtype=args.dtype, only=args.only, output_dir=output_dir,
                        extra=parse_overrides(args.overrides))
    if args.json:
        args.json.write_text(json.dumps([{"notebook": o.notebook, "status": o.status, "seconds": round(o.seconds, 1),
                                          "error": o.error, "parameters": o.parameters} for o in outcomes],
                                        indent=1, default=str))
    print("\n| notebook | status | seconds | error |\n|---|---|---|---|")
    for o in outcomes:
        print(f"| {o.notebook} | {o.status} | {o.seconds:.1f} | {o.error} |")
    return 1 if any(o.status == "failed" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
