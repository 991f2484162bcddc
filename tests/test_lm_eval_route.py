"""The optional lm-evaluation-harness route: on a local task (no hub) lm-eval's per-choice
log-likelihoods equal the project's own on the same prompts, a folder saved in the
compressed-tensors format scores exactly as the compressed model in memory, and a missing lm-eval
or a bad argument is named."""
import importlib.util
import sys

import pytest
import torch

from helpers.compression.compress import Recipe, compress_model
from helpers.compression.quantizer import QuantSettings
from helpers.evaluation.lm_eval_route import LMEvalSettings, evaluate_lm_eval, require_lm_eval, write_local_task
from helpers.evaluation.tasks.mmlu import loglik_choices
from helpers.models import load_model

needs_lm_eval = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,
                                   reason="lm-eval is optional: pip install -r requirements-lm-eval.txt")
pytestmark = pytest.mark.usefixtures("single_thread")

ROWS = [{"question": f"Which word is number {i}?", "choices": ["one", "two", "three"], "answer": i % 3}
        for i in range(5)]


def byte_tokenizer():
    """A Hugging Face byte-level tokenizer with 256 ids, as the tiny models' vocabulary (built offline)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=alphabet[0])


@pytest.fixture()
def task(tmp_path):
    return write_local_task(tmp_path / "tasks", "tiny_mc", ROWS, doc_to_text="{{question}}\nAnswer:",
                            doc_to_choice="{{choices}}", doc_to_target="answer")


def logliks(out, task="tiny_mc"):
    """Per document, the log-likelihood of each choice."""
    return [[response[0][0] for response in sample["resps"]] for sample in out["samples"][task]]


def test_a_missing_lm_eval_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval now raises ImportError
    with pytest.raises(ImportError, match="pip install -r requirements-lm-eval.txt"):
        require_lm_eval()


@needs_lm_eval
def test_lm_eval_loglikelihoods_equal_the_projects_own_on_a_local_task(task):
    model, _ = load_model("tiny-llama", layers=2, seed=1)
    tokenizer = byte_tokenizer()
    out = evaluate_lm_eval(model, ["tiny_mc"], tokenizer=tokenizer, include_path=task)
    samples = out["samples"]["tiny_mc"]
    assert len(samples) == len(ROWS)
    correct = 0
    for sample, scores in zip(samples, logliks(out)):
        context = sample["arguments"][0][0]
        prompt = tokenizer(context, add_special_tokens=False)["input_ids"]
        choices = {c: tokenizer(" " + c, add_special_tokens=False)["input_ids"] for c in sample["doc"]["choices"]}
        ours = loglik_choices(model, prompt, choices)
        assert scores == pytest.approx([ours[c] for c in sample["doc"]["choices"]], abs=1e-4)
        correct += max(range(3), key=lambda i: scores[i]) == sample["doc"]["answer"]
    assert out["results"]["tiny_mc"]["acc,none"] == correct / len(ROWS)


@needs_lm_eval
def test_a_saved_compressed_folder_scores_as_the_model_in_memory(task, tmp_path):
    from helpers.compression.export import save_compressed

    model, _ = load_model("tiny-llama", layers=2, seed=1)
    tokenizer = byte_tokenizer()
    report = compress_model(model, Recipe(method="rtn", quant=QuantSettings(bits=4, group_size=48)), progress=False)
    save_compressed(model, report, tmp_path / "rtn4", tokenizer=tokenizer)
    in_memory = evaluate_lm_eval(model, ["tiny_mc"], tokenizer=tokenizer, include_path=task)
    from_folder = evaluate_lm_eval(tmp_path / "rtn4", ["tiny_mc"], include_path=task)
    flat = [score for scores in logliks(in_memory) for score in scores]
    assert [score for scores in logliks(from_folder) for score in scores] == pytest.approx(flat, abs=1e-5)


@needs_lm_eval
def test_bad_arguments_are_named(task, tmp_path):
    model, tokenizer = load_model("tiny-llama", layers=2, seed=1)
    with pytest.raises(ValueError, match="Hugging Face tokenizer"):
        evaluate_lm_eval(model, ["tiny_mc"], tokenizer=tokenizer, include_path=task)  # the byte tokenizer
    with pytest.raises(ValueError, match="no task"):
        evaluate_lm_eval(model, ["no_such_task"], tokenizer=byte_tokenizer(), include_path=task)
    with pytest.raises(FileNotFoundError, match="config.json"):
        evaluate_lm_eval(tmp_path, ["tiny_mc"], include_path=task)
    with pytest.raises(ValueError, match="limit=0"):
        LMEvalSettings(limit=0)
    with pytest.raises(ValueError, match="no rows"):
        write_local_task(tmp_path, "empty", [], doc_to_text="x", doc_to_choice=["a"], doc_to_target=0)
