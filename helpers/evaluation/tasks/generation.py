"""Greedy generation for the evaluation tasks: chat template when there is one, batched, recorded.

`generate(model, tokenizer, prompts, settings)` returns one record per prompt:

    {"index", "prompt", "model_input", "chat_template", "generation", "prompt_tokens", "generated_tokens"}

`prompt` is the task's text, `model_input` the exact text the model saw (after the chat template,
if one was used) and `generation` the decoded continuation only (the prompt is never part of it).
Prompts are sorted by length and batched with left padding; the records come back in input order.
It works with Hugging Face tokenizers and with the `ByteTokenizer` of the tiny test models.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm


@dataclass(frozen=True)
class GenerationSettings:
    """How to generate. chat_template: True / False, or None to use it when the tokenizer has one."""
    max_new_tokens: int = 32
    batch_size: int = 8
    chat_template: bool | None = None
    system_prompt: str | None = None
    stop_at_newline: bool = False  # stop a row once its continuation (leading whitespace aside) has a full line
    progress: bool = True

    def __post_init__(self):
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens!r}; expected an integer >= 1.")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size!r}; expected an integer >= 1 (1 disables batching).")
        if self.chat_template not in (None, True, False):
            raise ValueError(f"chat_template={self.chat_template!r}; expected True, False or None (auto).")

    def as_dict(self) -> dict:
        return asdict(self)


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None)) and hasattr(tokenizer, "apply_chat_template")


def uses_chat_template(tokenizer, chat_template: bool | None) -> bool:
    """Resolve the chat_template setting against what the tokenizer offers."""
    available = has_chat_template(tokenizer)
    if chat_template is None:
        return available
    if chat_template and not available:
        name = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
        raise ValueError(f"chat_template=True but the tokenizer {name!r} has no chat template; "
                         "use chat_template=None (auto) or False.")
    return bool(chat_template)


def format_prompt(tokenizer, prompt: str, *, chat_template: bool, system_prompt: str | None = None) -> str:
    """The text the model sees: the prompt itself, or a one-turn chat ending in the assistant's turn."""
    if not isinstance(prompt, str):
        raise TypeError(f"a prompt must be a string, got {type(prompt).__name__}: {prompt!r}.")
    if not chat_template:
        return prompt if system_prompt is None else f"{system_prompt}\n\n{prompt}"
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + \
        [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode(tokenizer, text: str, *, chat_template: bool) -> list[int]:
    """Token ids of a model input. A chat-formatted text already holds its special tokens."""
    ids = tokenizer(text, add_special_tokens=not chat_template)["input_ids"]
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return list(ids)


def context_length(model) -> int | None:
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def eos_token_ids(model, tokenizer) -> list[int]:
    ids = []
    for value in (getattr(getattr(model, "generation_config", None), "eos_token_id", None),
                  getattr(tokenizer, "eos_token_id", None)):
        if isinstance(value, int):
            ids.append(value)
        elif isinstance(value, (list, tuple)):
            ids.extend(int(v) for v in value)
    return list(dict.fromkeys(ids))


def pad_token_id(tokenizer, eos_ids: list[int]) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is not None:
        return int(pad)
    return eos_ids[0] if eos_ids else 0


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """[batch, width] ids and attention mask on `device`, each row right-aligned (left padding)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device="cpu")
    mask = torch.zeros((len(rows), width), dtype=torch.long, device="cpu")
    for row, seq in enumerate(rows):
        if len(seq):
            ids[row, width - len(seq):] = torch.tensor(list(seq), dtype=torch.long, device="cpu")
            mask[row, width - len(seq):] = 1
    return ids.to(device), mask.to(device)


class _FirstLineStop:
    """Stopping criterion: a row is done once its continuation, leading whitespace aside, holds a newline."""

    def __init__(self, tokenizer, prompt_width: int):
        self.tokenizer = tokenizer
        self.prompt_width = prompt_width

    def __call__(self, input_ids, scores, **kwargs):
        new = input_ids[:, self.prompt_width:]
        done = [("\n" in self.tokenizer.decode(row, skip_special_tokens=True).lstrip()) for row in new]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _cut_at_eos(ids: list[int], eos_ids: list[int]) -> list[int]:
    for position, token in enumerate(ids):
        if token in eos_ids:
            return ids[:position]
    return ids


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], settings: GenerationSettings = GenerationSettings(), *,
             on_record: Callable[[dict], None] | None = None, description: str = "generating") -> list[dict]:
    """Greedy continuations of `prompts`; see the module docstring for the record fields.

    on_record(record) is called as each record is ready (in batch order, not input order), e.g. to
    score it and append it to a records file.
    """
    from transformers import StoppingCriteriaList

    if isinstance(prompts, str):
        raise TypeError("generate expects a list of prompts, got a single string; wrap it in a list.")
    prompts = list(prompts)
    chat = uses_chat_template(tokenizer, settings.chat_template)
    inputs = [format_prompt(tokenizer, p, chat_template=chat, system_prompt=settings.system_prompt) for p in prompts]
    encoded = [encode(tokenizer, text, chat_template=chat) for text in inputs]
    limit = context_length(model)
    for index, ids in enumerate(encoded):
        if not ids:
            raise ValueError(f"prompt {index} is empty after tokenization; every prompt needs some text.")
        if limit is not None and len(ids) + settings.max_new_tokens > limit:
            raise ValueError(f"prompt {index} has {len(ids)} tokens; with max_new_tokens={settings.max_new_tokens} "
                             f"that exceeds the model's context of {limit} tokens. Shorten the input (the task's "
                             "truncation setting) or lower max_new_tokens.")
    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = pad_token_id(tokenizer, eos_ids)
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    records: list[dict | None] = [None] * len(prompts)
    bar = tqdm(total=len(prompts), desc=description, disable=not settings.progress)
    for start in range(0, len(order), settings.batch_size):
        batch = order[start:start + settings.batch_size]
        ids, mask = left_pad([encoded[i] for i in batch], pad_id, device)
        width = ids.shape[1]
        stopping = StoppingCriteriaList([_FirstLineStop(tokenizer, width)]) if settings.stop_at_newline else None
        output = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                max_new_tokens=settings.max_new_tokens, pad_token_id=pad_id,
                                eos_token_id=eos_ids or None, stopping_criteria=stopping,
                                temperature=None, top_p=None, top_k=None)
        for row, index in enumerate(batch):
            new = _cut_at_eos(output[row, width:].tolist(), eos_ids)
            record = {"index": index, "prompt": prompts[index], "model_input": inputs[index], "chat_template": chat,
                      "generation": tokenizer.decode(new, skip_special_tokens=True),
                      "prompt_tokens": len(encoded[index]), "generated_tokens": len(new)}
            records[index] = record
            if on_record is not None:
                on_record(record)
        bar.update(len(batch))
    bar.close()
    return records
