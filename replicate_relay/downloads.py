"""Fetching output files from allow-listed hosts only: checked addresses, pinned connections, size and time limits."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import mimetypes
import re
import socket
import unicodedata
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

# Defined in the one exception tree, replicate_relay/errors.py; still importable from here.
from replicate_relay.errors import DownloadError as DownloadError  # noqa: PLC0414 - re-export
from replicate_relay.errors import DownloadFailed as DownloadFailed  # noqa: PLC0414 - re-export
from replicate_relay.errors import DownloadGone as DownloadGone  # noqa: PLC0414 - re-export
from replicate_relay.errors import DownloadRefused as DownloadRefused  # noqa: PLC0414 - re-export
from replicate_relay.errors import DownloadUnavailable as DownloadUnavailable  # noqa: PLC0414 - re-export
from replicate_relay.logs import fields

Resolver = Callable[[str, int], list[str]]

_log = logging.getLogger(__name__)

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_UNSAFE_URL_CHARS = re.compile(r"[\x00-\x20\x7f\\]")
_FILE_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_MEDIA_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+")
_MAX_FILE_NAME = 100
_DEFAULT_CONTENT_TYPE = "application/octet-stream"
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# IETF protocol assignments, not globally reachable; Python before 3.11.10 / 3.12.4 calls most of it global.
_IETF_PROTOCOL_ASSIGNMENTS = ipaddress.ip_network("192.0.0.0/24")
# Common model outputs first; then the interpreter's built-in table only, so the extension does not depend on
# the machine's /etc/mime.types.
_EXTENSIONS = {"image/jpeg": ".jpg", "audio/wav": ".wav", "audio/x-wav": ".wav", "audio/mpeg": ".mp3"}
_BUILTIN_TYPES = mimetypes.MimeTypes()
_USER_AGENT = "replicate-relay"


@dataclass(frozen=True)
class DownloadPolicy:
    """What may be downloaded: hosts, sizes, redirects and timeouts."""

    allowed_hosts: tuple[str, ...] = ("replicate.delivery",)  # each allows the host and all its subdomains
    # "host" or "host:port" entries for local use (dev stack, tests): plain http and private addresses allowed.
    local_hosts: tuple[str, ...] = ()
    max_bytes: int = 1024**3 * 4
    max_data_uri_bytes: int = 8 * 1024 * 1024
    max_redirects: int = 3
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    chunk_bytes: int = 1024 * 1024

    def __post_init__(self) -> None:
        if min(self.max_bytes, self.max_data_uri_bytes, self.chunk_bytes) < 1 or self.max_redirects < 0:
            raise ValueError("download sizes must be positive and max_redirects not negative")
        if not (self.connect_timeout > 0 and self.read_timeout > 0):
            raise ValueError("download timeouts must be positive")


@dataclass(frozen=True)
class _Body:
    """A fetched body: its metadata from the response headers, its pieces as they arrive."""

    url: str  # where the body comes from, after redirects, without query string
    content_type: str
    content_length: int | None
    pieces: Iterator[bytes]


class Download:
    """One checked output file, from `Downloader.open`: its name is known without any request; the
    request is sent on first use of its body or headers (`content_type`, `content_length`, `read`),
    inside the `open` block.

    Reading raises DownloadRefused("too_large") past max_bytes and DownloadFailed on network errors.
    """

    def __init__(self, *, url: str, file_name: str, fetch: Callable[[], _Body], chunk_bytes: int) -> None:
        self.file_name = file_name
        self._url = url
        self._fetch = fetch
        self._body: _Body | None = None
        self._chunk_bytes = chunk_bytes
        # Pieces received but not yet read; the last may be a view of what a read left over.
        self._held: list[bytes | memoryview] = []
        self._held_bytes = 0

    @property
    def url(self) -> str:
        """The URL without query string: after redirects once fetched."""
        return self._body.url if self._body is not None else self._url

    @property
    def content_type(self) -> str:
        return self._fetched().content_type

    @property
    def content_length(self) -> int | None:
        return self._fetched().content_length

    def read(self, size: int = -1) -> bytes:
        """The next `size` bytes (all the rest if negative); fewer only at the end of the body.

        Pieces are joined once per read, so each byte is copied once on its way through.
        """
        pieces = self._fetched().pieces
        held = self._held
        while size < 0 or self._held_bytes < size:
            piece = next(pieces, None)
            if piece is None:
                break
            held.append(piece)
            self._held_bytes += len(piece)
        if size < 0 or self._held_bytes <= size:
            data = b"".join(held)
            held.clear()
            self._held_bytes = 0
            return data
        last = memoryview(held[-1])
        keep = self._held_bytes - size  # from the end of the last piece
        data = b"".join([*held[:-1], last[: len(last) - keep]])
        self._held, self._held_bytes = [last[len(last) - keep :]], keep
        return data

    def iter_chunks(self) -> Iterator[bytes]:
        """The body in chunks of the policy's chunk_bytes (the last may be shorter)."""
        while chunk := self.read(self._chunk_bytes):
            yield chunk

    def _fetched(self) -> _Body:
        if self._body is None:
            self._body = self._fetch()
        return self._body


@dataclass(frozen=True)
class _Target:
    """A URL that passed every check, with the addresses it may be fetched from."""

    url: httpx.URL  # with the real host name: redirects are resolved against it
    host: str  # lower-case ASCII, no trailing dot
    addresses: tuple[str, ...]
    ip_literal: bool

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.url.port is None else f"{host}:{self.url.port}"


class Downloader:
    """Opens output URLs under a `DownloadPolicy`; one per process, shared by threads."""

    def __init__(
        self, policy: DownloadPolicy, *, resolver: Resolver | None = None, client: httpx.Client | None = None
    ) -> None:
        self._policy = policy
        self._resolver = resolver or _system_resolver
        self._allowed = tuple(host.strip().lower().rstrip(".") for host in policy.allowed_hosts if host.strip())
        self._local = frozenset(_parse_local_host(entry) for entry in policy.local_hosts if entry.strip())
        self._timeout = httpx.Timeout(
            connect=policy.connect_timeout,
            read=policy.read_timeout,
            write=policy.read_timeout,
            pool=policy.connect_timeout,
        )
        self._owns_client = client is None
        # trust_env=False: a proxy taken from the environment would connect by name and undo the address pinning.
        self._client = client or httpx.Client(timeout=self._timeout, follow_redirects=False, trust_env=False)

    def close(self) -> None:
        """Close the HTTP client if this downloader created it."""
        if self._owns_client:
            self._client.close()

    def check(self, url: str) -> None:
        """Raise DownloadRefused if `url` may not be downloaded; resolves the host name but sends no request."""
        with self.open(url):
            pass

    @contextmanager
    def open(self, url: str, *, max_bytes: int | None = None) -> Iterator[Download]:
        """Check `url` (resolving its host, or decoding a data: URI, once) and yield its Download.

        The request goes to a checked address on first use of the body; each redirect is checked
        afresh. Raises DownloadRefused here, before anything is fetched. `max_bytes` replaces the
        policy's size cap for this file (a training's weights have their own).
        """
        limit = self._policy.max_bytes if max_bytes is None else max_bytes
        if _is_data_uri(url):
            media_type, data = self._decode_data_uri(url)
            body = _Body(safe_url(url), media_type, len(data), iter((data,) if data else ()))
            file_name = "output" + _extension(media_type)
            yield Download(url=body.url, file_name=file_name, fetch=lambda: body, chunk_bytes=self._policy.chunk_bytes)
            return
        target = self._check(url)
        responses: list[httpx.Response] = []
        try:
            yield Download(
                url=safe_url(url),
                file_name=_file_name(target.url.raw_path),
                fetch=lambda: self._fetch(target, responses, limit),
                chunk_bytes=self._policy.chunk_bytes,
            )
        finally:
            for response in responses:
                response.close()

    def _fetch(self, target: _Target, responses: list[httpx.Response], limit: int) -> _Body:
        """Send the request, following checked redirects; `responses` gets each one, to be closed."""
        response = self._request(target)
        responses.append(response)
        redirects = 0
        while response.status_code in _REDIRECT_STATUSES:
            redirects += 1
            target = self._redirect_target(target, response, redirects)
            response.close()
            response = self._request(target)
            responses.append(response)
        safe = safe_url(str(target.url))
        _raise_for_status(response.status_code, safe)
        length = _content_length(response)
        if length is not None and length > limit:
            raise DownloadRefused("too_large", f"{safe} is {length} bytes, over the {limit} byte limit", url=safe)
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        return _Body(safe, content_type or _DEFAULT_CONTENT_TYPE, length, self._stream(response, safe, limit))

    def _check(self, url: str) -> _Target:
        safe = safe_url(url)
        if _UNSAFE_URL_CHARS.search(url):
            raise DownloadRefused("bad_url", f"{safe} has whitespace, a control character or a backslash", url=safe)
        try:
            split = urllib.parse.urlsplit(url)
            has_at = "@" in split.netloc
            _ = split.port  # raises for a port that is not a number from 0 to 65535
            parsed = httpx.URL(url)
            host = parsed.raw_host.decode("ascii").lower().rstrip(".")
        except (ValueError, httpx.InvalidURL):
            raise DownloadRefused("bad_url", f"{safe} is not a valid URL", url=safe) from None
        if has_at or parsed.userinfo:
            raise DownloadRefused("userinfo_not_allowed", f"{safe} carries a user name or password", url=safe)
        if parsed.scheme not in _DEFAULT_PORTS:
            raise DownloadRefused("scheme_not_allowed", f"{safe}: only https URLs are downloaded", url=safe)
        if not host:
            raise DownloadRefused("bad_url", f"{safe} has no host", url=safe)
        port = parsed.port or _DEFAULT_PORTS[parsed.scheme]
        local = (host, port) in self._local or (host, None) in self._local
        if parsed.scheme == "http" and not local:
            raise DownloadRefused("scheme_not_allowed", f"{safe}: plain http is allowed for local hosts only", url=safe)
        ip_literal = _ip(host) is not None
        if not local and (ip_literal or not any(host == ok or host.endswith("." + ok) for ok in self._allowed)):
            raise DownloadRefused("host_not_allowed", f"{safe}: host {host} is not on the allow-list", url=safe)
        addresses = [host] if ip_literal else self._resolve(host, port, safe)
        checked: list[str] = []
        for text in addresses:
            address = _ip(text)
            if address is None or not (local or _is_public(address)):
                raise DownloadRefused("address_not_allowed", f"{safe}: {host} resolves to {text}", url=safe)
            checked.append(str(address))
        return _Target(url=parsed, host=host, addresses=tuple(checked), ip_literal=ip_literal)

    def _resolve(self, host: str, port: int, safe: str) -> list[str]:
        try:
            addresses = self._resolver(host, port)
        except UnicodeError:
            raise DownloadRefused("bad_url", f"{safe}: {host} is not a valid host name", url=safe) from None
        except OSError as exc:
            raise DownloadFailed("resolve_failed", f"{safe}: cannot resolve {host}: {exc}", url=safe) from None
        if not addresses:
            raise DownloadFailed("resolve_failed", f"{safe}: {host} has no addresses", url=safe)
        return addresses

    def _redirect_target(self, current: _Target, response: httpx.Response, redirects: int) -> _Target:
        origin = safe_url(str(current.url))
        if redirects > self._policy.max_redirects:
            raise DownloadRefused(
                "too_many_redirects", f"{origin}: more than {self._policy.max_redirects} redirects", url=origin
            )
        location = response.headers.get("location")
        if not location:
            raise DownloadRefused("redirect_not_allowed", f"{origin}: redirect without a Location", url=origin)
        if _is_data_uri(location.strip()):
            raise DownloadRefused("redirect_not_allowed", f"{origin}: redirect to a data: URI", url=origin)
        try:
            next_url = str(current.url.join(location))
        except httpx.InvalidURL:
            raise DownloadRefused("bad_url", f"{origin}: redirect to an invalid URL", url=origin) from None
        try:
            target = self._check(next_url)
        except DownloadRefused as exc:
            raise DownloadRefused(exc.reason, f"redirect from {origin} refused: {exc.message}", url=exc.url) from None
        _log.info("following redirect", extra=fields(source=origin, target=safe_url(next_url)))
        return target

    def _request(self, target: _Target) -> httpx.Response:
        # Connect to the address that was checked, never to the name: resolving again at connect time would let a
        # DNS answer with a short TTL swap in a private address after the check (DNS rebinding). The URL carries
        # the IP; the Host header carries the real name for the server, and the sni_hostname extension makes
        # httpcore send the real name as TLS SNI and verify the certificate against it, not against the IP.
        headers = {
            "Host": target.host_header,
            "User-Agent": _USER_AGENT,
            "Accept-Encoding": "identity",  # the size limit then counts the bytes that arrive, not a decompression
            # One connection per download: a pooled connection is keyed by IP, so without this another host name
            # on the same IP could reuse a TLS session whose certificate was verified for a different name.
            "Connection": "close",
        }
        extensions: dict[str, object] = {"timeout": self._timeout.as_dict()}
        if not target.ip_literal:
            extensions["sni_hostname"] = target.host
        safe = safe_url(str(target.url))
        for index, address in enumerate(target.addresses):
            request = httpx.Request("GET", target.url.copy_with(host=address), headers=headers, extensions=extensions)
            try:
                return self._client.send(request, stream=True, follow_redirects=False)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if index == len(target.addresses) - 1:
                    raise DownloadFailed("connect_failed", f"{safe}: {type(exc).__name__}: {exc}", url=safe) from None
                _log.warning("address unreachable, trying the next", extra=fields(url=safe, address=address))
            except httpx.TimeoutException as exc:
                raise DownloadFailed("timeout", f"{safe}: {type(exc).__name__}", url=safe) from None
            except httpx.TransportError as exc:
                raise DownloadFailed("network_error", f"{safe}: {type(exc).__name__}: {exc}", url=safe) from None
            except httpx.InvalidURL:
                # httpx builds `next_request` from a Location even with follow_redirects=False, and a Location it
                # cannot rebase (data:, no host) raises here; our own redirect handling never sees that response.
                message = f"redirect from {safe} refused: unusable Location"
                raise DownloadRefused("redirect_not_allowed", message, url=safe) from None
        raise AssertionError("a checked target has at least one address")  # pragma: no cover

    def _stream(self, response: httpx.Response, safe: str, limit: int) -> Iterator[bytes]:
        # Counted per network read, so an oversized body is stopped as soon as it shows; the pieces
        # go on as they arrive, and Download.read joins them once.
        received = 0
        try:
            for piece in response.iter_bytes():
                received += len(piece)
                if received > limit:
                    raise DownloadRefused("too_large", f"{safe}: more than {limit} bytes", url=safe)
                yield piece
        except httpx.TimeoutException as exc:
            raise DownloadFailed("timeout", f"{safe}: {type(exc).__name__} while reading", url=safe) from None
        except httpx.TransportError as exc:
            raise DownloadFailed("network_error", f"{safe}: {type(exc).__name__}: {exc}", url=safe) from None
        except httpx.DecodingError:
            raise DownloadUnavailable("bad_content_encoding", f"{safe}: undecodable body", url=safe) from None

    def _decode_data_uri(self, uri: str) -> tuple[str, bytes]:
        safe = safe_url(uri)
        limit = self._policy.max_data_uri_bytes
        header, comma, payload = uri[len("data:") :].partition(",")
        if not comma:
            raise DownloadRefused("bad_data_uri", f"{safe}: no comma before the data", url=safe)
        if len(payload) > 3 * limit:  # no encoding packs more than one byte into three characters
            raise DownloadRefused("too_large", f"{safe}: over the {limit} byte limit", url=safe)
        params = [param.strip() for param in header.split(";")]
        is_base64 = len(params) > 1 and params[-1].lower() == "base64"
        media_type = params[0].lower() if params[0] and "=" not in params[0] else "text/plain"
        if not _MEDIA_TYPE.fullmatch(media_type):
            raise DownloadRefused("bad_data_uri", f"{safe}: malformed media type", url=safe)
        data = urllib.parse.unquote_to_bytes(payload)
        if is_base64:
            try:
                data = base64.b64decode(re.sub(rb"\s+", b"", data), validate=True)
            except binascii.Error:
                raise DownloadRefused("bad_data_uri", f"{safe}: malformed base64", url=safe) from None
        if len(data) > limit:
            raise DownloadRefused("too_large", f"{safe}: {len(data)} bytes, over the {limit} byte limit", url=safe)
        return media_type, data


def _system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _parse_local_host(entry: str) -> tuple[str, int | None]:
    entry = entry.strip().lower()
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest.removeprefix(":")
    elif entry.count(":") == 1:
        host, _, port = entry.partition(":")
    else:
        host, port = entry, ""
    if port and not port.isdigit():
        raise ValueError(f"local host {entry!r}: the port must be a number")
    return host.rstrip("."), int(port) if port else None


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # the connection goes to the IPv4 address
            return _is_public(address.ipv4_mapped)
        if address.sixtofour is not None and not _is_public(address.sixtofour):
            return False
        if address in _NAT64 and not _is_public(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)):
            return False
        if address.is_site_local:  # fec0::/10: deprecated, not global, and not in is_private
            return False
    elif address in _IETF_PROTOCOL_ASSIGNMENTS:
        return False
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def _raise_for_status(status: int, safe: str) -> None:
    if 200 <= status < 300:
        return
    message = f"{safe} answered HTTP {status}"
    if status in (404, 410):
        raise DownloadGone("output_expired", message, url=safe)
    if status == 429 or status >= 500:
        raise DownloadFailed(f"http_{status}", message, url=safe)
    raise DownloadUnavailable(f"http_{status}", message, url=safe)


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length", "")
    return int(value) if value.isdigit() else None


def _is_data_uri(url: str) -> bool:
    return url[:5].lower() == "data:"


def safe_url(url: str) -> str:
    """scheme://host[:port]/path of `url`: no user information, query or fragment, safe to log."""
    if _is_data_uri(url):
        return "data:" + _UNSAFE_URL_CHARS.sub("", url[5:].partition(",")[0])[:100]
    try:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return "<invalid URL>"
    host = f"[{host}]" if ":" in host else host
    netloc = host if port is None else f"{host}:{port}"
    path = urllib.parse.quote(parts.path[:200], safe="/%:@!$&'()*+,;=-._~")
    return f"{parts.scheme.lower()}://{netloc}{path}" if netloc else f"{parts.scheme.lower()}:{path}"


def _file_name(raw_path: bytes) -> str:
    """The last path segment made safe as an object name: [A-Za-z0-9._-], no leading dot, at most 100 characters."""
    segment = raw_path.split(b"?")[0].rsplit(b"/", 1)[-1]
    text = urllib.parse.unquote(segment.decode("ascii", "replace"), errors="replace")
    folded = "".join(char for char in unicodedata.normalize("NFKD", text) if not unicodedata.combining(char))
    name = _FILE_NAME_UNSAFE.sub("_", folded).lstrip(".")
    if len(name) > _MAX_FILE_NAME:
        stem, dot, extension = name.rpartition(".")
        if dot and stem and len(extension) <= 16:
            name = stem[: _MAX_FILE_NAME - len(extension) - 1] + "." + extension
        else:
            name = name[:_MAX_FILE_NAME]
    return name or "output"


def _extension(media_type: str) -> str:
    extension = _EXTENSIONS.get(media_type) or _BUILTIN_TYPES.guess_extension(media_type) or ""
    return extension if re.fullmatch(r"\.[A-Za-z0-9]{1,10}", extension) else ""
