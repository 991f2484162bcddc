import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from helpers.models import load_model  # noqa: E402


@pytest.fixture(params=["llama", "gemma3", "opt", "gpt2"])
def tiny(request):
    """A tiny random-weight model of each supported family, with its byte tokenizer."""
    model, tokenizer = load_model(f"tiny-{request.param}", layers=4, seed=1)
    return model, tokenizer


@pytest.fixture
def tiny_llama():
    return load_model("tiny-llama", layers=2, seed=1)


@pytest.fixture
def tokens():
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (4, 48), generator=generator)


@pytest.fixture
def single_thread():
    """One torch thread: on a shared, oversubscribed CPU the small per-column ops of the OBS loop
    run ~10x faster than with thread hand-offs. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cli_token_flags(folder, *, calibration: int, windows: int) -> list[str]:
    """Command-line flags that point `python -m helpers` at saved random token files in `folder`
    (calibration sequences and evaluation windows of 64 tokens), so CLI tests read no dataset."""
    torch.save(torch.randint(0, 256, (calibration, 64), generator=torch.Generator().manual_seed(7)),
               folder / "calibration.pt")
    torch.save(torch.randint(0, 256, (windows * 64,), generator=torch.Generator().manual_seed(8)), folder / "eval.pt")
    return ["--token-file", str(folder / "eval.pt"), "--seq-len", "64", "--calibration-token-file",
            str(folder / "calibration.pt"), "--calibration-samples", str(calibration), "--calibration-seq-len", "64",
            "--no-progress"]
