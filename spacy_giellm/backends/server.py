"""OpenAI-compatible completions server backend (`giellm.Server.v1`).

Talks to `POST {url}/v1/completions` of vLLM, llama.cpp's `llama-server` or
llama-cpp-python's server, with the standard library only (urllib +
concurrent.futures): one request per prompt, `concurrency` in flight.

Decoding is greedy (temperature 0, no repetition penalty: llama-cpp-python's
server otherwise applies 1.1). With `constrained = true` and a task (from the
component, or the `task` setting) each request carries the task's grammar for
its text (`constraints.build_gbnf`): in the `grammar` field for llama.cpp
servers, in `guided_grammar` for vLLM (`server_kind = "vllm"`).

Failures: connection errors, timeouts, HTTP 429 and 5xx are retried with
exponential backoff (`retries` times); other HTTP errors fail at once. Either
every prompt of a `generate` call gets exactly one output, in order, or the
call raises an error naming the URL: no prompt is silently dropped.

Redirects are not followed: urllib would resend the request to wherever
`Location` points (another host, with the `Authorization` key) as a GET; a
redirect is an error naming both addresses. Proxies from the environment
(`http_proxy`, `https_proxy`, `no_proxy`) are used as urllib does, except for
loopback hosts (localhost, 127.0.0.0/8, ::1), which are always reached
directly: a local server behind a corporate proxy setting must still work.
"""
from __future__ import annotations

import ipaddress
import json
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Sequence
from urllib.parse import urlsplit

from ..registry import giellm_backends
from .settings import SERVER_KINDS, Configurable, ServerSettings, base_url

__all__ = ["ServerBackend", "ServerError", "make_server_backend", "wait_until_ready"]

_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class ServerError(ConnectionError):
    """The completions server could not give an output (after retries)."""


class _Fatal(Exception):
    """An answer that retrying will not fix (HTTP 4xx, malformed JSON)."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Makes a 3xx answer an HTTPError instead of a new request elsewhere."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        return None


def _is_loopback(host: Optional[str]) -> bool:
    if not host:
        return False
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _opener(url: str) -> urllib.request.OpenerDirector:
    """No redirects; no proxy for loopback hosts, else the environment's (no_proxy honoured)."""
    proxies = {} if _is_loopback(urlsplit(url).hostname) else None  # None: read the environment
    return urllib.request.build_opener(urllib.request.ProxyHandler(proxies), _NoRedirect())


def wait_until_ready(url: str, timeout: float = 30.0, interval: float = 0.2) -> None:
    """Poll `{url}/v1/models` until the server answers 200, at most `timeout` s."""
    target = base_url(url) + "/v1/models"
    deadline = time.monotonic() + timeout
    last: Optional[BaseException] = None
    while time.monotonic() < deadline:
        try:
            with _opener(target).open(target, timeout=max(0.1, min(5.0, deadline - time.monotonic()))) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError, ValueError) as e:
            last = e
        time.sleep(interval)
    raise ServerError(f"giellm.Server.v1: {target} not ready after {timeout:g} s (last error: {last})")


class ServerBackend(Configurable):
    """Greedy completions from an OpenAI-compatible server."""

    settings_class = ServerSettings

    def __init__(
        self,
        url: str,
        model: Optional[str] = None,
        max_new_tokens: int = 256,
        concurrency: int = 4,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        stop: Sequence[str] = (),
        constrained: bool = False,
        server_kind: str = "llama.cpp",
        task: Optional[Any] = None,
        api_key: Optional[str] = None,
        extra_body: Optional[Dict[str, Any]] = None,
    ) -> None:
        self._configure_from(locals())  # ServerSettings validates

    def _setup(self, settings: ServerSettings, task: Any) -> None:
        self._settings = settings
        self.task: Any = None
        if task is not None:
            self.bind_task(task)

    @property
    def endpoint(self) -> str:
        return self.url + "/v1/completions"

    def __repr__(self) -> str:
        return f"ServerBackend(url={self.url!r}, model={self.model!r}, constrained={self.constrained})"

    def bind_task(self, task: Any, instruction: Optional[str] = None) -> None:
        """The task whose grammar constrains the outputs (the component calls this)."""
        from ..tasks import get_task

        self.task = get_task(task)  # the instruction is read from each prompt

    # ------------------------------------------------------------- requests

    def _body(self, prompt: str) -> Dict[str, Any]:
        body: Dict[str, Any] = {
            "prompt": prompt,
            "max_tokens": self.max_new_tokens,
            "temperature": 0.0,
            "top_p": 1.0,
            "n": 1,
            "stream": False,
        }
        if self.model:
            body["model"] = self.model
        if self.stop:
            body["stop"] = self.stop
        if self.server_kind == "llama.cpp":
            body["repeat_penalty"] = 1.0
        else:
            body["repetition_penalty"] = 1.0
        if self.constrained:
            if self.task is None:
                raise ValueError("giellm.Server.v1: constrained=true needs a task (set 'task' or use it in the giellm component)")
            from ..constraints import build_gbnf, split_prompt

            text, instruction = split_prompt(self.task, prompt)
            grammar = build_gbnf(self.task, text, instruction)
            body["grammar" if self.server_kind == "llama.cpp" else "guided_grammar"] = grammar
        body.update(self.extra_body)
        return body

    def _post(self, body: Dict[str, Any]) -> str:
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.endpoint, data=data, headers=headers, method="POST")
        try:
            with _opener(self.endpoint).open(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            if 300 <= e.code < 400:
                raise _Fatal(
                    f"HTTP {e.code} redirect to {e.headers.get('Location')!r}, not followed "
                    "(set 'url' to the server's own address)"
                ) from e
            detail = e.read()[:300].decode("utf-8", "replace") if e.fp is not None else ""
            if e.code in _RETRY_STATUS:
                raise ConnectionError(f"HTTP {e.code}: {detail}") from e
            raise _Fatal(f"HTTP {e.code}: {detail}") from e
        try:
            answer = json.loads(raw.decode("utf-8"))
            choices = answer["choices"]
            if len(choices) != 1:
                raise ValueError(f"{len(choices)} choices for one prompt")
            text = choices[0]["text"]
            if not isinstance(text, str):
                raise ValueError("choice text is not a string")
            return text
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise _Fatal(f"malformed answer ({e}): {raw[:200]!r}") from e

    def _complete(self, prompt: str) -> str:
        body = self._body(prompt)
        last: Optional[BaseException] = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))
            try:
                return self._post(body)
            except _Fatal as e:
                raise ServerError(f"giellm.Server.v1: {self.endpoint} refused a request: {e}") from None
            except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError, OSError) as e:
                last = e
        raise ServerError(
            f"giellm.Server.v1: no answer from {self.endpoint} after {self.retries + 1} tries "
            f"(is the server running?): {getattr(last, 'reason', None) or last}"
        )

    def generate(self, prompts: List[str]) -> List[str]:
        """One greedy completion per prompt, in order; raises ServerError if any prompt fails."""
        prompts = list(prompts)
        if not prompts:
            return []
        if len(prompts) == 1 or self.concurrency == 1:
            return [self._complete(p) for p in prompts]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts))) as pool:
            futures = [pool.submit(self._complete, p) for p in prompts]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise


    # ------------------------------------------------------ response cache

    def model_identity(self, hash_path) -> None:
        """Unknown: a server does not say which weights it serves. A response
        cache needs the identity declared in its config (`model_identity`)."""
        return None


# The class is its own factory: the config block's settings are its arguments.
make_server_backend = giellm_backends.register("giellm.Server.v1", func=ServerBackend)
