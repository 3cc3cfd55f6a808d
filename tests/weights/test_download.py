"""Downloads into the weights cache, against a throw-away HTTP server on 127.0.0.1 that each test starts.

The server's routes say what it does for each path: serve the bytes, answer with an HTTP error, announce more
bytes than it sends, stall before the headers or in the body, or hand out the body piece by piece while a test
holds it (to interrupt a transfer, or to run two downloads of the same model at once).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from histostain.errors import WeightsError
from histostain.runtime import progress
from histostain.weights.cache import cached_path, is_cached, model_dir, read_record, verify
from histostain.weights.download import download, offline_from_env
from histostain.weights.registry import ModelCard

PAYLOAD = bytes(range(256)) * 1200 + b"end of weights"
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
NAME = "hovernet_fast-test"


# ------------------------------------------------------------------------------------------ test server


@dataclass
class Route:
    body: bytes = PAYLOAD
    mode: str = "ok"  # ok | error | truncated | stall_headers | stall_body | held
    status: int = 200


@dataclass
class ServerState:
    base: str = ""
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    body_started: threading.Event = field(default_factory=threading.Event)  # a held body's first piece is out
    release: threading.Event = field(default_factory=threading.Event)  # let held / stalled responses go on

    def url(self, path: str, route: Route | None = None) -> str:
        if route is not None:
            self.routes[path] = route
        return self.base + path


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one response per connection; closing ends the body

    def do_GET(self) -> None:
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        with state.lock:
            state.requests.append(self.path)
        route = state.routes.get(self.path)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up (timeout, Ctrl-C)
            self._answer(state, route)

    def _answer(self, state: ServerState, route: Route | None) -> None:
        if route is None:
            self.send_error(404)
            return
        if route.mode == "error":
            self.send_error(route.status)
            return
        if route.mode == "stall_headers":
            state.release.wait(10)
            return
        body = route.body
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        half = len(body) // 2
        if route.mode == "truncated":
            self.wfile.write(body[:half])  # then the connection closes: fewer bytes than announced
            return
        if route.mode in ("stall_body", "held"):
            self.wfile.write(body[:half])
            self.wfile.flush()
            state.body_started.set()
            state.release.wait(20)
            self.wfile.write(body[half:])
            return
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass


@pytest.fixture(autouse=True)
def _no_proxy_no_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests to 127.0.0.1 go straight to the test server, and the developer's offline switch is off."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    monkeypatch.delenv("HISTOSTAIN_OFFLINE", raising=False)


@pytest.fixture
def server() -> Iterator[ServerState]:
    state = ServerState()
    httpd = QuietServer(("127.0.0.1", 0), Handler)
    httpd.state = state  # type: ignore[attr-defined]
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def make_card(urls: list[str], **overrides: object) -> ModelCard:
    values: dict[str, object] = {
        "name": NAME,
        "task": "segmentation",
        "arch": "hovernet",
        "filename": "w.pth",
        "urls": urls,
        "sha256": DIGEST,
    }
    values.update(overrides)
    return ModelCard(**values)


def folder_names(card: ModelCard, home: Path) -> list[str]:
    folder = model_dir(card, home)
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def assert_nothing_cached(card: ModelCard, home: Path) -> None:
    assert not is_cached(card, home)
    assert not cached_path(card, home).exists()
    assert read_record(card, home) is None
    assert set(folder_names(card, home)) <= {".lock"}  # no .part, no record, no weights


# ------------------------------------------------------------------------------------------ success paths


def test_download_streams_verifies_and_records(server: ServerState, tmp_path: Path) -> None:
    url = server.url("/w.pth", Route())
    card = make_card([url])
    record = download(card, tmp_path, timeout=5)

    path = tmp_path / "weights" / NAME / "w.pth"
    assert path.read_bytes() == PAYLOAD
    assert record.sha256 == DIGEST
    assert record.size_bytes == len(PAYLOAD)
    assert (record.source, record.origin, record.checked_against) == ("download", url, "sha256")
    assert json.loads((tmp_path / "weights" / NAME / "record.json").read_text()) == record.to_dict()
    assert folder_names(card, tmp_path) == [".lock", "record.json", "w.pth"]
    assert server.requests == ["/w.pth"]
    assert verify(card, tmp_path)[0]


def test_a_cached_model_is_not_fetched_again_unless_forced(server: ServerState, tmp_path: Path) -> None:
    card = make_card([server.url("/w.pth", Route())])
    first = download(card, tmp_path, timeout=5)
    assert download(card, tmp_path, timeout=5) == first
    assert server.requests == ["/w.pth"]
    download(card, tmp_path, timeout=5, force=True)
    assert server.requests == ["/w.pth", "/w.pth"]
    assert cached_path(card, tmp_path).read_bytes() == PAYLOAD


def test_with_the_progress_bar_drawn(server: ServerState, tmp_path: Path) -> None:
    card = make_card([server.url("/w.pth", Route())])
    progress.configure(enabled=True)
    try:
        download(card, tmp_path, timeout=5)
    finally:
        progress.configure()
    assert cached_path(card, tmp_path).read_bytes() == PAYLOAD


def test_file_urls_work(tmp_path: Path) -> None:
    source = tmp_path / "shared drive" / "weights.pth"
    source.parent.mkdir()
    source.write_bytes(PAYLOAD)
    card = make_card([source.as_uri()])
    record = download(card, tmp_path / "home", timeout=5)
    assert cached_path(card, tmp_path / "home").read_bytes() == PAYLOAD
    assert record.origin == source.as_uri() and record.source == "download"
    assert source.read_bytes() == PAYLOAD


def test_a_missing_file_url_is_a_one_line_error(tmp_path: Path) -> None:
    missing = (tmp_path / "nowhere.pth").as_uri()
    with pytest.raises(WeightsError, match=f"download of {NAME} failed: .*{missing}") as caught:
        download(make_card([missing]), tmp_path / "home", timeout=5)
    assert "\n" not in caught.value.one_line()


def test_the_next_url_is_tried_when_one_fails(server: ServerState, tmp_path: Path) -> None:
    bad = server.url("/mirror-down", Route(mode="error", status=503))
    good = server.url("/w.pth", Route())
    card = make_card([bad, good])
    record = download(card, tmp_path, timeout=5)
    assert record.origin == good
    assert server.requests == ["/mirror-down", "/w.pth"]
    assert folder_names(card, tmp_path) == [".lock", "record.json", "w.pth"]


def test_every_failed_url_is_reported(server: ServerState, tmp_path: Path) -> None:
    first = server.url("/a", Route(mode="error", status=500))
    second = server.url("/b", Route(mode="error", status=404))
    with pytest.raises(WeightsError) as caught:
        download(make_card([first, second]), tmp_path, timeout=5)
    message = caught.value.one_line()
    assert f"HTTP 500 from {first}" in message and f"HTTP 404 from {second}" in message
    assert "\n" not in message


def test_a_card_without_digest_records_one_that_later_checks_use(server: ServerState, tmp_path: Path) -> None:
    card = make_card([server.url("/w.pth", Route())], sha256=None)
    record = download(card, tmp_path, timeout=5)
    assert record.checked_against == "recorded"
    assert record.sha256 == DIGEST
    assert read_record(card, tmp_path) == record
    assert verify(card, tmp_path)[0]

    tampered = bytearray(PAYLOAD)
    tampered[1000] ^= 0xFF
    cached_path(card, tmp_path).write_bytes(bytes(tampered))
    ok, message = verify(card, tmp_path)
    assert not ok
    assert DIGEST in message and hashlib.sha256(bytes(tampered)).hexdigest() in message


def test_a_published_prefix_is_checked(server: ServerState, tmp_path: Path) -> None:
    url = server.url("/w.pth", Route())
    good = make_card([url], sha256=None, sha256_prefix=DIGEST[:8])
    assert download(good, tmp_path / "good", timeout=5).checked_against == "sha256_prefix"

    wrong_prefix = "00000000" if not DIGEST.startswith("00000000") else "11111111"
    bad = make_card([url], sha256=None, sha256_prefix=wrong_prefix)
    with pytest.raises(WeightsError, match=f"expected sha256 {wrong_prefix}\\.\\.\\., got {DIGEST}"):
        download(bad, tmp_path / "bad", timeout=5)
    assert_nothing_cached(bad, tmp_path / "bad")


# ------------------------------------------------------------------------------------------ failures


def test_a_checksum_mismatch_deletes_the_download_and_names_both_digests(server: ServerState, tmp_path: Path) -> None:
    other = b"a different file" * 100
    url = server.url("/w.pth", Route(body=other))
    card = make_card([url])  # expects PAYLOAD's digest
    with pytest.raises(WeightsError) as caught:
        download(card, tmp_path, timeout=5)
    message = caught.value.one_line()
    assert DIGEST in message and hashlib.sha256(other).hexdigest() in message
    assert url in message and "\n" not in message
    assert_nothing_cached(card, tmp_path)


def test_a_truncated_transfer_is_an_error_and_leaves_nothing(server: ServerState, tmp_path: Path) -> None:
    url = server.url("/w.pth", Route(mode="truncated"))
    card = make_card([url], sha256=None)  # no digest: only the length check can catch it
    with pytest.raises(WeightsError, match=f"truncated at {len(PAYLOAD) // 2} of {len(PAYLOAD)} bytes") as caught:
        download(card, tmp_path, timeout=5)
    assert "\n" not in caught.value.one_line()
    assert_nothing_cached(card, tmp_path)


def test_a_server_error_is_a_one_line_error(server: ServerState, tmp_path: Path) -> None:
    url = server.url("/w.pth", Route(mode="error", status=500))
    card = make_card([url])
    with pytest.raises(WeightsError) as caught:
        download(card, tmp_path, timeout=5)
    assert caught.value.message == f"download of {NAME} failed: HTTP 500 from {url}"
    assert "weights import" in caught.value.one_line()  # the hint says how to bring the file in by hand
    assert_nothing_cached(card, tmp_path)


@pytest.mark.parametrize("mode", ["stall_headers", "stall_body"])
def test_a_slow_server_times_out(server: ServerState, tmp_path: Path, mode: str) -> None:
    url = server.url("/w.pth", Route(mode=mode))
    card = make_card([url])
    start = time.monotonic()
    with pytest.raises(WeightsError) as caught:
        download(card, tmp_path, timeout=0.5)
    elapsed = time.monotonic() - start
    assert elapsed < 5  # the server would hold the response for 10 s
    assert caught.value.message == f"download of {NAME} failed: timed out after 0.5s ({url})"
    assert_nothing_cached(card, tmp_path)


# ------------------------------------------------------------------------------------------ offline / manual


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_offline_never_touches_the_network(
    server: ServerState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    url = server.url("/w.pth", Route())
    card = make_card([url])
    if how == "environment":
        monkeypatch.setenv("HISTOSTAIN_OFFLINE", "1")
        assert offline_from_env()
    with pytest.raises(WeightsError) as caught:
        download(card, tmp_path, offline=how == "argument", timeout=5)
    assert caught.value.one_line() == (
        f"{NAME} is not in the cache and HISTOSTAIN_OFFLINE is set; download {url} elsewhere and run: "
        f"histostain weights import {NAME} FILE"
    )
    assert server.requests == []
    assert_nothing_cached(card, tmp_path)


def test_offline_still_serves_what_is_cached(server: ServerState, tmp_path: Path) -> None:
    card = make_card([server.url("/w.pth", Route())])
    record = download(card, tmp_path, timeout=5)
    assert download(card, tmp_path, offline=True) == record
    assert server.requests == ["/w.pth"]


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("true", True), ("YES", True), ("0", False), ("", False)])
def test_offline_from_env(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    monkeypatch.setenv("HISTOSTAIN_OFFLINE", value)
    assert offline_from_env() is expected


def test_a_manual_download_card_says_where_to_get_the_file(tmp_path: Path) -> None:
    card = make_card([], manual_download="ask the lab for weights.tar")
    with pytest.raises(WeightsError) as caught:
        download(card, tmp_path)
    line = caught.value.one_line()
    assert "ask the lab for weights.tar" in line and f"histostain weights import {NAME} FILE" in line
    assert_nothing_cached(card, tmp_path)


# ------------------------------------------------------------------------------------------ interruption


_CHILD_SCRIPT = """
import sys
from pathlib import Path
from histostain.weights.download import download
from histostain.weights.registry import ModelCard
card = ModelCard.model_validate_json(sys.argv[1])
download(card, Path(sys.argv[2]), timeout=30)
"""


def _wait_for_part(card: ModelCard, home: Path, child: subprocess.Popen[bytes]) -> Path:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        parts = [p for p in model_dir(card, home).glob("*.part")] if model_dir(card, home).is_dir() else []
        if parts and parts[0].stat().st_size > 0:
            return parts[0]
        assert child.poll() is None, "the download ended before it could be interrupted"
        time.sleep(0.02)
    raise AssertionError("the download never started writing")


def test_ctrl_c_mid_transfer_removes_the_partial_file(server: ServerState, tmp_path: Path) -> None:
    card = make_card([server.url("/w.pth", Route(mode="held"))])
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD_SCRIPT, card.model_dump_json(), str(tmp_path)], stderr=subprocess.PIPE
    )
    try:
        part = _wait_for_part(card, tmp_path, child)
        assert part.name.startswith("w.pth.") and part.name.endswith(".part")
        child.send_signal(signal.SIGINT)
        _, stderr = child.communicate(timeout=30)
        assert child.returncode != 0
        assert b"KeyboardInterrupt" in stderr  # interrupted mid-transfer, not failed for another reason
    finally:
        if child.poll() is None:
            child.kill()
    assert_nothing_cached(card, tmp_path)


def test_a_killed_download_leaves_nothing_valid_and_the_next_one_restarts(server: ServerState, tmp_path: Path) -> None:
    card = make_card([server.url("/w.pth", Route(mode="held"))])
    child = subprocess.Popen([sys.executable, "-c", _CHILD_SCRIPT, card.model_dump_json(), str(tmp_path)])
    try:
        part = _wait_for_part(card, tmp_path, child)
        child.kill()  # no chance to clean up
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
    assert part.exists()  # the half file stays, under a name that never counts as cached
    assert not is_cached(card, tmp_path) and not cached_path(card, tmp_path).exists()

    server.routes["/w.pth"] = Route()
    record = download(card, tmp_path, timeout=5)
    assert record.sha256 == DIGEST
    assert not part.exists()  # the stale partial file of the killed process is gone
    assert folder_names(card, tmp_path) == [".lock", "record.json", "w.pth"]


# ------------------------------------------------------------------------------------------ concurrency


def test_two_threads_downloading_the_same_model(server: ServerState, tmp_path: Path) -> None:
    card = make_card([server.url("/w.pth", Route(mode="held"))])
    results: dict[str, object] = {}

    def run(key: str) -> None:
        try:
            results[key] = download(card, tmp_path, timeout=30)
        except BaseException as exc:  # reported by the asserts below
            results[key] = exc

    first = threading.Thread(target=run, args=("first",))
    first.start()
    assert server.body_started.wait(10)  # the first download is mid-transfer, holding the model's lock
    second = threading.Thread(target=run, args=("second",))
    second.start()
    second.join(0.3)
    assert second.is_alive()  # waits for the first instead of fetching too
    server.release.set()
    first.join(30)
    second.join(30)

    assert results["first"] == results["second"]
    assert server.requests == ["/w.pth"]  # the second found it cached once it had the lock
    assert cached_path(card, tmp_path).read_bytes() == PAYLOAD
    assert read_record(card, tmp_path) == results["first"]
    assert folder_names(card, tmp_path) == [".lock", "record.json", "w.pth"]


def _download_in_process(card_json: str, home: str, ready: str, out: str) -> None:
    """A spawned process: say it is about to download, download, write its record (or error) as JSON."""
    card = ModelCard.model_validate_json(card_json)
    Path(ready).touch()
    try:
        result = download(card, Path(home), timeout=30).to_dict()
    except Exception as exc:
        result = {"error": repr(exc)}
    Path(out).write_text(json.dumps(result))


def test_two_processes_downloading_the_same_model(server: ServerState, tmp_path: Path) -> None:
    card = make_card([server.url("/w.pth", Route(mode="held"))])
    home = tmp_path / "home"
    context = multiprocessing.get_context("spawn")
    files = {key: (tmp_path / f"{key}.ready", tmp_path / f"{key}.json") for key in ("a", "b")}

    def start(key: str) -> multiprocessing.process.BaseProcess:
        ready, out = files[key]
        process = context.Process(target=_download_in_process, args=(card.model_dump_json(), str(home), ready, out))
        process.start()
        return process

    processes = [start("a")]
    try:
        assert server.body_started.wait(30)  # a is mid-transfer, holding the lock
        processes.append(start("b"))
        deadline = time.monotonic() + 30
        while not files["b"][0].exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert files["b"][0].exists()
        time.sleep(0.3)  # b goes from "ready" to waiting on the lock in far less
        assert not files["b"][1].exists()  # b has not finished while a still holds the transfer
        server.release.set()
        for process in processes:
            process.join(60)
            assert process.exitcode == 0
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()

    records = [json.loads(files[key][1].read_text()) for key in ("a", "b")]
    assert "error" not in records[0] and "error" not in records[1], records
    assert records[0] == records[1] == read_record(card, home).to_dict()
    assert records[0]["sha256"] == DIGEST
    assert server.requests == ["/w.pth"]
    assert cached_path(card, home).read_bytes() == PAYLOAD
    assert folder_names(card, home) == [".lock", "record.json", "w.pth"]
