"""`make pin-images`: the base and builder images, each pinned as `NAME:TAG@sha256:DIGEST`, re-resolved.

The Dockerfile's PYTHON_IMAGE and the Cloud Build step images (cloudbuild.ci.yaml, cloudbuild.yaml) name
a tag, for the reader, and a digest, which is what is pulled. This asks a registry what each tag points
at now, with the first of crane, skopeo or `docker buildx imagetools` found on PATH, and rewrites every
reference whose digest moved. `--check` only reads the files: every reference is pinned, and the same
image has the same digest everywhere (no registry needed; `make test` runs it through tests/unit).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PINNED_FILES = ("Dockerfile", "cloudbuild.ci.yaml", "cloudbuild.yaml")
# NAME:TAG@sha256:DIGEST, as the files write them (NAME with its registry, or a Docker Hub library name).
PINNED = re.compile(r"(?P<name>[a-z0-9][a-z0-9._/-]*[a-z0-9]):(?P<tag>[\w][\w.-]*)@(?P<digest>sha256:[0-9a-f]{64})")
# Where an image reference is expected to be: a FROM's argument, a step's image substitution.
REFERENCE_LINES = re.compile(r"^\s*(ARG PYTHON_IMAGE=|_[A-Z_]*IMAGE:\s)(?P<value>\S+)\s*$", re.MULTILINE)
DOCKER_FORMAT = "{{json .Manifest.Digest}}"
Resolver = Callable[[str], str]  # NAME:TAG -> sha256:DIGEST


def references(root: Path = ROOT) -> list[tuple[str, str, str, str]]:
    """(file, name, tag, digest) of every image reference the pinned files name; a reference without a
    digest comes back with an empty digest."""
    found = []
    for file in PINNED_FILES:
        for line in REFERENCE_LINES.finditer((root / file).read_text(encoding="utf-8")):
            value = line.group("value")
            pinned = PINNED.fullmatch(value)
            if pinned:
                found.append((file, pinned.group("name"), pinned.group("tag"), pinned.group("digest")))
            else:
                name, _, tag = value.partition("@")[0].rpartition(":")
                found.append((file, name or value, tag, ""))
    return found


def problems(root: Path = ROOT) -> list[str]:
    """What keeps the pins from being whole: an unpinned reference, one image at two digests."""
    found = references(root)
    unpinned = [f"{file}: {name}:{tag} has no @sha256 digest" for file, name, tag, digest in found if not digest]
    digests: dict[str, set[str]] = {}
    for _, name, tag, digest in found:
        digests.setdefault(f"{name}:{tag}", set()).add(digest)
    split = [f"{image} is pinned at {len(seen)} digests" for image, seen in sorted(digests.items()) if len(seen) > 1]
    return unpinned + split


def update(resolve: Resolver, root: Path = ROOT) -> list[str]:
    """Rewrite each reference to the digest its tag has now; returns one line per moved image."""
    current = {(name, tag): digest for _, name, tag, digest in references(root)}
    now = {image: resolve(f"{image[0]}:{image[1]}") for image in current}
    moved = [
        f"{name}:{tag} {current[name, tag]} -> {digest}"
        for (name, tag), digest in now.items()
        if digest != current[name, tag]
    ]
    for file in PINNED_FILES:
        path = root / file
        text = path.read_text(encoding="utf-8")

        def pinned(line: re.Match[str]) -> str:
            value = line.group("value")
            name, _, tag = value.partition("@")[0].rpartition(":")
            if (name, tag) not in now:
                return line.group(0)
            return line.group(0).replace(value, f"{name}:{tag}@{now[name, tag]}")

        path.write_text(REFERENCE_LINES.sub(pinned, text), encoding="utf-8")
    return moved


def registry_resolver(tools: Iterable[str] = ("crane", "skopeo", "docker")) -> Resolver:
    """NAME:TAG -> its digest, asked of the registry with the first tool found (the manifest list's digest,
    which every platform's pull resolves through)."""
    for tool in tools:
        if shutil.which(tool):
            break
    else:
        raise SystemExit("make pin-images needs crane, skopeo or docker (buildx) on PATH, and the registries online")

    def resolve(image: str) -> str:
        done = subprocess.run(_digest_command(tool, image), capture_output=True, text=True, check=False, timeout=120)  # noqa: S603
        digest = done.stdout.strip().strip('"')
        if done.returncode != 0 or not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise SystemExit(f"{tool} could not resolve {image}: {done.stderr.strip()[-500:]}")
        return digest

    return resolve


def _digest_command(tool: str, image: str) -> list[str]:
    if tool == "crane":
        return ["crane", "digest", image]
    if tool == "skopeo":
        return ["skopeo", "inspect", "--format", "{{.Digest}}", f"docker://{image}"]
    return ["docker", "buildx", "imagetools", "inspect", "--format", DOCKER_FORMAT, image]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m replicate_relay.deploy.pins", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that every image is pinned, offline")
    args = parser.parse_args(argv)
    if args.check:
        found = problems()
        for problem in found:
            print(f"pin-images: {problem}", file=sys.stderr)
        if not found:
            print(f"pin-images: {len(references())} references pinned by digest")
        return 1 if found else 0
    moved = update(registry_resolver())
    for line in moved or ["every digest is current"]:
        print(f"pin-images: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
