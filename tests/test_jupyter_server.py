"""The JupyterLab path: a Jupyter server from the project's environment opens the quickstart notebook
and runs its cells (tiny parameters injected) in a kernel over the websocket channel, with no error.

The server listens on 127.0.0.1 at a free port with a random token, serves the repository, and is
always shut down. Every wait is bounded.
"""
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

requests = pytest.importorskip("requests")
websocket = pytest.importorskip("websocket")  # websocket-client, a jupyter_server dependency

from helpers.running.reproduce import profile_parameters  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = "notebooks/00_quickstart.ipynb"
START_TIMEOUT = 60
CELL_TIMEOUT = 180


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1",
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", f"--ServerApp.root_dir={REPO}", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", "--ServerApp.open_browser=False", "--ServerApp.allow_root=True",
         f"--IdentityProvider.token={token}"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    session = requests.Session()
    session.headers["Authorization"] = f"token {token}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"jupyter server exited with {proc.returncode}:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
            try:
                if session.get(f"{base}/api/status", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"jupyter server did not answer within {START_TIMEOUT} s")
            time.sleep(0.5)
        yield base, token, session
    finally:
        try:
            session.post(f"{base}/api/shutdown", timeout=5)
            proc.wait(timeout=20)
        except Exception:  # noqa: BLE001 - fall back to signals below
            pass
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        log.close()


def execute(ws, code: str, session_id: str) -> tuple[dict, list[dict]]:
    """Send one execute_request on the shell channel; return the reply and the cell's iopub messages."""
    msg_id = uuid.uuid4().hex
    ws.send(json.dumps({
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test", "session": session_id,
                   "version": "5.3", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True}}))
    reply, iopub, idle = None, [], False
    deadline = time.monotonic() + CELL_TIMEOUT
    while reply is None or not idle:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no reply within {CELL_TIMEOUT} s to:\n{code[:300]}")
        ws.settimeout(max(1.0, deadline - time.monotonic()))
        message = json.loads(ws.recv())
        if message.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        if message["channel"] == "shell" and message["msg_type"] == "execute_reply":
            reply = message["content"]
        elif message["channel"] == "iopub":
            iopub.append(message)
            idle |= message["msg_type"] == "status" and message["content"]["execution_state"] == "idle"
    return reply, iopub


def test_quickstart_runs_in_a_kernel_through_the_server(server, tmp_path):
    base, token, http = server
    contents = http.get(f"{base}/api/contents/{NOTEBOOK}", params={"content": 1}, timeout=30)
    assert contents.status_code == 200, contents.text
    cells = contents.json()["content"]["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert "parameters" in code[0]["metadata"].get("tags", [])

    parameters = {**profile_parameters(REPO / NOTEBOOK, "tiny"), "output_dir": str(tmp_path / "figures"),
                  "results_path": str(tmp_path / "results.jsonl")}
    injected = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
    sources = ["import helpers", code[0]["source"], injected] + [c["source"] for c in code[1:]]

    kernel = http.post(f"{base}/api/kernels", json={"name": "python3", "path": "notebooks"}, timeout=60)
    assert kernel.status_code == 201, kernel.text
    kernel_id = kernel.json()["id"]
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{base.rsplit(':', 1)[1]}/api/kernels/{kernel_id}/channels?token={token}", timeout=30)
    try:
        session_id = uuid.uuid4().hex
        printed = []
        for index, source in enumerate(sources):
            reply, iopub = execute(ws, source, session_id)
            errors = [m["content"] for m in iopub if m["msg_type"] == "error"]
            assert reply["status"] == "ok" and not errors, (
                f"cell {index} failed: {reply.get('ename')}: {reply.get('evalue')}\n"
                + "\n".join(errors[0].get("traceback", [])[-5:] if errors else []) + f"\n---\n{source[:500]}")
            printed += [m["content"]["text"] for m in iopub if m["msg_type"] == "stream"]
        text = "".join(printed)
        assert "KL(dense||dense) == 0: True" in text
        assert (tmp_path / "figures" / "00_quickstart_kl.png").exists()
    finally:
        ws.close()
        http.delete(f"{base}/api/kernels/{kernel_id}", timeout=30)
