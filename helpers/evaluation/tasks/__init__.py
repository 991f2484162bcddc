"""LLM-KICK evaluation tasks, usable from notebooks and scripts.

Each task takes (model, tokenizer, examples, settings) -- examples is a list of dataset rows, an
int n, or None for the whole set -- and returns a `TaskResult` (records: one dict per example with
prompt, generation, gold and score; aggregate: the task's scores; settings: what was run). Give
`records_path=` to append every record to a JSON-lines file as it is produced.

    from helpers.evaluation.tasks import evaluate_factoid_qa, evaluate_mmlu, MMLUSettings
    result = evaluate_factoid_qa(model, tokenizer, 100, records_path="runs/freebase.jsonl")
    result.aggregate["accuracy"]; result.log(ResultsTable("results/results.jsonl"), model="smollm2-135m")
"""
from .factoid import FREEBASEQA_PROMPT, FactoidSettings, evaluate_factoid_qa, score_factoid
from .freeform import (CNNDM_INSTRUCTION, InstructionSettings, SummarizationSettings, evaluate_instruction_following,
                       evaluate_summarization, generate_instruction_answers, generate_summaries)
from .generation import GenerationSettings, generate
from .judges import (EmbeddingJudge, JudgeError, LocalLMJudge, OpenAIJudge, RougeJudge, build_judge_prompt,
                     judge_records, parse_review, parse_score_pair, parse_summary_scores, summarize_judgements)
from .mmlu import MMLUSettings, build_prompt as mmlu_prompt, evaluate_mmlu, parse_letter
from .records import RecordWriter, TaskResult, read_records
from .registry import TASK_KINDS, TaskKind, register_task_kind, task_kind
from .retrieval import (CLOSED_BOOK_PROMPT, OPEN_BOOK_PROMPT, KVRetrievalSettings, RetrievalQASettings,
                        evaluate_kv_retrieval, evaluate_retrieval_qa)
from .text import contains_match, exact_match, first_line, normalize_answer

__all__ = [
    "FREEBASEQA_PROMPT", "FactoidSettings", "evaluate_factoid_qa", "score_factoid",
    "CNNDM_INSTRUCTION", "InstructionSettings", "SummarizationSettings", "evaluate_instruction_following",
    "evaluate_summarization", "generate_instruction_answers", "generate_summaries",
    "GenerationSettings", "generate",
    "EmbeddingJudge", "JudgeError", "LocalLMJudge", "OpenAIJudge", "RougeJudge", "build_judge_prompt", "judge_records",
    "parse_review", "parse_score_pair", "parse_summary_scores", "summarize_judgements",
    "MMLUSettings", "mmlu_prompt", "evaluate_mmlu", "parse_letter",
    "RecordWriter", "TaskResult", "read_records",
    "TASK_KINDS", "TaskKind", "register_task_kind", "task_kind",
    "CLOSED_BOOK_PROMPT", "OPEN_BOOK_PROMPT", "KVRetrievalSettings", "RetrievalQASettings", "evaluate_kv_retrieval",
    "evaluate_retrieval_qa",
    "contains_match", "exact_match", "first_line", "normalize_answer",
]
