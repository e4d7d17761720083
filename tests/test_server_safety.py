"""giellm.Server.v1 does not follow redirects (nor send its API key elsewhere)
and reaches loopback servers directly even when a proxy is configured.

Every server here is a stdlib http.server bound to 127.0.0.1 only."""
from __future__ import annotations

import http.server
import json
import threading
from contextlib import contextmanager

import pytest

from spacy_giellm.backends.server import ServerError, make_server_backend, wait_until_ready


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers POSTs with one completion, or with a redirect to `location`;
    records (method, path, Authorization) of every request."""

    location = None

    def log_message(self, *args):
        pass

    def _record(self):
        self.server.seen.append((self.command, self.path, self.headers.get("Authorization")))

    def do_GET(self):
        self._record()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{"data": []}')

    def do_POST(self):
        self._record()
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.server.location:
            self.send_response(302)
            self.send_header("Location", self.server.location)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps({"choices": [{"text": "ok", "index": 0}]}).encode())


@contextmanager
def _server(location=None):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    httpd.seen, httpd.location = [], location
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch):
    for var in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)


@pytest.mark.parametrize("target", ["other-host", "ftp"])
def test_redirect_is_not_followed_and_the_key_stays_home(target):
    with _server() as (elsewhere, elsewhere_url):
        location = elsewhere_url + "/steal" if target == "other-host" else "ftp://127.0.0.1/x"
        with _server(location=location) as (origin, url):
            backend = make_server_backend(url=url, api_key="SECRET", retries=2, backoff=0.01)
            with pytest.raises(ServerError, match="redirect") as err:
                backend.generate(["p"])
    assert url in str(err.value) and location in str(err.value)
    assert origin.seen == [("POST", "/v1/completions", "Bearer SECRET")]  # not retried either
    assert elsewhere.seen == []


def test_loopback_bypasses_the_environment_proxy(monkeypatch):
    with _server() as (proxy, proxy_url), _server() as (target, url):
        monkeypatch.setenv("http_proxy", proxy_url)
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        for host in ("127.0.0.1", "localhost"):
            backend = make_server_backend(url=url.replace("127.0.0.1", host), retries=0)
            assert backend.generate(["p"]) == ["ok"]
        wait_until_ready(url, timeout=5)
    assert proxy.seen == []
    assert [m for m, _, _ in target.seen] == ["POST", "POST", "GET"]


def test_other_hosts_use_the_proxy_unless_no_proxy_says_so(monkeypatch):
    """The environment's proxy still applies to remote hosts, and no_proxy is honoured."""
    remote = "http://giellm-test.invalid:8000"
    with _server() as (proxy, proxy_url):
        monkeypatch.setenv("http_proxy", proxy_url)
        backend = make_server_backend(url=remote, retries=0, api_key="K")
        assert backend.generate(["p"]) == ["ok"]
        assert proxy.seen == [("POST", remote + "/v1/completions", "Bearer K")]
        monkeypatch.setenv("no_proxy", "giellm-test.invalid")
        with pytest.raises(ServerError, match="giellm-test.invalid"):
            backend.generate(["p"])  # direct: the .invalid name does not resolve
        assert len(proxy.seen) == 1
