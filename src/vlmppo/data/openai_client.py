"""A small client for OpenAI-compatible chat-completions servers (vLLM, SGLang, OpenAI, ...).

Standard library only. Retries 429, 5xx, timeouts and refused connections with exponential backoff
(honouring Retry-After); any other 4xx is the caller's mistake and fails at once with the server's
message. The API key is read from the environment and never logged or written anywhere.
"""

from __future__ import annotations

import base64
import io
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import numpy as np
from PIL import Image

from vlmppo.errors import VlmppoError


class LabelServerError(VlmppoError):
    """The chat server rejected a request or could not be reached after all retries."""


def image_data_url(image: Image.Image | np.ndarray) -> str:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def missing_key_note(base_url: str, api_key_env: str) -> str | None:
    """What to tell the user before the first request when ``$api_key_env`` is unset; None when it is set.

    Not an error: a local ``vllm serve`` without ``--api-key`` needs no key. But a server that does need
    one, or one that is not running, would otherwise first cost every retry before the user learns it.
    """
    if os.environ.get(api_key_env):
        return None
    return (
        f"${api_key_env} (label.api_key_env) is not set, so requests to {base_url} carry no API key: fine for "
        "a server started without one (`vllm serve` without --api-key); a server that needs one answers "
        "HTTP 401."
    )


@dataclass
class ChatClient:
    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 120.0
    max_retries: int = 5
    backoff_s: float = 1.0

    def complete(self, text: str, images: list, *, max_tokens: int, temperature: float) -> str:
        """One user turn (images first, then text) → the assistant's text."""
        content = [{"type": "image_url", "image_url": {"url": image_data_url(im)}} for im in images]
        content.append({"type": "text", "text": text})
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        reply = self._post("/chat/completions", body)
        try:
            return reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise LabelServerError(
                f"The server at {self.base_url} answered without choices[0].message.content: "
                f"{json.dumps(reply)[:300]}"
            ) from None

    def _post(self, route: str, body: dict) -> dict:
        url = self.base_url.rstrip("/") + route
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = json.dumps(body).encode()
        last_problem = ""
        for attempt in range(self.max_retries + 1):
            wait = self.backoff_s * 2**attempt
            try:
                request = urllib.request.Request(url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read().decode())
            except urllib.error.HTTPError as exc:
                message = exc.read().decode(errors="replace")[:500]
                if exc.code != 429 and exc.code < 500:
                    raise LabelServerError(
                        f"The server at {url} rejected the request with HTTP {exc.code}: {message}",
                        hint="Check label.model and label.base_url (and the key in "
                        f"${self.api_key_env} if the server needs one).",
                    ) from None
                last_problem = f"HTTP {exc.code}: {message}"
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    wait = max(wait, float(retry_after))
            except (TimeoutError, urllib.error.URLError, ConnectionError) as exc:
                last_problem = str(getattr(exc, "reason", exc))
            except json.JSONDecodeError:
                last_problem = "an answer that is not JSON"
            if attempt < self.max_retries:
                time.sleep(wait)
        no_key = "" if key else f" (and ${self.api_key_env} is not set)"
        raise LabelServerError(
            f"Could not get an answer from {url} after {self.max_retries + 1} tries (last: {last_problem})"
            f"{no_key}.",
            hint="Is the server running (e.g. `vllm serve MODEL`)? Labels written so far are kept; "
            "run `vlmppo label` again to resume.",
        )
