"""Invariants of the LLM-KICK evaluation tasks (helpers.evaluation.tasks) on tiny random models."""
import json

import pytest
import torch

from helpers.models import ByteTokenizer, load_model
from helpers.evaluation.tasks import (FactoidSettings, GenerationSettings, KVRetrievalSettings, MMLUSettings, RetrievalQASettings,
                           contains_match, evaluate_factoid_qa, evaluate_kv_retrieval, evaluate_mmlu,
                           evaluate_retrieval_qa, exact_match, first_line, generate, mmlu_prompt, normalize_answer,
                           parse_letter, read_records)
from helpers.evaluation.tasks import factoid, retrieval
from helpers.evaluation.tasks.mmlu import fit_prompt, loglik_choices, subsample, _Encoder

QUIET = GenerationSettings(max_new_tokens=4, progress=False)


@pytest.fixture(scope="module")
def model_and_tokenizer():
    """A tiny llama whose weights are scaled up so greedy outputs vary with the input."""
    model, tokenizer = load_model("tiny-llama", layers=2, seed=3)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return model, tokenizer


def fake_generate(generations):
    """Stand-in for generation.generate returning fixed continuations (to test the scoring)."""
    def run(model, tokenizer, prompts, settings, on_record=None, description=""):
        records = []
        for index, (prompt, text) in enumerate(zip(prompts, generations)):
            record = {"index": index, "prompt": prompt, "model_input": prompt, "chat_template": False,
                      "generation": text, "prompt_tokens": len(prompt), "generated_tokens": len(text)}
            if on_record:
                on_record(record)
            records.append(record)
        return records
    return run


# --------------------------------------------------------------------------- normalization
def test_normalization_is_squad_style():
    assert normalize_answer("  The Eiffel-Tower!! ") == "eiffel tower"
    assert normalize_answer("An Apple a day") == "apple day"
    assert normalize_answer("Théâtre") == "théâtre"
    assert exact_match("The Beatles.", ["beatles"])
    assert not exact_match("The Beatles were great", ["beatles"])
    assert contains_match("It is Paris, France.", ["paris"])
    assert not contains_match("a party", ["art"])  # whole words only
    assert not contains_match("anything", ["the"])  # an answer that normalizes to nothing never matches
    assert first_line("\n  Paris\nLondon") == "Paris"


# --------------------------------------------------------------------------- generation
def test_batched_generation_equals_one_by_one(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompts = ["hello there", "a much longer prompt with many more bytes in it", "x", "Q: who?\nA:"]
    batched = generate(model, tokenizer, prompts, GenerationSettings(max_new_tokens=6, batch_size=4, progress=False))
    single = generate(model, tokenizer, prompts, GenerationSettings(max_new_tokens=6, batch_size=1, progress=False))
    assert [r["generation"] for r in batched] == [r["generation"] for r in single]
    assert len({r["generation"] for r in single}) > 1  # the outputs depend on the prompt
    for prompt, record in zip(prompts, batched):
        assert record["prompt"] == record["model_input"] == prompt and record["chat_template"] is False
        assert record["prompt_tokens"] == len(prompt.encode()) and record["generated_tokens"] <= 6


class ChatByteTokenizer(ByteTokenizer):
    chat_template_text = "<user>{content}</user><assistant>"

    def __init__(self):
        super().__init__()
        self.chat_template = "toy"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages) + "<assistant>"


def test_chat_template_is_used_when_present_and_recorded(model_and_tokenizer):
    model, _ = model_and_tokenizer
    chat = ChatByteTokenizer()
    auto = generate(model, chat, ["hi"], QUIET)[0]
    assert auto["chat_template"] is True and auto["model_input"] == "<user>hi</user><assistant>"
    off = generate(model, chat, ["hi"], GenerationSettings(max_new_tokens=2, chat_template=False, progress=False))[0]
    assert off["chat_template"] is False and off["model_input"] == "hi"
    with pytest.raises(ValueError, match="no chat template"):
        generate(model, ByteTokenizer(), ["hi"], GenerationSettings(chat_template=True, progress=False))


def test_generation_rejects_prompts_longer_than_the_context(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ValueError, match="exceeds the model's context of 512"):
        generate(model, tokenizer, ["x" * 510], QUIET)
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationSettings(max_new_tokens=0)


# --------------------------------------------------------------------------- FreebaseQA
def test_factoid_never_matches_the_prompt(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    rows = [{"question": "Is the answer goldeneye or goldeneye?", "answer": "goldeneye", "aliases": []}]
    result = evaluate_factoid_qa(model, tokenizer, rows, FactoidSettings(generation=QUIET))
    record = result.records[0]
    assert "goldeneye" in record["model_input"] and "goldeneye" not in record["generation"].lower()
    assert record["hit"] is False and result.aggregate["accuracy"] == 0.0


def test_factoid_counts_hits_exactly(monkeypatch):
    rows = [{"question": "q1", "answer": "goldeneye", "aliases": []},
            {"question": "q2", "answer": "greenwich", "aliases": ["royal borough of greenwich"]},
            {"question": "q3", "answer": "onion", "aliases": ["allium cepa"]}]
    monkeypatch.setattr(factoid, "generate", fake_generate(["GoldenEye (1995).", "nope", "It's Allium cepa"]))
    result = evaluate_factoid_qa(None, None, rows)
    assert [r["hit"] for r in result.records] == [True, False, True]
    assert result.aggregate["hits"] == 2 and result.aggregate["examples"] == 3
    assert result.aggregate["accuracy"] == pytest.approx(2 / 3)
    assert result.records[0]["prompt"] == "Please give answer to this question: q1\nThe answer is "


def test_records_are_saved_as_they_go_and_reload(model_and_tokenizer, tmp_path):
    model, tokenizer = model_and_tokenizer
    path = tmp_path / "runs" / "freebase.jsonl"
    rows = [{"question": f"question {i}?", "answer": "x", "aliases": []} for i in range(3)]
    result = evaluate_factoid_qa(model, tokenizer, rows, FactoidSettings(generation=QUIET), records_path=path,
                                 context={"model": "tiny-llama", "method": "dense"})
    saved = read_records(path)
    assert len(saved) == 3
    by_index = {r["index"]: r for r in saved}
    for record in result.records:
        assert by_index[record["index"]] == json.loads(json.dumps(record))
        assert {"prompt", "generation", "gold", "score", "model", "method"} <= set(record)
    evaluate_factoid_qa(model, tokenizer, rows[:1], FactoidSettings(generation=QUIET), records_path=path)
    assert len(read_records(path)) == 4  # appended, never overwritten
    with pytest.raises(FileNotFoundError, match="records_path"):
        read_records(tmp_path / "missing.jsonl")


def test_bad_examples_are_named():
    with pytest.raises(ValueError, match=r"example 1 lacks the field\(s\) \['answer'\]"):
        evaluate_factoid_qa(None, None, [{"question": "a", "answer": "b"}, {"question": "c"}])
    with pytest.raises(ValueError, match="has only"):
        evaluate_factoid_qa(None, None, 10**7)


# --------------------------------------------------------------------------- MMLU
ROWS = [{"subject": "high_school_biology", "question": f"Question number {i} about cells?",
         "choices": ["alpha", "beta", "gamma", "delta"], "answer": "ABCA"[i % 4]} for i in range(4)]
DEV = [{"subject": "high_school_biology", "question": "A worked example question " * 2 + str(i),
        "choices": ["one", "two", "three", "four"], "answer": "ABCD"[i % 4]} for i in range(5)]


def test_mmlu_prompt_format():
    prompt = mmlu_prompt("high_school_biology", DEV[:1], ROWS[0])
    assert prompt.startswith("The following are multiple choice questions (with answers) about high school "
                             "biology.\n\n")
    assert prompt.endswith("Question number 0 about cells?\nA. alpha\nB. beta\nC. gamma\nD. delta\nAnswer:")
    assert "\nD. four\nAnswer: A\n\n" in prompt


@pytest.mark.parametrize("limit", [700, 400, 250, 120])
def test_shot_dropping_keeps_the_prompt_under_the_limit_and_keeps_as_many_shots_as_fit(limit):
    encoder = _Encoder(ByteTokenizer(), False)
    fitted = fit_prompt(encoder, "high_school_biology", DEV, ROWS[0], limit, answer_tokens=1)
    assert len(fitted["ids"]) + 1 <= limit
    if not fitted["truncated"]:
        assert fitted["ids"] == encoder(fitted["prompt"])[1]
        if fitted["shots"] < 5:  # one more shot would not have fit
            longer = mmlu_prompt("high_school_biology", DEV[:fitted["shots"] + 1], ROWS[0])
            assert len(encoder(longer)[1]) + 1 > limit
    else:
        assert fitted["shots"] == 0 and fitted["ids"][-7:] == list(b"Answer:")


def _rig(model, token: int, boost: float = 50.0):
    """Make the model prefer `token` at every position (a hook on the output head)."""
    return model.lm_head.register_forward_hook(lambda m, i, out: out.index_add(
        -1, torch.tensor([token]), torch.full((*out.shape[:-1], 1), boost)))


@pytest.mark.parametrize("letter", ["C", "A"])
def test_both_scorings_pick_the_letter_a_rigged_model_prefers(model_and_tokenizer, letter):
    model, tokenizer = model_and_tokenizer
    handle = _rig(model, ord(letter))
    try:
        result = evaluate_mmlu(model, tokenizer, ROWS, MMLUSettings(max_context_tokens=300, progress=False),
                               dev_examples=DEV)
    finally:
        handle.remove()
    assert all(r["loglik_prediction"] == letter for r in result.records)
    assert all(r["generate_prediction"] == letter for r in result.records)
    expected = sum(r["answer"] == letter for r in ROWS) / len(ROWS)
    assert result.aggregate["loglik_micro_accuracy"] == pytest.approx(expected)
    assert result.aggregate["generate_micro_accuracy"] == pytest.approx(expected)
    assert result.aggregate["loglik_per_subject"] == {"high_school_biology": pytest.approx(expected)}


def test_letter_from_shared_forward_equals_batched_generation(model_and_tokenizer, tmp_path):
    model, tokenizer = model_and_tokenizer
    settings = MMLUSettings(max_context_tokens=300, progress=False, batch_size=3)
    shared = evaluate_mmlu(model, tokenizer, ROWS, settings, dev_examples=DEV, records_path=tmp_path / "m.jsonl")
    assert [r["loglik"] for r in read_records(tmp_path / "m.jsonl")] == \
        [json.loads(json.dumps(r["loglik"])) for r in shared.records]
    generated = evaluate_mmlu(model, tokenizer, ROWS, MMLUSettings(max_context_tokens=300, progress=False,
                                                                   batch_size=3, scorings=("generate",)),
                              dev_examples=DEV)
    assert [r["generation"] for r in shared.records] == [r["generation"] for r in generated.records]
    assert "loglik_prediction" not in generated.records[0]
    assert all(r["score"] == {"generate": float(r["generate_correct"])} for r in generated.records)


def test_loglik_sums_continuation_log_probabilities(model_and_tokenizer):
    model, _ = model_and_tokenizer
    prompt, cont = [72, 105, 58], {"A": [32, 65], "B": [32, 66]}
    scores = loglik_choices(model, prompt, cont)
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([prompt + [32, 65]])).logits[0], -1)
    assert scores["A"] == pytest.approx(logprobs[2, 32].item() + logprobs[3, 65].item(), abs=1e-5)
    single = loglik_choices(model, prompt, {"A": [65], "B": [66]})  # one-forward fast path
    assert single["A"] - single["B"] == pytest.approx(logprobs[2, 65].item() - logprobs[2, 66].item(), abs=1e-5)


def test_parse_letter():
    assert [parse_letter(t) for t in ["B", " C.", "D) delta", "\nA", "Answer", "E", "", "b"]] == \
        ["B", "C", "D", "A", None, None, None, None]


def test_mmlu_subsampling_is_seeded_and_per_subject():
    rows = [{"subject": s, "question": str(i), "choices": list("abcd"), "answer": "A"}
            for s in ("anatomy", "astronomy") for i in range(10)]
    settings = MMLUSettings(n_per_subject=3, seed=1)
    picked = subsample(rows, settings)
    assert [r["subject"] for r in picked].count("anatomy") == 3 and len(picked) == 6
    assert picked == subsample(rows, settings)
    assert picked != subsample(rows, MMLUSettings(n_per_subject=3, seed=2))
    assert len(subsample(rows, MMLUSettings(n_total=5))) == 5
    with pytest.raises(ValueError, match="not both"):
        MMLUSettings(n_total=5, n_per_subject=2)
    with pytest.raises(ValueError, match="subjects"):
        subsample(rows, MMLUSettings(subjects=("cooking",)))


# --------------------------------------------------------------------------- retrieval
NQ = [{"question": "who wrote hamlet", "answers": ["William Shakespeare", "Shakespeare"],
       "ctxs": [{"title": "Hamlet", "text": "Hamlet is a tragedy written by William Shakespeare. " * 100,
                 "isgold": True}]},
      {"question": "capital of france", "answers": ["Paris"],
       "ctxs": [{"title": "F", "text": "Paris.", "isgold": True}]}]


def test_open_and_closed_book_prompts_and_scores(monkeypatch):
    monkeypatch.setattr(retrieval, "generate", fake_generate([" Shakespeare\nQ: next", " The city of Paris."]))
    result = evaluate_retrieval_qa(None, None, NQ, RetrievalQASettings(passage_chars=3072))
    first = result.records[0]
    passage = NQ[0]["ctxs"][0]["text"][:3072]
    assert first["prompt"] == f"Based on these texts, answer these questions:\n\n{passage}\n\nQ: who wrote hamlet\nA:"
    assert first["answer"] == "Shakespeare" and first["exact"] and first["contains"]
    second = result.records[1]
    assert not second["exact"] and second["contains"]
    assert result.aggregate == {"exact_match": 0.5, "contains": 1.0, "examples": 2}
    closed = evaluate_retrieval_qa(None, None, NQ, RetrievalQASettings(open_book=False))
    assert closed.records[0]["prompt"] == "Answer these questions:\n\nQ: who wrote hamlet\nA:"
    with pytest.raises(ValueError, match="no evidence"):
        RetrievalQASettings(dataset="triviaqa")


def test_triviaqa_closed_book_uses_aliases(monkeypatch):
    rows = [{"question": "What type of animal is a dik-dik?", "answer": "Antelope", "aliases": ["Antelopes"]}]
    monkeypatch.setattr(retrieval, "generate", fake_generate(["antelopes"]))
    result = evaluate_retrieval_qa(None, None, rows, RetrievalQASettings(dataset="triviaqa", open_book=False))
    assert result.records[0]["exact"] and result.task == "triviaqa/closed_book"


def test_kv_prompt_holds_n_pairs_with_the_gold_pair_where_asked(monkeypatch):
    pairs = [[f"key-{i}", f"value-{i}"] for i in range(20)]
    rows = [{"ordered_kv_records": pairs, "key": "key-7", "value": "value-7"}] * 2
    monkeypatch.setattr(retrieval, "generate", fake_generate(['"value-7"}', "value-8"]))
    result = evaluate_kv_retrieval(None, None, rows, KVRetrievalSettings(n_pairs=5, gold_position=3))
    prompt = result.records[0]["prompt"]
    data = json.loads(prompt.split("JSON data:\n")[1].split("\n\nKey:")[0])
    assert len(data) == 5 and list(data)[3] == "key-7" and data["key-7"] == "value-7"
    assert prompt.endswith('Key: "key-7"\nCorresponding value:')
    assert [r["hit"] for r in result.records] == [True, False]
    with pytest.raises(ValueError, match="at most 20"):
        evaluate_kv_retrieval(None, None, rows, KVRetrievalSettings(n_pairs=21))


def test_tasks_run_end_to_end_on_a_tiny_model(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    result = evaluate_kv_retrieval(model, tokenizer, 1, KVRetrievalSettings(n_pairs=2, generation=QUIET))
    assert result.aggregate["examples"] == 1 and result.records[0]["n_pairs"] == 2
    result = evaluate_retrieval_qa(model, tokenizer, 1, RetrievalQASettings(passage_chars=200, generation=QUIET))
    assert result.records[0]["prompt_tokens"] < 320


@pytest.mark.parametrize("script_text, stopped_text", [("a\nbbbbbb", "a\n"), ("\na\nbbbbb", "\na\n")])
def test_stop_at_newline_ends_a_row_after_its_first_line(model_and_tokenizer, script_text, stopped_text):
    model, tokenizer = model_and_tokenizer
    calls = []

    def script(module, inputs, out):  # step i of generation emits script_text[i]
        calls.append(1)
        token = ord(script_text[min(len(calls), len(script_text)) - 1])
        return out.index_add(-1, torch.tensor([token]), torch.full((*out.shape[:-1], 1), 100.0))

    handle = model.lm_head.register_forward_hook(script)
    try:
        stopped = generate(model, tokenizer, ["Q: x\nA:"], GenerationSettings(max_new_tokens=8, stop_at_newline=True,
                                                                               progress=False))[0]
        calls.clear()
        full = generate(model, tokenizer, ["Q: x\nA:"], GenerationSettings(max_new_tokens=8, progress=False))[0]
    finally:
        handle.remove()
    assert full["generation"] == script_text
    assert stopped["generation"] == stopped_text and stopped["generated_tokens"] == len(stopped_text)
    assert first_line(stopped["generation"]) == first_line(full["generation"]) == "a"


def test_task_result_logs_tidy_rows(monkeypatch, tmp_path):
    from helpers.results import ResultsTable

    monkeypatch.setattr(factoid, "generate", fake_generate(["goldeneye"]))
    result = evaluate_factoid_qa(None, None, [{"question": "q", "answer": "goldeneye"}])
    table = ResultsTable(tmp_path / "results.jsonl")
    result.log(table, model="tiny", method="magnitude", settings={"sparsity": 0.5})
    rows = {r["metric"]: r for r in table.records()}
    assert rows["freebaseqa/accuracy"]["value"] == 1.0 and rows["freebaseqa/examples"]["value"] == 1
    assert rows["freebaseqa/accuracy"]["protocol"]["prompt"] == factoid.FREEBASEQA_PROMPT
    assert rows["freebaseqa/accuracy"]["settings"] == {"sparsity": 0.5}
