import math

import pytest

import torch

from helpers.evaluation.metrics import (DenseReference, evaluate, final_hidden, kl_from_hidden, kl_unchunked,
                             log_probs, nll_and_kl, token_nll)
from helpers.compression.storage import sparsity_report
from helpers.compression.stats import HessianCollector, InputNormCollector


def test_kl_of_a_model_with_itself_is_exactly_zero(tiny, tokens):
    model, _ = tiny
    reference = DenseReference(model, tokens, progress=False)
    result = evaluate(model, tokens, reference, progress=False)
    assert result.kl.shape == tokens.shape
    assert torch.count_nonzero(result.kl) == 0
    assert math.isclose(result.perplexity, reference.perplexity, rel_tol=1e-12)


def test_chunked_kl_equals_unchunked(tiny_llama, tokens):
    model, _ = tiny_llama
    hidden_p = final_hidden(model, tokens[:1])[0]
    hidden_q = hidden_p + 0.3 * torch.randn_like(hidden_p)
    head = model.get_output_embeddings()
    expected = kl_unchunked(head(hidden_p), head(hidden_q))
    for chunk in (1, 5, 16, 1000):
        torch.testing.assert_close(kl_from_hidden(model, hidden_p, hidden_q, chunk=chunk), expected,
                                   rtol=1e-5, atol=1e-6)
    assert torch.all(expected > 0)


def test_chunked_nll_matches_cross_entropy(tiny_llama, tokens):
    model, _ = tiny_llama
    window = tokens[0]
    logits = model(window[None]).logits[0]
    expected = torch.nn.functional.cross_entropy(logits[:-1], window[1:], reduction="none")
    hidden = final_hidden(model, window[None])[0]
    for chunk in (3, 7, 64):
        torch.testing.assert_close(token_nll(model, hidden, window, chunk=chunk), expected, rtol=1e-5, atol=1e-5)


def test_fused_nll_and_kl_equal_the_separate_passes(tiny_llama, tokens):
    model, _ = tiny_llama
    window = tokens[0]
    dense_hidden = final_hidden(model, window[None])[0]
    hidden = dense_hidden + 0.3 * torch.randn_like(dense_hidden)
    for chunk in (1, 3, window.numel() - 1, window.numel(), 1000):  # chunk edges at and around the last position
        nll, kl = nll_and_kl(model, dense_hidden, hidden, window, chunk=chunk)
        assert nll.shape == (window.numel() - 1,) and kl.shape == (window.numel(),)
        torch.testing.assert_close(nll, token_nll(model, hidden, window, chunk=7), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(kl, kl_from_hidden(model, dense_hidden, hidden, chunk=7), rtol=1e-5, atol=1e-6)


def test_perplexity_of_uniform_model_is_vocab_size(tiny_llama, tokens):
    model, _ = tiny_llama
    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()  # tied head: every logit is 0
    result = evaluate(model, tokens, progress=False)
    assert math.isclose(result.perplexity, model.config.vocab_size, rel_tol=1e-5)


def test_log_probs_apply_softcapping(tiny_llama):
    model, _ = tiny_llama
    hidden = torch.randn(3, model.config.hidden_size) * 50
    plain = log_probs(model, hidden)
    model.config.final_logit_softcapping = 1.0
    capped = log_probs(model, hidden)
    assert not torch.allclose(plain, capped)
    assert torch.all(capped.exp().max(-1).values < plain.exp().max(-1).values + 1e-6)


def test_sparsity_report_counts_only_decoder_linears(tiny_llama):
    model, _ = tiny_llama
    report = sparsity_report(model)
    assert report["total"] == 0
    first = next(iter(report["layers"]))
    with torch.no_grad():
        model.get_submodule(first).weight[:, ::2] = 0
        model.get_input_embeddings().weight.zero_()
    report = sparsity_report(model)
    assert report["layers"][first] == 0.5
    assert 0 < report["total"] < 0.5
    assert not any("embed" in name or "lm_head" in name for name in report["layers"])


def test_collectors_match_closed_forms():
    x = torch.randn(3, 10, 6)
    hessian, norms = HessianCollector(6), InputNormCollector(6)
    for batch in x.split(1):
        hessian.add_batch(batch)
        norms.add_batch(batch)
    flat = x.reshape(-1, 6)
    torch.testing.assert_close(hessian.hessian(), 2 * flat.t() @ flat / 30)
    torch.testing.assert_close(norms.norms(), flat.norm(dim=0))


def test_bf16_models_get_float32_logits_for_nll_and_kl():
    from helpers.evaluation.metrics import log_probs
    from helpers.models import load_model

    model, _ = load_model("tiny-llama", dtype="bfloat16")
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(2))
    hidden = final_hidden(model, ids)[0]
    head = model.get_output_embeddings()
    assert head.weight.dtype == torch.bfloat16
    expected = torch.log_softmax(hidden.float() @ head.weight.float().t(), dim=-1)
    torch.testing.assert_close(log_probs(model, hidden), expected, rtol=0, atol=1e-6)
    bf16 = torch.log_softmax(head(hidden).float(), dim=-1)
    assert float((bf16 - expected).detach().abs().max()) > 1e-4  # what bf16 logits would have given instead
    nll = token_nll(model, hidden, ids[0])
    torch.testing.assert_close(nll, -expected[:-1].gather(-1, ids[0, 1:, None]).squeeze(-1), rtol=0, atol=1e-6)
    # a slightly different hidden state gives a small KL that bf16 logits would round away
    other = hidden + 1e-3 * torch.randn(hidden.shape, generator=torch.Generator().manual_seed(3)).to(hidden.dtype)
    kl = kl_from_hidden(model, hidden, other)
    exact = kl_unchunked(hidden.float() @ head.weight.float().t(), other.float() @ head.weight.float().t())
    torch.testing.assert_close(kl, exact, rtol=1e-3, atol=1e-7)
    assert (kl_from_hidden(model, hidden, hidden) == 0).all()


def test_a_cached_dense_reference_is_read_back_identical_and_never_for_other_weights(tiny_llama, tokens, tmp_path):
    model, _ = tiny_llama
    first = DenseReference(model, tokens, progress=False, lazy=True, cache_dir=tmp_path)
    paths = first.cache_paths()
    first.prepare()
    assert first.from_cache == 0 and all(p.exists() for p in paths) and len(set(paths)) == len(tokens)
    with pytest.raises(RuntimeError, match="released the model"):  # no silent model-less digest after the pass
        first.cache_paths()
    again = DenseReference(model, tokens, progress=False, cache_dir=tmp_path)
    assert again.from_cache == len(tokens)
    assert all(torch.equal(a, b) for a, b in zip(again.hidden, first.hidden)) and torch.equal(again.nll, first.nll)
    result = evaluate(model, tokens, again, progress=False)
    assert torch.count_nonzero(result.kl) == 0
    some = DenseReference(model, tokens[1:3], progress=False, cache_dir=tmp_path)  # other windows: per window
    assert some.from_cache == 2 and torch.equal(some.hidden[0], first.hidden[1])
    shorter = DenseReference(model, tokens[:, :40], progress=False, cache_dir=tmp_path)
    assert shorter.from_cache == 0
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] += 1e-3  # one weight changed: another digest
    changed = DenseReference(model, tokens, progress=False, cache_dir=tmp_path)
    assert changed.from_cache == 0 and not torch.equal(changed.hidden[0], first.hidden[0])
    assert {p.suffix for p in tmp_path.iterdir()} == {".pt"} and len(list(tmp_path.iterdir())) == 3 * len(tokens)
