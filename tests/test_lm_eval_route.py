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


def _lm_eval_mmlu_templates():
    """lm-eval's own MMLU templates, read from the installed package (letters and continuation forms)."""
    from pathlib import Path

    import lm_eval
    import yaml

    root = Path(lm_eval.__file__).parent / "tasks" / "mmlu"
    read = lambda path: yaml.safe_load((root / path).read_text())  # noqa: E731
    return (read("default/_default_template_yaml"), read("default/mmlu_anatomy.yaml")["description"],
            read("continuation/_continuation_template_yaml"), read("continuation/mmlu_anatomy.yaml")["description"])


@needs_lm_eval
def test_mmlu_letter_and_cloze_scorings_choose_as_lm_eval_does_on_the_same_rows(tmp_path):
    from helpers.evaluation.tasks.mmlu import MMLUSettings, evaluate_mmlu

    letters, description, cloze, cloze_description = _lm_eval_mmlu_templates()
    texts = ["a skull", "the long femur bone", "rib", "an unusually small stapes of the ear"]
    rows = [{"subject": "anatomy", "question": f"  Which bone is number {i}?\n ", "answer": i % 4,
             "choices": texts[i % 4:] + texts[:i % 4]} for i in range(6)]  # surrounding whitespace: lm-eval strips it
    folder = tmp_path / "tasks"
    write_local_task(folder, "mmlu_letters", rows, doc_to_text=letters["doc_to_text"],
                     doc_to_choice=letters["doc_to_choice"], doc_to_target="answer", description=description)
    write_local_task(folder, "mmlu_cloze", rows, doc_to_text=cloze["doc_to_text"], doc_to_choice=cloze["doc_to_choice"],
                     doc_to_target=cloze["doc_to_target"], description=cloze_description, metrics=("acc", "acc_norm"))
    model, _ = load_model("tiny-llama", layers=2, seed=3)
    tokenizer = byte_tokenizer()
    out = evaluate_lm_eval(model, ["mmlu_letters", "mmlu_cloze"], tokenizer=tokenizer, include_path=folder)
    ours = evaluate_mmlu(model, tokenizer, [{**r, "answer": "ABCD"[r["answer"]]} for r in rows],
                         MMLUSettings(shots=0, scorings=("loglik", "cloze"), progress=False), dev_examples=[]).records
    for sample in out["samples"]["mmlu_letters"]:
        record, lls = ours[sample["doc_id"]], [response[0][0] for response in sample["resps"]]
        assert sample["arguments"][0][0] == record["model_input"]  # the same rendered prompt, byte for byte
        assert [record["loglik"][letter] for letter in "ABCD"] == pytest.approx(lls, abs=1e-4)
        assert record["loglik_prediction"] == "ABCD"[max(range(4), key=lambda i: lls[i])]
    for sample in out["samples"]["mmlu_cloze"]:
        record, lls = ours[sample["doc_id"]], [response[0][0] for response in sample["resps"]]
        assert sample["arguments"][0][0] == record["cloze_prompt"]
        assert [record["cloze_loglik"][letter] for letter in "ABCD"] == pytest.approx(lls, abs=1e-4)
        choices = sample["doc"]["choices"]
        assert record["cloze_prediction"] == "ABCD"[max(range(4), key=lambda i: lls[i] / len(choices[i]))]
    accuracy = sum(r["cloze_correct"] for r in ours) / len(ours)
    assert out["results"]["mmlu_cloze"]["acc_norm,none"] == pytest.approx(accuracy)
