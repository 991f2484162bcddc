"""Committed notebooks are shareable: no machine paths, secrets or host names; runnable metadata;
a `parameters` cell; outputs present where CI compares them; no big or data files tracked."""
import json
import re
import socket
import subprocess
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
MAX_TRACKED_BYTES = 2 * 1024 * 1024

ABSOLUTE_PATH = re.compile(r"(?<![\w.~])(/(?:work|home|root|tmp|Users|mnt|scratch)/|[A-Za-z]:\\)")
SECRETS = {
    "OpenAI-style key": re.compile(r"\bsk-[A-Za-z0-9_-]{20,}"),
    "Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{30,}"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}"),
    "AWS access key": re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    "Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "assigned secret": re.compile(r"(?i)\b(api[_-]?key|token|secret|password)\b\s*[=:]\s*['\"][^'\"\s]{8,}['\"]"),
}


def strings(value, where=""):
    """Every string in a notebook (sources, outputs, metadata) with where it is."""
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings(item, f"{where}/{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from strings(item, f"{where}[{index}]")


def host_names() -> set[str]:
    names = {socket.gethostname(), socket.getfqdn(), socket.gethostname().split(".")[0]}
    return {n for n in names if len(n) >= 4 and n not in ("localhost", "localhost.localdomain")}


def read(path):
    return nbformat.read(str(path), as_version=4)


each = pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)


@each
def test_no_absolute_paths(path):
    found = [f"{where}: ...{text[max(0, m.start() - 30):m.end() + 30]!r}..."
             for where, text in strings(read(path)) for m in ABSOLUTE_PATH.finditer(text)]
    assert not found, (f"{path.name} holds absolute paths (use paths relative to notebooks/; "
                       "`python -m helpers.running.reproduce` makes executed outputs relative):\n" + "\n".join(found[:5]))


@each
def test_no_secrets(path):
    found = [f"{kind} at {where}" for where, text in strings(read(path))
             for kind, pattern in SECRETS.items() if pattern.search(text)]
    assert not found, f"{path.name} seems to hold secrets; remove them and rotate them:\n" + "\n".join(found)


@each
def test_no_host_names(path):
    text = path.read_text(encoding="utf-8")
    found = [name for name in host_names() if name in text]
    assert not found, f"{path.name} names this machine ({found}); clear the output that prints it."


@each
def test_kernelspec_language_info_and_parameters_cell(path):
    nb = read(path)
    kernelspec = nb.metadata.get("kernelspec", {})
    assert kernelspec.get("name") == "python3" and kernelspec.get("language") == "python" \
        and kernelspec.get("display_name"), f"{path.name}: kernelspec is {kernelspec}; papermill needs " \
        "{name: python3, display_name: Python 3, language: python}"
    assert nb.metadata.get("language_info", {}).get("name") == "python", f"{path.name}: language_info.name != python"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code", \
        f"{path.name} needs exactly one code cell tagged `parameters` (found {len(tagged)})"
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells), \
        f"{path.name} carries a papermill `injected-parameters` cell: commit the default-profile run " \
        "(`make reproduce`), not a parameterized copy"


@each
def test_name_checked_outputs_and_no_errors(path):
    assert re.match(r"^\d\d_[a-z0-9_]+\.ipynb$", path.name), f"{path.name}: expected NN_lower_case_name.ipynb"
    nb = read(path)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert not any(o.get("output_type") == "error" for o in cell.get("outputs", [])), \
            f"{path.name} cell {index} was committed with an error output"
        if cell.source.lstrip().startswith("# NBVAL_CHECK_OUTPUT"):
            assert cell.get("outputs"), (f"{path.name} cell {index} is marked # NBVAL_CHECK_OUTPUT but has no "
                                         "committed output to compare against; run `make reproduce`")


def tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("not a git checkout")
    return [name for name in out.stdout.decode().split("\0") if name]


def test_no_big_or_data_files_tracked():
    big, data = [], []
    for name in tracked_files():
        path = REPO / name
        if path.is_file() and path.stat().st_size > MAX_TRACKED_BYTES:
            big.append(f"{name} ({path.stat().st_size / 2**20:.1f} MiB)")
        committed_run = re.fullmatch(r"results/committed/\d\d_verdicts[\w.-]*/(rows\.jsonl|\w+\.csv|records/[\w.-]+\.jsonl)\.gz",
                                     name)
        if not name.startswith("tests/") and not committed_run and re.search(
                r"\.(gguf|parquet|safetensors|bin|pt|pth|ckpt|jsonl|jsonl\.gz|story)$", name):
            data.append(name)
    assert not big, f"files over {MAX_TRACKED_BYTES >> 20} MiB are tracked (data and weights live outside the repo): {big}"
    assert not data, (f"data or weight files are tracked (shared/data/ and results/ are not committed, except a "
                      f"committed run's frozen rows and frames under results/committed/NN_verdicts*/): {data}")


RUNS = sorted((REPO / "notebooks" / "runs").glob("*.ipynb"))  # second committed runs (e.g. the long profile's)


@pytest.mark.parametrize("path", NOTEBOOKS + RUNS, ids=lambda p: p.name)
def test_a_notebook_is_a_short_script_whose_prose_quotes_printed_numbers(path):
    nb = read(path)
    code = [c for c in nb.cells if c.cell_type == "code"]
    lines = [len(c.source.splitlines()) for c in code]
    assert sum(lines) <= 250 and max(lines) <= 40, \
        f"{path.name}: {sum(lines)} lines of code, longest cell {max(lines)} (at most 250 and 40: move analysis to helpers)"
    defined = [c.source.split("def ", 1)[1].split("(")[0] for c in code if re.search(r"^\s*def ", c.source, re.M)]
    assert not defined, f"{path.name} defines {defined}: functions belong in helpers/, with tests"
    printed = "".join("".join(o.get("text", "")) + json.dumps(o.get("data", {})) for c in code for o in c.get("outputs", []))
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.source.startswith("## What the numbers show"):
            quoted = re.findall(r"(?<![\w.])\d+\.\d+(?![\w.])", cell.source)
            unprinted = [number for number in quoted if number not in printed]
            assert not unprinted, f"{path.name}: its prose quotes {unprinted}, which no output printed"
