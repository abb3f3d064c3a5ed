"""Archiver benchmark: relay's Archiver against a plain streamed download-then-upload, in one run.

A file served on loopback (a deterministic pattern, made 1 MiB at a time) is copied into
fake-gcs-server (memory backend) by each of METHODS, each in a fresh child process so its CPU and
memory are its own; each stored object is verified (size, CRC32C) and deleted. Writes
bench/results/archive.json and the archive section of docs/BENCHMARKS.md.

    .venv/bin/python bench/archive.py [--size-mib 1024] [--quick] [--runs 1]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import re
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run as a script: sys.path[0] is bench/, the packages are one level up

# Only light modules at import time: a measuring child imports what its method needs and nothing else.
import common  # noqa: E402
from common import LOG_DIR, RESULTS_DIR, BenchError, Processes  # noqa: E402

HOST = "127.0.0.1"
PROJECT = "local-project"
BUCKET = "relay-bench-archive"
PREDICTION_ID = "bench"
FILE_PATH = "/file.bin"
CONTENT_TYPE = "application/octet-stream"
MIB = 1024 * 1024
UPLOAD_CHUNK_BYTES = 8 * MIB  # the Archiver's default chunk; the direct uploads use the same
EMULATOR_BOUND_SHARE = 0.5  # emulator CPU / wall time from which throughput mostly measures the emulator

# Targets for the archiver, relative to the best plain streamed download-then-upload in the same run.
TARGET_THROUGHPUT_RATIO = 0.80
TARGET_CPU_RATIO = 0.80  # Relay's client CPU per MiB against the best direct upload's
TARGET_GROWTH_MIB = 64.0

METHODS = {
    "upload-only": "upload only, from memory (emulator ceiling)",
    "direct-httpx": "direct: httpx stream → resumable upload",
    "direct-urllib": "direct: urllib stream → resumable upload",
    "archiver": "relay Archiver.archive_file",
}
DIRECT = ("direct-httpx", "direct-urllib")


def pattern_pieces(size: int) -> Iterator[bytes]:
    """`size` deterministic bytes in pieces of at most 1 MiB, each made when asked for; each piece starts
    with its index, so a lost, doubled or reordered piece changes the CRC32C."""
    block = hashlib.shake_256(b"replicate-relay archive benchmark").digest(MIB + 4096)
    for index, start in enumerate(range(0, size, MIB)):
        length = min(MIB, size - start)
        offset = (index * 509) % 4096
        yield (index.to_bytes(8, "big") + block[offset + 8 : offset + max(length, 8)])[:length]


def pattern_crc32c(size: int) -> str:
    import google_crc32c  # noqa: PLC0415 - parent only

    # google-crc32c ships no type annotations, hence the ignores.
    checksum = google_crc32c.Checksum()  # type: ignore[no-untyped-call]
    for piece in pattern_pieces(size):
        checksum.update(piece)  # type: ignore[no-untyped-call]
    return base64.b64encode(checksum.digest()).decode("ascii")  # type: ignore[no-untyped-call]


def serve_file(size: int) -> ThreadingHTTPServer:
    """A file server on a free port, on a thread of its own: GET /file.bin streams the pattern."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != FILE_PATH:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                for piece in pattern_pieces(size):  # wfile is unbuffered: each piece goes straight out
                    self.wfile.write(piece)

        def log_message(self, *_: Any) -> None:
            pass  # one line per request on stderr says nothing here

    server = ThreadingHTTPServer((HOST, 0), Handler)
    threading.Thread(target=server.serve_forever, name="file-server", daemon=True).start()
    return server


class Reader:
    """The least a resumable upload needs: read(n), and the tell() it asks for, from `read`."""

    def __init__(self, read: Callable[[int | None], bytes]) -> None:
        self._read, self._position = read, 0

    def read(self, size: int = -1) -> bytes:
        data = self._read(None if size < 0 else size)
        self._position += len(data)
        return data

    def tell(self) -> int:
        return self._position


def piece_reader(pieces: Iterator[bytes]) -> Reader:
    """A Reader of a stream of pieces, each read(n) filled to n."""
    held = b""

    def read(size: int | None) -> bytes:
        nonlocal held
        parts, count = [held], len(held)
        while size is None or count < size:
            piece = next(pieces, None)
            if piece is None:
                break
            parts.append(piece)
            count += len(piece)
        data = b"".join(parts)
        data, held = (data[:size], data[size:]) if size is not None and size < len(data) else (data, b"")
        return data

    return Reader(read)


def prepare(method: str, *, url: str, size: int, object_name: str) -> Callable[[], dict[str, Any]]:
    """Imports, clients and objects for one copy with `method`: everything but the copy itself."""
    import google.cloud.storage as storage  # noqa: PLC0415 - each child imports only what it uses

    bucket = storage.Client(project=PROJECT).bucket(BUCKET)

    def upload(stream: Any) -> dict[str, Any]:
        blob = bucket.blob(object_name, chunk_size=UPLOAD_CHUNK_BYTES)
        blob.upload_from_file(stream, size=size, content_type=CONTENT_TYPE, checksum=None, retry=None)
        return {}

    if method == "archiver":
        from replicate_relay.archive import Archiver  # noqa: PLC0415
        from replicate_relay.downloads import Downloader, DownloadPolicy  # noqa: PLC0415
        from replicate_relay.outputs import OutputFile  # noqa: PLC0415

        archiver = Archiver(bucket, Downloader(DownloadPolicy(local_hosts=(url.split("/")[2],), max_bytes=size + 1)))
        return lambda: {"archived": archiver.archive_file(PREDICTION_ID, OutputFile(index=0, url=url)).to_document()}
    if method == "direct-httpx":
        import httpx  # noqa: PLC0415

        http = httpx.Client(timeout=60.0, trust_env=False)

        def copy_httpx() -> dict[str, Any]:
            with http.stream("GET", url, headers={"Accept-Encoding": "identity"}) as response:
                response.raise_for_status()
                return upload(piece_reader(response.iter_bytes()))

        return copy_httpx
    if method == "direct-urllib":
        import urllib.request  # noqa: PLC0415

        def copy_urllib() -> dict[str, Any]:
            with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 - loopback URL built here
                return upload(Reader(response.read))

        return copy_urllib
    return lambda: upload(piece_reader(pattern_pieces(size)))


def measure(method: str, *, url: str, size: int, object_name: str) -> None:
    """The measuring child: one copy with `method`; prints one JSON line on stdout."""

    def status_kib(field: str) -> int:
        found = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
        return int(found.group(1)) if found else 0

    copy = prepare(method, url=url, size=size, object_name=object_name)
    baseline = status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak RSS (VmHWM) to the current RSS
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    extra = copy()
    wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    print(json.dumps({"wall_s": wall, "cpu_s": cpu, "baseline_kib": baseline, "peak_kib": status_kib("VmHWM")} | extra))


@dataclass
class Context:
    emulator_pgid: int | None
    bucket: Any  # google.cloud.storage.Bucket, in the parent: verification and clean-up only
    env: dict[str, str]
    url: str
    size: int
    expected_crc32c: str
    timeout: float


def object_for(method: str) -> str:
    if method == "archiver":
        from replicate_relay.archive import object_name  # noqa: PLC0415

        return object_name(PREDICTION_ID, 0, FILE_PATH.rsplit("/", 1)[1])
    return f"bench/{method}.bin"


def run_method(context: Context, method: str, run: int) -> dict[str, Any]:
    """One copy with `method` in a fresh child, verified; its figures."""
    name = object_for(method)
    if context.bucket.get_blob(name) is not None:  # never expected; the archiver would skip its upload
        context.bucket.delete_blob(name)
    argv = [str(Path(__file__).resolve()), "_child", method, context.url, str(context.size), name]
    emulator_before = common.group_cpu_seconds(context.emulator_pgid)
    log = LOG_DIR / f"archive-{method}.log"
    child = common.child_result(method, argv, env=context.env, timeout=context.timeout, log=log)
    emulator_cpu = common.group_cpu_seconds(context.emulator_pgid) - emulator_before
    try:
        verify(context, method, name, child)
    finally:
        context.bucket.delete_blob(name)  # the memory backend keeps every object in RAM
    wall, cpu, size = child["wall_s"], child["cpu_s"], context.size
    return {
        "method": method,
        "run": run,
        "size": size,
        "wall_s": round(wall, 3),
        "mib_per_s": round(size / MIB / wall, 1),
        "growth_mib": round((child["peak_kib"] - child["baseline_kib"]) / 1024, 1),
        "cpu_s": round(cpu, 2),
        "emulator_cpu_s": round(emulator_cpu, 2),
    }


def verify(context: Context, method: str, name: str, child: dict[str, Any]) -> None:
    """The stored object is the whole file, and the archiver reports what was stored; else BenchError."""
    blob = context.bucket.get_blob(name)
    where = f"{method}: gs://{BUCKET}/{name}"
    if blob is None or blob.size != context.size or blob.crc32c != context.expected_crc32c:
        found = "nothing" if blob is None else f"{blob.size} bytes, crc32c {blob.crc32c}"
        raise BenchError(f"{where} holds {found}; expected {context.size} bytes, crc32c {context.expected_crc32c}")
    if method == "archiver":
        expected = {
            "size": context.size,
            "crc32c": blob.crc32c,
            "gs_uri": f"gs://{BUCKET}/{name}",
            "already_archived": False,
            "content_type": CONTENT_TYPE,
        }
        archived = child.get("archived") or {}
        if wrong := {key: archived.get(key) for key, value in expected.items() if archived.get(key) != value}:
            raise BenchError(f"archiver: ArchivedObject disagrees with the stored object on {wrong}")


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method its fastest run (a busy neighbour only ever slows a run down), and the archiver's ratios."""
    best: dict[str, dict[str, Any]] = {}
    for result in results:
        if result["method"] not in best or result["mib_per_s"] > best[result["method"]]["mib_per_s"]:
            best[result["method"]] = result
    fastest = max((best[key] for key in DIRECT), key=lambda result: result["mib_per_s"])
    speed = best["archiver"]["mib_per_s"] / fastest["mib_per_s"]
    # What each method's own process spends per MiB, whatever the emulator costs; Relay's as a share
    # of the best direct upload's (100%: as little CPU a MiB as the best direct upload).
    per_mib = {key: round(1000 * result["cpu_s"] * MIB / result["size"], 2) for key, result in best.items()}
    cheapest = min(DIRECT, key=per_mib.__getitem__)
    cpu = round(per_mib[cheapest] / per_mib["archiver"], 3) if per_mib["archiver"] else 0.0
    growth = max(result["growth_mib"] for result in results if result["method"] == "archiver")
    # fake-gcs-server busy for most of each compared run: the wall times measure it, not the clients.
    emulator_share = min(best[key]["emulator_cpu_s"] / best[key]["wall_s"] for key in ("archiver", *DIRECT))
    return {
        "best": best,
        "client_cpu_ms_per_mib": per_mib,
        "client_cpu_baseline_method": cheapest,
        "client_cpu_ratio": cpu,
        "emulator_busy_share": round(emulator_share, 3),
        "targets": {
            "client_cpu_ratio": common.target(
                f">= {TARGET_CPU_RATIO:.0%} of the best direct upload", cpu, cpu >= TARGET_CPU_RATIO
            ),
            "throughput_ratio": common.target(
                f">= {TARGET_THROUGHPUT_RATIO:.0%} of the best direct upload",
                round(speed, 3),
                speed >= TARGET_THROUGHPUT_RATIO,
            ),
            "archiver_peak_rss_growth_mib": common.target(
                f"< {TARGET_GROWTH_MIB:g} MiB", growth, growth < TARGET_GROWTH_MIB
            ),
        },
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=int, default=1024, help="file size in MiB (default 1024)")
    parser.add_argument("--quick", action="store_true", help="a 128 MiB file")
    parser.add_argument("--runs", type=int, default=1, help="runs per method, interleaved; the fastest counts")
    args = parser.parse_args(argv)
    args.size_mib = 128 if args.quick else args.size_mib
    if not 1 <= args.size_mib <= 4096 or not 1 <= args.runs <= 10:
        parser.error("--size-mib 1-4096 (the emulator holds each object in RAM), --runs 1-10")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    processes = Processes()
    return common.run_guarded(processes, lambda: run(args, processes))


def run(args: argparse.Namespace, processes: Processes) -> int:
    busy = common.check_busy()
    size = args.size_mib * MIB
    for method in METHODS:
        common.fresh_log_path(f"archive-{method}")  # one log per method for this run's children
    print("starting fake-gcs-server (memory backend) …", flush=True)
    stack = common.start_emulators(processes, "storage", log_dir=LOG_DIR / "archive")
    storage_host = stack.emulator_env["STORAGE_EMULATOR_HOST"]
    env = common.project_env({"STORAGE_EMULATOR_HOST": storage_host, "GOOGLE_CLOUD_PROJECT": PROJECT})
    os.environ["STORAGE_EMULATOR_HOST"] = storage_host
    import google.cloud.storage as storage  # noqa: PLC0415 - only once the emulator runs

    client = storage.Client(project=PROJECT)
    bucket = client.bucket(BUCKET) if client.bucket(BUCKET).exists() else client.create_bucket(BUCKET)
    server = serve_file(size)
    processes.on_stop(server.shutdown)
    context = Context(
        emulator_pgid=stack.emulators["storage"].pid,
        bucket=bucket,
        env=env,
        url=f"http://{HOST}:{server.server_address[1]}{FILE_PATH}",
        size=size,
        expected_crc32c=pattern_crc32c(size),
        # fake-gcs-server's resumable uploads slow down with the square of the size (about 150 s for
        # 1 GiB here): generous, but a stuck child still fails the run rather than hanging it.
        timeout=120.0 + args.size_mib / 5 + 400.0 * (args.size_mib / 1024) ** 2,
    )
    results = []
    for number in range(1, args.runs + 1):
        # Interleaved, and the archiver first and last in turn, so drift (a busy neighbour, the
        # emulator's heap) does not always fall on the same method.
        for method in list(METHODS)[:: 1 if number % 2 else -1]:
            results.append(result := run_method(context, method, number))
            print(f"{METHODS[method]}: {result['mib_per_s']:.1f} MiB/s, CPU {result['cpu_s']:.2f} s", flush=True)
    processes.stop_all()  # the emulator and the file server: not needed for the report
    document = {
        **common.results_header(busy),
        "settings": {"size_mib": args.size_mib, "runs": args.runs, "quick": args.quick, "chunk": UPLOAD_CHUNK_BYTES},
        "runs": results,
        **summarise(results),
    }
    common.publish("archive", RESULTS_DIR / "archive.json", document, render)
    return 0


def render(document: dict[str, Any]) -> str:
    """The archive section: each method's figures, Relay's client CPU per MiB against the best direct upload."""
    several = document["settings"]["runs"] > 1
    rows = [
        [
            METHODS[r["method"]] + (f" (run {r['run']})" if several else ""),
            f"{r['mib_per_s']:.1f}",
            f"{r['wall_s']:.2f}",
            f"{r['growth_mib']:.1f}",
            f"{r['cpu_s']:.2f}",
            f"{1000 * r['cpu_s'] * MIB / r['size']:.2f}",
            f"{r['emulator_cpu_s']:.2f}",
        ]
        for r in document["runs"]
    ]
    targets, per_mib = document["targets"], document["client_cpu_ms_per_mib"]
    baseline = document["client_cpu_baseline_method"]
    cpu, speed, growth = (
        targets[key] for key in ("client_cpu_ratio", "throughput_ratio", "archiver_peak_rss_growth_mib")
    )
    headers = ["method", "MiB/s", "wall s", "peak RSS growth MiB", "CPU s", "client CPU ms / MiB", "emulator CPU s"]
    lines = [
        common.provenance(document) + f" A {document['settings']['size_mib']} MiB file.",
        "",
        common.markdown_table(headers, rows),
        "",
        f"- Relay's client CPU per MiB as a % of the best direct upload: **{cpu['value']:.0%}** "
        f"({per_mib['archiver']:.2f} ms a MiB against {per_mib[baseline]:.2f} for {METHODS[baseline]}; "
        f"{common.verdict(cpu)}).",
        f"- Archiver throughput = {speed['value']:.0%} of the best direct method ({common.verdict(speed)}).",
        f"- Archiver peak RSS growth = {growth['value']:.1f} MiB ({common.verdict(growth)}).",
    ]
    if document["emulator_busy_share"] >= EMULATOR_BOUND_SHARE:
        lines.append(
            f"- fake-gcs-server was busy for {document['emulator_busy_share']:.0%} or more of each run's wall time: "
            "the wall times measure the emulator more than the clients; the CPU per MiB tells the clients apart."
        )
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["_child"]:  # a measuring child: archive.py _child METHOD URL SIZE OBJECT
        measure(sys.argv[2], url=sys.argv[3], size=int(sys.argv[4]), object_name=sys.argv[5])
        sys.exit(0)
    sys.exit(main())
