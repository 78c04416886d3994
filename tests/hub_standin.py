"""A local stand-in for the few Hugging Face Hub endpoints that `create_repo` and `upload_folder` call, so that
`vlmppo export --push-to-hub` is tested against a real HTTP server and the real huggingface_hub client, never
the real Hub.

Use: ``with HubStandin() as hub:`` then point ``HF_ENDPOINT`` at ``hub.url``; ``hub.repos[repo_id]`` maps each
uploaded path to its bytes, ``hub.requests`` lists (method, path) of every call. Only the namespace ``me`` may
be written (403 elsewhere, as the Hub answers a token without rights); every file is accepted as a regular
(non-LFS) upload, carried base64-encoded in the commit.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml

OWNER = "me"


class HubStandin:
    def __init__(self):
        self.repos: dict[str, dict[str, bytes]] = {}
        self.requests: list[tuple[str, str]] = []
        self.metadata: list[dict] = []  # the README.md front matter of each validate-yaml call
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HubStandin:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _create(self, body: bytes) -> tuple[int, dict]:
        data = json.loads(body or b"{}")
        repo = f"{data.get('organization') or OWNER}/{data['name']}"
        if not repo.startswith(f"{OWNER}/"):
            return 403, {
                "error": f"You don't have the rights to create a model under the namespace {repo.split('/')[0]}"
            }
        self.repos.setdefault(repo, {})
        return 200, {"url": f"{self.url}/{repo}", "name": repo}

    def _validate_yaml(self, body: bytes) -> tuple[int, dict]:
        """The Hub checks a README's metadata block before the commit: a YAML mapping with a list of tags."""
        content = json.loads(body)["content"]
        match = re.match(r"---\n(.*?)\n---\n", content, re.S)
        try:
            metadata = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as err:
            return 400, {"errors": [{"message": f"invalid YAML: {err}"}]}
        if not isinstance(metadata, dict) or not all(isinstance(t, str) for t in metadata.get("tags", [])):
            return 400, {"errors": [{"message": "metadata must be a mapping whose tags are strings"}]}
        self.metadata.append(metadata)
        return 200, {"warnings": []}

    def _preupload(self, body: bytes) -> tuple[int, dict]:
        files = json.loads(body)["files"]
        return 200, {
            "files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
        }

    def _commit(self, repo: str, body: bytes) -> tuple[int, dict]:
        if repo not in self.repos:
            return 404, {"error": f"Repository {repo} not found"}
        for line in body.splitlines():
            item = json.loads(line)
            if item["key"] == "file":
                self.repos[repo][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            elif item["key"] != "header":
                return 400, {"error": f"the stand-in does not take {item['key']!r} operations"}
        oid = f"{len(self.requests):040x}"
        return 200, {"commitUrl": f"{self.url}/{repo}/commit/{oid}", "commitOid": oid, "success": True}

    def _route(self, method: str, path: str, body: bytes) -> tuple[int, dict]:
        self.requests.append((method, path))
        path = path.split("?")[0]
        if method == "POST" and path == "/api/repos/create":
            return self._create(body)
        if method == "POST" and path == "/api/validate-yaml":
            return self._validate_yaml(body)
        match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit)/([^/]+)", path)
        if method == "POST" and match:
            repo, action = match.group(1), match.group(2)
            return self._preupload(body) if action == "preupload" else self._commit(repo, body)
        return 404, {"error": f"the stand-in has no {method} {path}"}

    def _handler(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, data = standin._route(method, self.path, body)
                payload = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                self._answer("GET")

            def do_POST(self):
                self._answer("POST")

            def log_message(self, *args):  # keep test output clean
                pass

        return Handler
