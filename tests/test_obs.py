"""Invariants of the OBS column loop (SparseGPT / GPTQ): blocked + lazy equals the straightforward
loop, the exact sparsity and N:M patterns of the reference, the OBS error identity, joint
quantization on a fixed grid, reconstruction better than magnitude / Wanda, robust Cholesky."""
import pytest
import torch

from helpers.compression.obs import CholeskyFailure, inverse_cholesky, obs_solve, obs_solve_reference
from helpers.compression.pruning import Pattern, magnitude_mask, wanda_mask
from helpers.compression.quantizer import GridQuantizer, QuantSettings, dequantize, fit_grid, rtn

pytestmark = pytest.mark.usefixtures("single_thread")
ROWS, COLUMNS = 32, 256  # two blocks of 128 columns


def correlated_inputs(tokens=1024, columns=COLUMNS, seed=0):
    """Inputs with strongly correlated channels and very different scales (like LLM activations)."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(columns, columns, generator=g) / columns ** 0.5
    scales = torch.logspace(-1, 1, columns)[torch.randperm(columns, generator=g)]
    return (torch.randn(tokens, columns, generator=g) @ mixing + 0.3 * torch.randn(tokens, columns, generator=g)) * scales


def hessian_of(inputs):
    return 2 * inputs.T @ inputs / inputs.shape[0]


@pytest.fixture
def problem():
    X = correlated_inputs()
    W = torch.randn(ROWS, COLUMNS, generator=torch.Generator().manual_seed(1))
    return W, X, hessian_of(X)


def damped(H, damping=0.01):
    return H + damping * torch.diag(H).mean() * torch.eye(H.shape[0])


# --------------------------------------------------------------------------- blocked == straightforward
CASES = {
    "unstructured-50": dict(sparsity=0.5),
    "unstructured-70": dict(sparsity=0.7),
    "2:4": dict(prune_n=2, prune_m=4),
    "4:8": dict(prune_n=4, prune_m=8),
    "quant-4bit": dict(quant=QuantSettings(bits=4)),
    "quant-3bit-groups-32": dict(quant=QuantSettings(bits=3, group_size=32)),
    "joint-50-4bit": dict(sparsity=0.5, quant=QuantSettings(bits=4)),
    "joint-2:4-4bit": dict(prune_n=2, prune_m=4, quant=QuantSettings(bits=4)),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("block_size", [128, 32])
def test_blocked_lazy_loop_equals_reference_loop(problem, case, block_size):
    W, _, H = problem
    settings = dict(CASES[case])
    quant = settings.pop("quant", None)
    fast = obs_solve(W, H, quantizer=quant and GridQuantizer(quant), block_size=block_size, **settings)
    slow = obs_solve_reference(W, H, quantizer=quant and GridQuantizer(quant), block_size=block_size, **settings)
    assert torch.equal(fast.weight == 0, slow.weight == 0), "the two loops chose different masks"
    torch.testing.assert_close(fast.weight, slow.weight, rtol=1e-4, atol=1e-4)
    assert fast.error == pytest.approx(slow.error, rel=1e-4)
    assert fast.error > 0


@pytest.mark.parametrize("case", ["unstructured-50", "2:4", "quant-4bit", "joint-50-4bit"])
def test_obs_error_is_the_exact_quadratic_layer_error(problem, case):
    """W' - W = -E U with H^-1 = U^T U, so (W'-W) H (W'-W)^T = E E^T: sum(loss)/2 is exact for the damped H."""
    W, _, H = problem
    settings = dict(CASES[case])
    quant = settings.pop("quant", None)
    result = obs_solve(W, H, quantizer=quant and GridQuantizer(quant), **settings)
    delta = (result.weight - W).double()
    exact = 0.5 * torch.trace(delta @ damped(H).double() @ delta.T)
    assert result.error == pytest.approx(float(exact), rel=1e-3)


# --------------------------------------------------------------------------- patterns
@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_unstructured_sparsity_is_exact_per_block(problem, sparsity):
    W, _, H = problem
    result = obs_solve(W, H, sparsity=sparsity, block_size=128)
    for start in range(0, COLUMNS, 128):
        block = result.weight[:, start:start + 128]
        assert int((block == 0).sum()) == int(block.numel() * sparsity)
    # pooled over the block, not per row: rows differ
    assert len(set((result.weight[:, :128] == 0).sum(dim=1).tolist())) > 1


@pytest.mark.parametrize("text", ["2:4", "4:8"])
def test_n_m_pattern_is_exact(problem, text):
    W, _, H = problem
    pattern = Pattern.parse(text)
    result = obs_solve(W, H, prune_n=pattern.n, prune_m=pattern.m)
    groups = (result.weight == 0).reshape(ROWS, COLUMNS // pattern.m, pattern.m)
    assert torch.all(groups.sum(dim=-1) == pattern.n)


def test_sparsity_zero_changes_nothing(problem):
    W, _, H = problem
    result = obs_solve(W, H, sparsity=0.0)
    assert torch.equal(result.weight, W) and result.error == 0


def test_dead_inputs_zero_their_columns(problem):
    W, X, _ = problem
    X = X.clone()
    X[:, [3, 200]] = 0
    result = obs_solve(W, hessian_of(X), sparsity=0.0)
    assert result.dead_columns == 2
    assert torch.all(result.weight[:, [3, 200]] == 0)
    keep = [j for j in range(COLUMNS) if j not in (3, 200)]
    assert torch.equal(result.weight[:, keep], W[:, keep])


def test_sparsegpt_reconstructs_better_than_magnitude_and_wanda(problem):
    W, X, H = problem
    norms = X.square().sum(dim=0).sqrt()

    def output_error(new):
        return float(torch.linalg.norm(X @ (new - W).T))

    for sparsity, n, m in [(0.5, 0, 0), (0.5, 2, 4), (0.7, 0, 0)]:
        pattern = Pattern(n, m)
        sparsegpt = obs_solve(W, H, sparsity=sparsity if not n else 0.0, prune_n=n, prune_m=m).weight
        magnitude = W.masked_fill(magnitude_mask(W, sparsity, pattern), 0)
        wanda = W.masked_fill(wanda_mask(W, norms, sparsity, pattern), 0)
        ours, theirs = output_error(sparsegpt), min(output_error(magnitude), output_error(wanda))
        assert ours < theirs, (sparsity, n, m, ours, output_error(magnitude), output_error(wanda))


# --------------------------------------------------------------------------- quantization
@pytest.mark.parametrize("quant", [QuantSettings(bits=4), QuantSettings(bits=3, symmetric=True),
                                   QuantSettings(bits=4, group_size=32)])
def test_gptq_with_identity_hessian_is_round_to_nearest(problem, quant):
    W, _, _ = problem
    result = obs_solve(W, torch.eye(COLUMNS), quantizer=GridQuantizer(quant))
    torch.testing.assert_close(result.weight, rtn(W, quant), rtol=0, atol=0)


def test_joint_pruning_keeps_zeros_and_the_dense_per_channel_grid(problem):
    W, _, H = problem
    quant = QuantSettings(bits=3)
    result = obs_solve(W, H, sparsity=0.5, quantizer=GridQuantizer(quant))
    pruning_only = obs_solve(W, H, sparsity=0.5)
    scale, zero = fit_grid(W, quant.bits)  # fitted once, on the dense weight
    new = result.weight
    # the first block's mask is chosen before any quantization error enters: same pruned set
    assert torch.all(new[:, :128][pruning_only.weight[:, :128] == 0] == 0)
    for start in range(0, COLUMNS, 128):
        assert int((new[:, start:start + 128] == 0).sum()) >= 128 * ROWS // 2
    # every entry (pruned zeros included) lies on its row's grid: re-quantizing changes nothing
    torch.testing.assert_close(dequantize(new, scale, zero, 2 ** quant.bits - 1), new, rtol=0, atol=0)
    assert len(set(new[0].tolist())) <= 2 ** quant.bits


# --------------------------------------------------------------------------- robustness and bad input
def test_non_finite_hessian_raises_cholesky_failure(problem):
    W, _, H = problem
    H = H.clone()
    H[3, 5] = float("nan")  # upper triangle: Cholesky alone would never look at it
    with pytest.raises(CholeskyFailure, match="non-finite"):
        obs_solve(W, H, sparsity=0.5)


def test_indefinite_hessian_retries_then_gives_up():
    eye = torch.eye(16)
    mildly = eye.clone()
    mildly[0, 0] = -0.05  # fails with damping 0.01, passes with 0.1
    U, damping, warnings = inverse_cholesky(mildly, 0.01)
    assert damping == pytest.approx(0.1) and len(warnings) == 1 and torch.isfinite(U).all()
    badly = -eye
    with pytest.raises(CholeskyFailure, match="giving up"):
        inverse_cholesky(badly, 0.01, retries=2)


@pytest.mark.parametrize("settings, message", [
    (dict(sparsity=1.0), "sparsity=1.0"),
    (dict(sparsity=-0.2), "sparsity=-0.2"),
    (dict(prune_n=4, prune_m=4), "4:4"),
    (dict(prune_n=2, prune_m=4, block_size=126), "block_size=126"),
    (dict(prune_n=3, prune_m=5, block_size=5), "input width 256"),
    (dict(block_size=0), "block_size=0"),
])
def test_bad_settings_raise_before_any_work(problem, settings, message):
    W, _, H = problem
    for solve in (obs_solve, obs_solve_reference):
        with pytest.raises(ValueError, match=message):
            solve(W, H, **settings)
