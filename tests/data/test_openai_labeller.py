"""The openai labeller against a real local HTTP server that speaks the chat-completions protocol."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from tests.helpers import run_cli

pytestmark = pytest.mark.e2e  # the CLI against a local HTTP server

PRESET = "numberline-tiny"


class ChatServer:
    """A chat-completions server on localhost whose answers follow a script.

    ``script`` is a list of (status, body) for the first requests; after it, every request gets a
    well-formed answer choosing "+". Requests are recorded (without their images) for assertions.
    """

    def __init__(self, script=(), delay_s: float = 0.0):
        self.script = list(script)
        self.delay_s = delay_s
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(
                        {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
                    )
                    status, payload = server.script.pop(0) if server.script else (200, server.reply("+"))
                time.sleep(server.delay_s)
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @staticmethod
    def reply(action: str, thoughts: str = "move toward the target") -> dict:
        content = json.dumps({"thoughts": thoughts, "action": action})
        return {"choices": [{"message": {"role": "assistant", "content": content}}]}

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()  # stop listening too: a closed server must refuse connections


@pytest.fixture
def collected(tmp_path):
    out = run_cli(
        "collect", "--preset", PRESET, f"run.output_dir={tmp_path}", "run.name=run", "collect.episodes=5"
    )
    assert out.returncode == 0, out.stderr
    return tmp_path


def label(root: Path, server: ChatServer, *extra: str, env=None):
    return run_cli(
        "label",
        "--preset",
        PRESET,
        f"run.output_dir={root}",
        "run.name=run",
        "--labeller",
        "openai",
        f"label.base_url={server.url}",
        "label.model=judge",
        "label.backoff_s=0.01",
        "label.max_concurrency=2",
        "label.timeout_s=20",
        *extra,
        env=env,
    )


def labels(root: Path) -> list[dict]:
    return [json.loads(x) for x in (root / "run/label/labels.jsonl").read_text().splitlines()]


def test_retries_429_and_500_then_keeps_a_malformed_answer_as_parse_error(collected):
    server = ChatServer(
        script=[
            (429, {"error": "slow down"}),
            (500, {"error": "oops"}),
            (200, {"choices": [{"message": {"content": "I think we should go up, maybe."}}]}),
        ]
    )
    try:
        out = label(collected, server, env={"OPENAI_API_KEY": "sk-test-secret"})
    finally:
        server.close()
    assert out.returncode == 0, out.stderr
    rows = labels(collected)
    n_steps = len((collected / "run/collect/episodes.jsonl").read_text().splitlines())
    assert len(rows) == n_steps and len({r["key"] for r in rows}) == n_steps
    assert sum(r["status"] == "parse_error" for r in rows) == 1
    assert all(r["action"] == "+" for r in rows if r["status"] == "ok")
    assert len(server.requests) == n_steps + 2  # two retried
    first = server.requests[-1]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer sk-test-secret"
    content = first["body"]["messages"][0]["content"]
    assert content[0]["image_url"]["url"].startswith("data:image/png;base64,")
    everything = "".join(
        p.read_text() for p in (collected / "run").rglob("*") if p.is_file() and p.suffix != ".png"
    )
    assert "sk-test-secret" not in everything + out.stdout + out.stderr


def test_score_mode_sends_the_rubric_and_parses_scores(collected):
    answer = {"choices": [{"message": {"content": '```json\n{"score": 9, "reason": "closer"}\n```'}}]}
    server = ChatServer(script=[(200, answer)] * 100)
    try:
        out = label(collected, server, "--mode", "score")
    finally:
        server.close()
    assert out.returncode == 0, out.stderr
    rows = labels(collected)
    assert rows and all(r["score"] == 9 and r["reason"] == "closer" for r in rows)
    assert "from 0 to 10" in server.requests[0]["body"]["messages"][0]["content"][-1]["text"]


def test_server_down_is_a_clear_error(collected):
    server = ChatServer()
    server.close()  # nothing listens on that port any more
    out = label(collected, server, "label.max_retries=1")
    assert out.returncode == 1
    assert "Could not get an answer" in out.stderr and "Is the server running" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_missing_api_key_is_said_before_the_first_request_and_in_the_final_error(collected):
    server = ChatServer()
    server.close()
    argv = [sys.executable, "-m", "vlmppo", "label", "--preset", PRESET, f"run.output_dir={collected}",
            "run.name=run", "--labeller", "openai", f"label.base_url={server.url}", "label.model=judge",
            "label.backoff_s=0.01"]  # fmt: skip
    env = {**os.environ, "OPENAI_API_KEY": "", "COLUMNS": "300"}
    out = subprocess.run(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120
    )
    assert out.returncode == 1
    text = " ".join(out.stdout.split())
    note = text.find("$OPENAI_API_KEY (label.api_key_env) is not set")
    assert 0 <= note < text.find("Could not get an answer"), text  # said before the retries, not after
    assert "(and $OPENAI_API_KEY is not set)" in text
    # With a key, no such note.
    keyed = label(collected, server, "label.max_retries=0", env={"OPENAI_API_KEY": "sk-test"})
    assert "is not set" not in keyed.stdout + keyed.stderr


def test_client_error_is_not_retried_and_shows_the_server_message(collected):
    server = ChatServer(script=[(404, {"error": "model 'judge' not found"})])
    try:
        out = label(collected, server, "label.max_concurrency=1")
    finally:
        server.close()
    assert out.returncode == 1 and "HTTP 404" in out.stderr and "model 'judge' not found" in out.stderr
    # Not retried (5 retries would add 5 requests); the batch's other requests are cancelled, except the
    # one the single worker may already have taken.
    assert len(server.requests) <= 2


def test_label_killed_mid_run_resumes_without_duplicates(collected):
    server = ChatServer(delay_s=0.3)
    args = [
        sys.executable,
        "-m",
        "vlmppo",
        "label",
        "--preset",
        PRESET,
        f"run.output_dir={collected}",
        "run.name=run",
        "--labeller",
        "openai",
        f"label.base_url={server.url}",
        "label.model=judge",
        "label.max_concurrency=1",
    ]
    try:
        proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ)
        )
        path = collected / "run/label/labels.jsonl"
        deadline = time.time() + 60
        while time.time() < deadline and (not path.exists() or not path.read_text().strip()):
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        n_before = len(labels(collected))
        n_steps = len((collected / "run/collect/episodes.jsonl").read_text().splitlines())
        assert 0 < n_before < n_steps
        server.delay_s = 0.0
        out = label(collected, server)
    finally:
        server.close()
    assert out.returncode == 0, out.stderr
    rows = labels(collected)
    assert len(rows) == n_steps and len({r["key"] for r in rows}) == n_steps
    assert f"{n_before} already labelled" in out.stdout
