"""The real node keeps only the current version of the images it imports: which of
containerd's images the node removes (devcluster/node.py's `stale_images`), read
from `ctr images ls` as containerd 2.2 prints it. The removal itself, and the space it
frees, shows on the real node (a node start with a stale image present)."""

from __future__ import annotations

from devcluster import node as real

MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANAGED = "io.cri-containerd.image=managed"


def sha(char: str) -> str:
    return "sha256:" + char * 64


# manifests (what each name points at), and the config digests the CRI plugin names them by
RUNTIME, PREVIOUS_RUNTIME, PAUSE, OLD = sha("a"), sha("b"), sha("c"), sha("d")
RUNTIME_ID, PREVIOUS_ID, PAUSE_ID, OLD_ID = sha("1"), sha("2"), sha("3"), sha("4")


def listing(*rows: tuple[str, str, str]) -> str:
    """`ctr images ls` output: a header, then REF TYPE DIGEST SIZE PLATFORMS LABELS."""
    lines = ["REF TYPE DIGEST SIZE PLATFORMS LABELS "]
    lines += [
        f"{ref} {MANIFEST} {digest} {size} linux/amd64 {MANAGED} " for ref, digest, size in rows
    ]
    return "\n".join(lines) + "\n"


IMAGES = listing(
    (real.RUNTIME_IMAGE, RUNTIME, "5.9 GiB"),
    (RUNTIME_ID, RUNTIME, "5.9 GiB"),  # the CRI plugin's name for it
    (PREVIOUS_ID, PREVIOUS_RUNTIME, "5.9 GiB"),  # the runtime image before its rebuild
    (real.PAUSE_IMAGE, PAUSE, "312.0 KiB"),
    (real.DEFAULT_PAUSE, PAUSE, "312.0 KiB"),
    (PAUSE_ID, PAUSE, "312.0 KiB"),
    ("localhost/retired:1", OLD, "1.2 GiB"),  # no longer imported
    (OLD_ID, OLD, "1.2 GiB"),
)


def test_only_the_imported_images_and_their_other_names_stay():
    stale = real.stale_images(IMAGES, {real.RUNTIME_IMAGE, real.PAUSE_IMAGE})
    assert stale == [PREVIOUS_ID, "localhost/retired:1", OLD_ID]


def test_an_image_no_longer_imported_goes_with_all_its_names():
    stale = real.stale_images(IMAGES, {real.PAUSE_IMAGE})
    assert stale == [real.RUNTIME_IMAGE, RUNTIME_ID, PREVIOUS_ID, "localhost/retired:1", OLD_ID]


def test_nothing_to_remove():
    assert real.stale_images(listing(), {real.PAUSE_IMAGE}) == []
    current = listing((real.PAUSE_IMAGE, PAUSE, "312.0 KiB"), (PAUSE_ID, PAUSE, "312.0 KiB"))
    assert real.stale_images(current, {real.PAUSE_IMAGE}) == []
