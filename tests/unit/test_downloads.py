"""replicate_relay.downloads: allow-list, address and size checks against a real local server, with no other network."""

from __future__ import annotations

import base64
import contextlib
import datetime
import socket
import ssl
import threading
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from replicate_relay.downloads import (
    Download,
    Downloader,
    DownloadError,
    DownloadFailed,
    DownloadGone,
    DownloadPolicy,
    DownloadRefused,
    DownloadUnavailable,
)

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
CAP = 256 * 1024
CHUNK = 4 * 1024
DATA_CAP = 1024
STREAM_PIECE = 64 * 1024
STREAM_TOTAL = 64 * 1024 * 1024  # far beyond what socket buffers hold, so an early stop is visible at the server
PUBLIC = "8.8.8.8"  # a global address no test connects to: those tests use a client that records instead


class FileServer:
    """A plain-HTTP (or TLS) server on 127.0.0.1 that counts connections, requests and Host headers."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.requests: Counter[str] = Counter()
        self.hosts: list[str] = []
        self.server_names: list[str | None] = []
        self.connections = 0
        self.tls_failures = 0
        self.stream_written = 0
        self.stream_done = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()
        owner = self

        class Server(ThreadingHTTPServer):
            def process_request(self, request: Any, client_address: Any) -> None:
                with owner._lock:
                    owner.connections += 1
                super().process_request(request, client_address)

            def get_request(self) -> tuple[socket.socket, Any]:
                sock, address = super().get_request()
                if tls is None:
                    return sock, address
                return tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

            def finish_request(self, request: Any, client_address: Any) -> None:
                if isinstance(request, ssl.SSLSocket):
                    try:
                        request.do_handshake()
                    except (ssl.SSLError, OSError):
                        with owner._lock:
                            owner.tls_failures += 1
                        return
                super().finish_request(request, client_address)

        if tls is not None:
            tls.sni_callback = self._record_server_name
        self._server = Server(("127.0.0.1", 0), _handler(self))
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.01,), daemon=True)

    def _record_server_name(self, _sock: Any, server_name: str | None, _context: Any) -> None:
        self.server_names.append(server_name)

    def record(self, path: str, host: str | None) -> None:
        with self._lock:
            self.requests[path] += 1
            self.hosts.append(host or "")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def _handler(owner: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            path, _, query = self.path.partition("?")
            owner.record(path, self.headers.get("Host"))
            port = owner.port
            statuses = {"/gone": 404, "/gone410": 410, "/flaky": 503, "/busy": 429, "/forbidden": 403}
            redirects = {
                "/redirect-to-file": "/file",
                "/redirect-to-metadata": "http://169.254.169.254/latest",
                "/redirect-to-loopback-name": f"http://localhost:{port}/file",
                # Ends after 10 rounds, so that a client ignoring max_redirects fails fast instead of hanging.
                "/redirect-loop": "/redirect-loop" if owner.requests["/redirect-loop"] < 10 else "/file",
            }
            routes: dict[str, Callable[[], None]] = {
                "/file": lambda: self.body(PNG, "image/png"),
                "/chunked-big": lambda: self.chunked(STREAM_TOTAL, done=True),
                "/big": self.big,
                "/truncated": self.truncated,
                "/slow": self.slow,
                "/redirect": lambda: self.redirect(urllib.parse.parse_qs(query)["to"][0]),
            }
            prefixes: dict[str, Callable[[str], None]] = {
                "/named/": lambda _: self.body(b"named", "text/plain; charset=utf-8"),
                "/sized/": lambda size: self.body(b"s" * int(size), "application/octet-stream"),
                "/chunked/": lambda size: self.chunked(int(size)),
                "/redirect-chain/": lambda left: self.redirect(
                    f"/redirect-chain/{int(left) - 1}" if int(left) else "/file"
                ),
            }
            if path in routes:
                routes[path]()
            elif path in statuses:
                self.body(b"no", "text/plain", status=statuses[path])
            elif path in redirects:
                self.redirect(redirects[path])
            else:
                for prefix, route in prefixes.items():
                    if path.startswith(prefix):
                        route(path.removeprefix(prefix))
                        return
                self.body(b"no route", "text/plain", status=500)

        def big(self) -> None:
            self.head(200, {"Content-Type": "application/octet-stream", "Content-Length": str(CAP * 16)})
            self.write_quietly(b"b" * CAP * 16)

        def truncated(self) -> None:
            self.head(200, {"Content-Length": "1000"})
            self.write_quietly(b"only ten b")

        def slow(self) -> None:
            owner.release.wait(timeout=60)  # until the test ends: the client's read timeout fires first
            self.body(b"late", "text/plain")

        def head(self, status: int, headers: dict[str, str]) -> None:
            self.send_response(status)
            for name, value in headers.items():  # keep-alive unless the client asks to close
                self.send_header(name, value)
            self.end_headers()

        def body(self, data: bytes, content_type: str, *, status: int = 200) -> None:
            self.head(status, {"Content-Type": content_type, "Content-Length": str(len(data))})
            self.write_quietly(data)

        def redirect(self, location: str) -> None:
            self.head(302, {"Location": location, "Content-Length": "0"})

        def chunked(self, total: int, *, done: bool = False) -> None:
            self.head(200, {"Content-Type": "application/octet-stream", "Transfer-Encoding": "chunked"})
            written = 0
            try:
                while written < total:
                    piece = min(STREAM_PIECE, total - written)
                    self.wfile.write(b"%x\r\n%s\r\n" % (piece, b"c" * piece))
                    written += piece
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass  # the client hung up, which is what the size-limit tests expect
            finally:
                if done:
                    owner.stream_written = written
                    owner.stream_done.set()

        def write_quietly(self, data: bytes) -> None:
            with contextlib.suppress(OSError):  # the client refused the body and hung up
                self.wfile.write(data)

    return Handler


class FakeResolver:
    """Host name → addresses from a table, recording every lookup; unknown names fail as DNS would."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(self.table[host])


class RecordingTransport(httpx.BaseTransport):
    """Records what would have been sent and answers 200, so "no request was made" can be asserted."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(200, content=b"recorded", headers={"Content-Type": "text/plain"})


def policy_for(port: int = 1, **changes: Any) -> DownloadPolicy:
    settings: dict[str, Any] = {
        "allowed_hosts": ("replicate.delivery", "files.test", "sneaky.test"),
        "local_hosts": (f"files.test:{port}",),
        "max_bytes": CAP,
        "max_data_uri_bytes": DATA_CAP,
        "max_redirects": 3,
        "connect_timeout": 5.0,
        "read_timeout": 5.0,
        "chunk_bytes": CHUNK,
    }
    return DownloadPolicy(**{**settings, **changes})


def default_table() -> dict[str, list[str]]:
    return {"files.test": ["127.0.0.1"], "sneaky.test": ["127.0.0.1"], "replicate.delivery": [PUBLIC]}


@pytest.fixture
def server() -> Iterator[FileServer]:
    running = FileServer()
    running.start()
    yield running
    running.stop()


@pytest.fixture
def resolver() -> FakeResolver:
    return FakeResolver(default_table())


@pytest.fixture
def downloader(server: FileServer, resolver: FakeResolver) -> Iterator[Downloader]:
    opened = Downloader(policy_for(server.port), resolver=resolver)
    yield opened
    opened.close()


@pytest.fixture
def recorder() -> RecordingTransport:
    return RecordingTransport()


@pytest.fixture
def offline(recorder: RecordingTransport, resolver: FakeResolver) -> Iterator[Downloader]:
    """A downloader whose client only records: nothing leaves the process."""
    client = httpx.Client(transport=recorder)
    yield Downloader(policy_for(), resolver=resolver, client=client)
    client.close()


def base(server: FileServer) -> str:
    return f"http://files.test:{server.port}"


def fetch(downloader: Downloader, url: str) -> bytes:
    """The whole body: opens the URL (the checks) and reads it (the request)."""
    with downloader.open(url) as download:
        return download.read()


def refused(downloader: Downloader, url: str) -> DownloadRefused:
    with pytest.raises(DownloadRefused) as caught:
        fetch(downloader, url)
    return caught.value


def failed(downloader: Downloader, url: str) -> DownloadFailed:
    with pytest.raises(DownloadFailed) as caught:
        fetch(downloader, url)
    return caught.value


def read_all(download: Download) -> bytes:
    return b"".join(download.iter_chunks())


# --- refusals before any request -------------------------------------------------------------------------------

STATIC_REFUSALS = [
    ("https://evil.example/x", "host_not_allowed"),
    ("https://evilreplicate.delivery/x", "host_not_allowed"),
    ("https://replicate.delivery.evil.example/x", "host_not_allowed"),
    ("https://169.254.169.254/latest/meta-data", "host_not_allowed"),
    ("https://127.0.0.1/x", "host_not_allowed"),
    ("https://[::1]/x", "host_not_allowed"),
    ("http://replicate.delivery/x", "scheme_not_allowed"),
    ("http://files.test:2/x", "scheme_not_allowed"),  # files.test is local on port 1 only
    ("file:///etc/passwd", "scheme_not_allowed"),
    ("ftp://replicate.delivery/x", "scheme_not_allowed"),
    ("javascript:alert(1)", "scheme_not_allowed"),
    ("replicate.delivery/x", "scheme_not_allowed"),
    ("https://replicate.delivery@evil.example/x", "userinfo_not_allowed"),
    ("https://user:pass@replicate.delivery/x", "userinfo_not_allowed"),
    ("https://@replicate.delivery/x", "userinfo_not_allowed"),
    ("https://replicate.delivery\\@evil.example/x", "bad_url"),
    ("https://replicate.delivery /x", "bad_url"),
    ("https://replicate.delivery:99999/x", "bad_url"),
    ("https:///x", "bad_url"),
]


@pytest.mark.parametrize(("url", "reason"), STATIC_REFUSALS)
def test_disallowed_url_is_refused_before_resolution_or_request(
    offline: Downloader, recorder: RecordingTransport, resolver: FakeResolver, url: str, reason: str
) -> None:
    with pytest.raises(DownloadRefused) as checked:
        offline.check(url)
    assert refused(offline, url).reason == checked.value.reason == reason
    assert resolver.calls == []
    assert recorder.requests == []


@pytest.mark.parametrize(
    "addresses",
    [
        ["10.0.0.5"],
        [PUBLIC, "10.0.0.5"],
        ["127.0.0.1"],
        ["::ffff:127.0.0.1"],
        ["::ffff:10.0.0.5"],
        ["169.254.169.254"],
        ["::1"],
        ["fe80::1"],
        ["fc00::1"],
        ["100.64.0.1"],
        ["0.0.0.0"],  # noqa: S104 - an address to refuse; nothing binds to it
        ["224.0.0.1"],
        ["2002:7f00:1::"],  # 6to4 wrapping 127.0.0.1
        ["192.0.2.1"],
        ["not-an-address"],
    ],
)
def test_allowed_host_resolving_to_a_non_public_address_is_refused_without_a_request(
    offline: Downloader, recorder: RecordingTransport, resolver: FakeResolver, addresses: list[str]
) -> None:
    resolver.table["replicate.delivery"] = addresses
    error = refused(offline, "https://replicate.delivery/pbxt/out.png")
    assert error.reason == "address_not_allowed"
    with pytest.raises(DownloadRefused, match="resolves to"):
        offline.check("https://replicate.delivery/pbxt/out.png")
    assert recorder.requests == []


@pytest.mark.parametrize(
    "url",
    [
        "https://replicate.delivery/pbxt/out.png",
        "https://a.b.replicate.delivery/pbxt/out.png",
        "https://REPLICATE.Delivery./pbxt/out.png",
    ],
)
def test_check_accepts_an_allowed_host_without_sending_a_request(
    offline: Downloader, recorder: RecordingTransport, resolver: FakeResolver, url: str
) -> None:
    resolver.table["a.b.replicate.delivery"] = ["2606:4700::1111", "::ffff:8.8.4.4"]
    offline.check(url)
    assert resolver.calls
    assert recorder.requests == []


def test_request_goes_to_the_checked_address_with_the_real_name_as_host_and_tls_server_name(
    offline: Downloader, recorder: RecordingTransport
) -> None:
    with offline.open("https://replicate.delivery/pbxt/out.png?token=t0ken") as download:
        assert read_all(download) == b"recorded"
    [request] = recorder.requests
    assert (request.url.scheme, request.url.host, request.url.path) == ("https", PUBLIC, "/pbxt/out.png")
    assert request.headers["Host"] == "replicate.delivery"
    assert request.extensions["sni_hostname"] == "replicate.delivery"
    assert request.headers["Connection"] == "close"
    assert download.url == "https://replicate.delivery/pbxt/out.png"


def test_unresolvable_host_is_a_transient_failure(offline: Downloader, resolver: FakeResolver) -> None:
    resolver.table.pop("replicate.delivery")
    with pytest.raises(DownloadFailed) as caught:
        offline.check("https://replicate.delivery/x")
    assert caught.value.reason == "resolve_failed"


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example/x?sig=s3cret",
        "https://user:s3cret@replicate.delivery/x",
        "https://replicate.delivery\\@evil.example/x?s3cret",
    ],
)
def test_refusal_never_shows_query_or_credentials(offline: Downloader, url: str) -> None:
    error = refused(offline, url)
    assert "s3cret" not in f"{error} {error.message} {error.url}"


# --- downloads from the local server --------------------------------------------------------------------------


def test_file_is_fetched_from_the_resolved_address_with_the_original_host_header(
    downloader: Downloader, server: FileServer, resolver: FakeResolver
) -> None:
    with downloader.open(f"{base(server)}/file?token=t0ken") as download:
        body = read_all(download)
    assert body == PNG
    assert (download.content_type, download.content_length, download.file_name) == ("image/png", len(PNG), "file")
    assert download.url == f"{base(server)}/file"
    assert server.hosts == [f"files.test:{server.port}"]
    assert resolver.calls == ["files.test"]


def test_open_resolves_once_and_requests_nothing_until_the_body_is_read(
    downloader: Downloader, server: FileServer, resolver: FakeResolver
) -> None:
    with downloader.open(f"{base(server)}/file") as download:
        assert (download.file_name, server.connections, resolver.calls) == ("file", 0, ["files.test"])
        assert download.read() == PNG
    assert (server.connections, resolver.calls) == (1, ["files.test"])


def test_reads_are_filled_to_the_size_asked_for_across_network_pieces(
    downloader: Downloader, server: FileServer
) -> None:
    with downloader.open(f"{base(server)}/sized/{CHUNK * 3 + 5}") as download:
        sizes = [len(download.read(CHUNK + 1)) for _ in range(4)]
    assert sizes == [CHUNK + 1, CHUNK + 1, CHUNK + 1, 2]


def test_chunks_are_at_most_the_configured_size(downloader: Downloader, server: FileServer) -> None:
    with downloader.open(f"{base(server)}/sized/{CHUNK * 3 + 5}") as download:
        sizes = [len(chunk) for chunk in download.iter_chunks()]
    assert sizes == [CHUNK, CHUNK, CHUNK, 5]


def test_ip_literal_listed_as_local_host_is_fetched(server: FileServer) -> None:
    policy = policy_for(local_hosts=(f"127.0.0.1:{server.port}",))
    with contextlib.closing(Downloader(policy, resolver=FakeResolver({}))) as local:
        assert fetch(local, f"http://127.0.0.1:{server.port}/file") == PNG


def test_proxy_settings_in_the_environment_are_ignored(
    server: FileServer, resolver: FakeResolver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A proxy would connect by name and undo the address pinning; this one does not even listen.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    with contextlib.closing(Downloader(policy_for(server.port), resolver=resolver)) as direct:
        assert fetch(direct, f"{base(server)}/file") == PNG


def test_next_checked_address_is_tried_when_the_first_refuses_connections(
    downloader: Downloader, server: FileServer, resolver: FakeResolver
) -> None:
    resolver.table["files.test"] = ["127.0.0.2", "127.0.0.1"]  # nothing listens on 127.0.0.2
    with downloader.open(f"{base(server)}/file") as download:
        assert read_all(download) == PNG
    assert server.connections == 1


@pytest.mark.parametrize(
    ("path", "file_name"),
    [
        ("/named/out-0.png", "out-0.png"),
        ("/named/..%2F..%2Fetc%2Fpasswd", "_.._etc_passwd"),
        ("/named/.hidden", "hidden"),
        ("/named/%C3%BCber%20bild.png", "uber_bild.png"),
        ("/named/%E6%97%A5%E6%9C%AC.webp", "__.webp"),
        ("/named/", "output"),
        ("/named/" + "a" * 300 + ".png", "a" * 96 + ".png"),
        ("/named/" + "b" * 300, "b" * 100),
    ],
)
def test_file_name_is_the_sanitised_last_path_segment(
    downloader: Downloader, server: FileServer, path: str, file_name: str
) -> None:
    with downloader.open(base(server) + path) as download:
        assert download.file_name == file_name
        assert download.content_type == "text/plain"


def test_redirect_on_the_same_host_is_followed(downloader: Downloader, server: FileServer) -> None:
    with downloader.open(f"{base(server)}/redirect-to-file") as download:
        assert read_all(download) == PNG
    assert download.url == f"{base(server)}/file"
    assert download.file_name == "redirect-to-file"  # named after the URL the caller asked for
    assert server.requests == Counter({"/redirect-to-file": 1, "/file": 1})


def test_up_to_max_redirects_are_followed(downloader: Downloader, server: FileServer) -> None:
    with downloader.open(f"{base(server)}/redirect-chain/2") as download:  # 3 redirects: 2, 1, 0 → /file
        assert read_all(download) == PNG


@pytest.mark.parametrize("path", ["/redirect-loop", "/redirect-chain/3"])
def test_one_redirect_more_than_max_redirects_is_refused_before_it_is_followed(
    downloader: Downloader, server: FileServer, path: str
) -> None:
    assert refused(downloader, base(server) + path).reason == "too_many_redirects"
    assert server.requests.total() == 4  # the first request and 3 followed redirects
    assert "/file" not in server.requests


@pytest.mark.parametrize(
    ("path", "reason", "looked_up"),
    [
        ("/redirect-to-metadata", "scheme_not_allowed", []),
        ("/redirect?to=https://169.254.169.254/latest", "host_not_allowed", []),
        ("/redirect-to-loopback-name", "scheme_not_allowed", []),
        ("/redirect?to=https://localhost:{port}/file", "host_not_allowed", []),
        ("/redirect?to=https://sneaky.test:{port}/file", "address_not_allowed", ["sneaky.test"]),
        ("/redirect?to=https://files.test:{other}/file", "address_not_allowed", ["files.test"]),
        ("/redirect?to=https://evil.example/x", "host_not_allowed", []),
        ("/redirect?to=https://files.test%40evil.example/x", "userinfo_not_allowed", []),
        ("/redirect?to=file:///etc/passwd", "scheme_not_allowed", []),
        ("/redirect?to=data:text/plain,hi", "redirect_not_allowed", []),
    ],
)
def test_redirect_to_a_refused_target_is_not_followed(
    downloader: Downloader, server: FileServer, resolver: FakeResolver, path: str, reason: str, looked_up: list[str]
) -> None:
    error = refused(downloader, base(server) + path.format(port=server.port, other=server.port + 1))
    assert error.reason == reason
    assert error.message.startswith("redirect from")
    assert server.requests == Counter({path.partition("?")[0]: 1})
    assert server.connections == 1
    assert resolver.calls == ["files.test", *looked_up]


# --- sizes -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [f"/sized/{CAP}", f"/chunked/{CAP}"])
def test_file_of_exactly_max_bytes_is_accepted(downloader: Downloader, server: FileServer, path: str) -> None:
    with downloader.open(base(server) + path) as download:
        assert len(read_all(download)) == CAP


@pytest.mark.parametrize("path", [f"/sized/{CAP + 1}", "/big"])
def test_content_length_over_max_bytes_is_refused_before_the_body_is_read(
    downloader: Downloader, server: FileServer, path: str
) -> None:
    assert refused(downloader, base(server) + path).reason == "too_large"


def test_stream_without_content_length_one_byte_over_max_bytes_is_refused(
    downloader: Downloader, server: FileServer
) -> None:
    with downloader.open(f"{base(server)}/chunked/{CAP + 1}") as download, pytest.raises(DownloadRefused) as caught:
        read_all(download)
    assert caught.value.reason == "too_large"


def drain(download: Download, sizes: list[int]) -> None:
    for chunk in download.iter_chunks():
        sizes.append(len(chunk))


def test_endless_stream_stops_soon_after_max_bytes(downloader: Downloader, server: FileServer) -> None:
    sizes: list[int] = []
    with downloader.open(f"{base(server)}/chunked-big") as download:
        assert download.content_length is None
        with pytest.raises(DownloadRefused) as caught:
            drain(download, sizes)
    assert caught.value.reason == "too_large"
    assert 0 < sum(sizes) <= CAP
    assert server.stream_done.wait(timeout=30)
    assert server.stream_written < STREAM_TOTAL // 2


# --- data: URIs --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "body", "content_type", "file_name"),
    [
        (
            "data:image/png;base64," + base64.b64encode(PNG[:DATA_CAP]).decode(),
            PNG[:DATA_CAP],
            "image/png",
            "output.png",
        ),
        ("data:text/plain;charset=utf-8,hello%20world%21", b"hello world!", "text/plain", "output.txt"),
        ("data:,bare", b"bare", "text/plain", "output.txt"),
        ("DATA:audio/wav;BASE64,UklGRg==", b"RIFF", "audio/wav", "output.wav"),
        ("data:application/x-unknown-thing,x", b"x", "application/x-unknown-thing", "output"),
    ],
)
def test_data_uri_is_decoded_without_a_request(
    offline: Downloader, recorder: RecordingTransport, uri: str, body: bytes, content_type: str, file_name: str
) -> None:
    offline.check(uri)
    with offline.open(uri) as download:
        assert read_all(download) == body
    assert (download.content_type, download.content_length, download.file_name) == (content_type, len(body), file_name)
    assert download.url == "data:" + uri[5:].partition(",")[0]
    assert recorder.requests == []


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("data:image/png;base64," + base64.b64encode(b"p" * (DATA_CAP + 1)).decode(), "too_large"),
        ("data:text/plain," + "%41" * (DATA_CAP + 1), "too_large"),
        ("data:text/plain," + "x" * (3 * DATA_CAP + 1), "too_large"),
        ("data:image/png;base64,@@@@", "bad_data_uri"),
        ("data:image/png;base64,abc", "bad_data_uri"),
        ("data:image/png;base64", "bad_data_uri"),
        ("data:image png,x", "bad_data_uri"),
    ],
)
def test_bad_or_oversized_data_uri_is_refused(offline: Downloader, uri: str, reason: str) -> None:
    with pytest.raises(DownloadRefused) as checked:
        offline.check(uri)
    assert refused(offline, uri).reason == checked.value.reason == reason


# --- status codes and network failures ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "error", "reason"),
    [
        ("/gone", DownloadGone, "output_expired"),
        ("/gone410", DownloadGone, "output_expired"),
        ("/flaky", DownloadFailed, "http_503"),
        ("/busy", DownloadFailed, "http_429"),
        ("/forbidden", DownloadUnavailable, "http_403"),
    ],
)
def test_status_maps_to_its_error(
    downloader: Downloader, server: FileServer, path: str, error: type[DownloadError], reason: str
) -> None:
    with pytest.raises(DownloadError) as caught:
        fetch(downloader, f"{base(server)}{path}?token=s3cret")
    assert type(caught.value) is error
    assert caught.value.reason == reason
    assert caught.value.url == f"{base(server)}{path}"
    assert "s3cret" not in str(caught.value)


def test_connection_refused_is_a_transient_failure(resolver: FakeResolver) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # bound but not listening: connections to it are refused
        port = unused.getsockname()[1]
        with contextlib.closing(Downloader(policy_for(port), resolver=resolver)) as closed:
            assert failed(closed, f"http://files.test:{port}/file").reason == "connect_failed"


def test_read_timeout_is_a_transient_failure(server: FileServer, resolver: FakeResolver) -> None:
    with contextlib.closing(Downloader(policy_for(server.port, read_timeout=0.2), resolver=resolver)) as impatient:
        assert failed(impatient, f"{base(server)}/slow").reason == "timeout"


def test_body_cut_short_is_a_transient_failure(downloader: Downloader, server: FileServer) -> None:
    with downloader.open(f"{base(server)}/truncated") as download, pytest.raises(DownloadFailed) as caught:
        read_all(download)
    assert caught.value.reason == "network_error"


# --- TLS: the certificate is checked against the real name while connecting to the checked address -------------


def tls_contexts(tmp_path: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for `name` only (no IP), and a client context trusting its CA."""
    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay test CA")])
    ca = (
        certificate("relay test CA", ca_key, ca_name)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        certificate(name, leaf_key, ca_name)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "leaf.pem", tmp_path / "leaf.key"
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert_file, key_file)
    client_context = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return server_context, client_context


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[FileServer, ssl.SSLContext]]:
    server_context, client_context = tls_contexts(tmp_path, "files.test")
    running = FileServer(tls=server_context)
    running.start()
    yield running, client_context
    running.stop()


def test_tls_uses_the_real_name_for_sni_and_certificate_check(
    tls_server: tuple[FileServer, ssl.SSLContext],
) -> None:
    server, client_context = tls_server
    resolver = FakeResolver({"files.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    policy = policy_for(
        server.port,
        allowed_hosts=("files.test", "other.test"),
        local_hosts=(f"files.test:{server.port}", f"other.test:{server.port}"),
    )
    with httpx.Client(verify=client_context, trust_env=False) as client:
        tls = Downloader(policy, resolver=resolver, client=client)
        with tls.open(f"https://files.test:{server.port}/file") as download:
            assert read_all(download) == PNG
        # Same address, a name the certificate does not cover: the handshake must fail, even right after a
        # successful download from that address (no connection is reused across names).
        assert failed(tls, f"https://other.test:{server.port}/file").reason == "connect_failed"
    assert server.server_names == ["files.test", "other.test"]
    assert server.hosts == [f"files.test:{server.port}"]
    assert server.requests == Counter({"/file": 1})
