"""Check a store's consistency (``fastdist check``): blobs, images, snapshots and leftovers.

The checker reads only; :func:`repair` (``check --repair``) then removes the corrupt blobs it
found, which leaves the images that used them listed but incomplete until pulled again. A
*problem* is something that breaks the store's promises (a blob that does not hash to its name,
an image whose blob or snapshot is missing, a snapshot whose parent is gone). A *leftover* is
harmless debris that ``fastdist prune`` removes: staging dirs of interrupted unpacks, partial
ingests (which the next pull resumes; prune keeps those younger than its ``--partial-age``, a
day by default), snapshots and blobs no image uses, and stray mounts under the store.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import _native, oci
from .content import ContentStore
from .errors import FastdistError
from .metadata import ImageRecord, MetadataDB
from .oci import Digest, parse_digest
from .snapshots import Snapshotter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finding:
    """One problem or leftover: a kind (``blob-corrupt``, ``image-missing-snapshot``, …), what it
    is about (a digest, chain_id, image name or path), and a message."""

    kind: str
    subject: str
    message: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


@dataclass(frozen=True)
class CheckReport:
    blobs: int
    snapshots: int
    images: int
    problems: tuple[Finding, ...]
    leftovers: tuple[Finding, ...]
    #: What ``check --repair`` did before this report was made (``blob-removed`` findings).
    repaired: tuple[Finding, ...] = ()

    @property
    def ok(self) -> bool:
        """No problems (leftovers are fine: prune removes them)."""
        return not self.problems

    @property
    def incomplete_images(self) -> tuple[str, ...]:
        """Names of images missing a blob or snapshot: a pull of each fetches what is missing."""
        kinds = ("image-missing-blob", "image-missing-snapshot")
        return tuple(dict.fromkeys(p.subject for p in self.problems if p.kind in kinds))

    @property
    def corrupt_blobs(self) -> tuple[Digest, ...]:
        """Blobs that do not hash to their name or cannot be read: what ``repair`` removes."""
        return tuple(
            parse_digest(p.subject) for p in self.problems if p.kind in _REPAIRABLE_BLOB_KINDS
        )


# Problems ``repair`` fixes by removing the blob (the next pull fetches it again, verified).
_REPAIRABLE_BLOB_KINDS = ("blob-corrupt", "blob-unreadable")


def repair(report: CheckReport, content: ContentStore) -> tuple[Finding, ...]:
    """Remove the corrupt blobs ``report`` found (the caller holds the GC lock exclusively and
    checks again afterwards). Images keep their records: missing content is what ``pull``
    fetches, while a corrupt blob would be taken for present."""
    done = []
    for digest in report.corrupt_blobs:
        content.delete(digest)
        log.warning("check --repair: removed corrupt blob %s", digest)
        done.append(Finding("blob-removed", digest, f"removed corrupt blob {digest}"))
    return tuple(done)


class StoreChecker:
    """Walks one store root. ``snapshotters`` are the snapshotters present on the root, by name;
    ``container_mounts`` are the rootfs mount points of known containers (legitimate mounts)."""

    def __init__(
        self,
        root: Path,
        content: ContentStore,
        metadata: MetadataDB,
        snapshotters: Mapping[str, Snapshotter],
        container_mounts: Iterable[str | Path] = (),
        verify_blobs: bool = True,
    ) -> None:
        self.root = Path(root)
        self.content = content
        self.metadata = metadata
        self.snapshotters = dict(snapshotters)
        self.container_mounts = {os.path.realpath(p) for p in container_mounts}
        self.verify_blobs = verify_blobs
        self._problems: list[Finding] = []
        self._leftovers: list[Finding] = []

    def _problem(self, kind: str, subject: str, message: str) -> None:
        self._problems.append(Finding(kind, subject, message))

    def _leftover(self, kind: str, subject: str, message: str) -> None:
        self._leftovers.append(Finding(kind, subject, message))

    def run(self) -> CheckReport:
        blob_sizes = self._check_blobs()
        images = self.metadata.images.list()
        snapshots = 0
        for name, snap in self.snapshotters.items():
            snapshots += self._check_snapshots(name, snap)
        referenced_blobs: set[Digest] = set()
        referenced_snaps: set[tuple[str, Digest]] = set()
        for rec in images:
            self._check_image(rec, blob_sizes)
            referenced_blobs.update(
                {rec.target.digest, rec.manifest_digest, rec.config_digest, *rec.layer_digests}
            )
            referenced_snaps.update((rec.snapshotter, c) for c in rec.chain_ids)
        self._check_leftovers(blob_sizes, referenced_blobs, referenced_snaps)
        return CheckReport(
            blobs=len(blob_sizes),
            snapshots=snapshots,
            images=len(images),
            problems=tuple(self._problems),
            leftovers=tuple(self._leftovers),
        )

    # --- blobs ---------------------------------------------------------------------------------
    def _check_blobs(self) -> dict[Digest, int]:
        sizes: dict[Digest, int] = {}
        for name in sorted(os.listdir(self.content.blobs_dir)):
            path = self.content.blobs_dir / name
            try:
                digest = parse_digest(f"sha256:{name}")
            except FastdistError:
                self._problem("blob-stray", str(path), f"{path} is not named by a sha256 digest")
                continue
            if not path.is_file() or path.is_symlink():
                self._problem("blob-stray", digest, f"blob {digest} is not a regular file")
                continue
            if self.verify_blobs:
                try:
                    actual, size = _native.sha256_file(str(path))
                except (OSError, FastdistError) as e:
                    self._problem("blob-unreadable", digest, f"blob {digest}: cannot read: {e}")
                    continue
                if actual != digest:
                    self._problem(
                        "blob-corrupt", digest, f"blob {digest}: content hashes to {actual}"
                    )
                    continue
            else:
                size = path.stat().st_size
            sizes[digest] = size
        return sizes

    # --- images --------------------------------------------------------------------------------
    def _check_image(self, rec: ImageRecord, blob_sizes: Mapping[Digest, int]) -> None:
        name = rec.name

        def have(digest: Digest, what: str, size: int | None = None) -> bool:
            if digest not in blob_sizes:
                if not self.content.exists(digest):
                    self._problem(
                        "image-missing-blob", name, f"image {name}: {what} {digest} is missing"
                    )
                return False
            if size is not None and blob_sizes[digest] != size:
                self._problem(
                    "blob-size",
                    digest,
                    f"image {name}: {what} {digest} is {blob_sizes[digest]} bytes, "
                    f"its descriptor says {size}",
                )
                return False
            return True

        have(rec.target.digest, "target", rec.target.size)
        manifest: oci.Manifest | None = None
        if have(rec.manifest_digest, "manifest"):
            try:
                doc = oci.parse_document(
                    self.content.read_bytes(rec.manifest_digest, oci.MAX_MANIFEST_BYTES), None
                )
            except FastdistError as e:
                self._problem("image-manifest", name, f"image {name}: manifest: {e.message}")
            else:
                if isinstance(doc, oci.Manifest):
                    manifest = doc
                else:
                    self._problem(
                        "image-manifest",
                        name,
                        f"image {name}: {rec.manifest_digest} is not an image manifest",
                    )
        config: oci.ImageConfig | None = None
        if have(rec.config_digest, "config"):
            try:
                config = oci.parse_config(
                    self.content.read_bytes(rec.config_digest, oci.MAX_CONFIG_BYTES)
                )
            except FastdistError as e:
                self._problem("image-config", name, f"image {name}: config: {e.message}")
        sizes = {}
        if manifest is not None:
            sizes = {layer.digest: layer.size for layer in manifest.layers}
            if tuple(layer.digest for layer in manifest.layers) != rec.layer_digests:
                self._problem(
                    "image-record", name, f"image {name}: recorded layers differ from its manifest"
                )
        for digest in rec.layer_digests:
            have(digest, "layer", sizes.get(digest))
        if config is not None and tuple(oci.chain_ids(config.diff_ids)) != rec.chain_ids:
            self._problem(
                "image-record", name, f"image {name}: recorded chain_ids differ from its config"
            )
        snap = self.snapshotters.get(rec.snapshotter)
        if snap is None:
            self._problem(
                "image-missing-snapshot",
                name,
                f"image {name}: snapshotter {rec.snapshotter} has no snapshots on this root",
            )
            return
        parent: Digest | None = None
        for chain in rec.chain_ids:
            if not snap.exists(chain):
                self._problem(
                    "image-missing-snapshot",
                    name,
                    f"image {name}: snapshot {chain} ({rec.snapshotter}) is missing",
                )
            else:
                try:
                    got = snap.parent(chain)
                except (FastdistError, ValueError):
                    got = parent  # reported by the snapshot walk
                if got != parent:
                    self._problem(
                        "snapshot-parent",
                        chain,
                        f"snapshot {chain}: parent is {got}, image {name} needs {parent}",
                    )
            parent = chain

    # --- snapshots -----------------------------------------------------------------------------
    def _check_snapshots(self, name: str, snap: Snapshotter) -> int:
        chains = snap.list()
        present = set(chains)
        for chain in chains:
            where = f"snapshot {chain} ({name})"
            try:
                parent = snap.parent(chain)
            except (FastdistError, ValueError) as e:
                self._problem("snapshot-info", chain, f"{where}: unreadable info.json: {e}")
                continue
            if not snap.fs_path(chain).is_dir():
                self._problem("snapshot-fs", chain, f"{where}: its fs directory is missing")
            if parent is not None and parent not in present:
                self._problem("snapshot-parent", chain, f"{where}: parent {parent} is missing")
            try:
                snap.chain(chain)
            except (FastdistError, ValueError) as e:
                self._problem("snapshot-chain", chain, f"{where}: broken parent chain: {e}")
        for p in snap.staging_leftovers():
            self._leftover("staging", str(p), f"interrupted unpack or removal left {p}")
        return len(chains)

    # --- leftovers -----------------------------------------------------------------------------
    def _check_leftovers(
        self,
        blob_sizes: Mapping[Digest, int],
        referenced_blobs: set[Digest],
        referenced_snaps: set[tuple[str, Digest]],
    ) -> None:
        for digest in self.content.ingests():
            if self.content.resumable(digest):
                self._leftover("ingest", digest, f"partial download of {digest} (resumable)")
            else:
                self._leftover("ingest", digest, f"ingest of {digest} with nothing to resume")
        for name in os.listdir(self.content.ingest_dir):
            if name.startswith(".write-"):
                self._leftover("ingest", name, f"interrupted write {name}")
        for digest in blob_sizes:
            if digest not in referenced_blobs:
                self._leftover("blob-unreferenced", digest, f"blob {digest} is used by no image")
        in_use = set(self._container_snapshots())
        for name, snap in self.snapshotters.items():
            for chain in snap.list():
                if (name, chain) not in referenced_snaps and (name, chain) not in in_use:
                    self._leftover(
                        "snapshot-unreferenced",
                        chain,
                        f"snapshot {chain} ({name}) is used by no image",
                    )
        for mount in stray_mounts(self.root, self.container_mounts):
            self._leftover("mount", mount, f"stray mount {mount} under the store")

    def _container_snapshots(self) -> Iterable[tuple[str, Digest]]:
        for name, snap in self.snapshotters.items():
            for key in snap.list_active():
                try:
                    parent = snap.get_active(key).parent
                except (FastdistError, ValueError):
                    continue
                if parent is not None:
                    for chain in snap.chain(parent):
                        yield (name, chain)


def _unescape_mountinfo(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo (proc(5)).
    out = []
    i = 0
    while i < len(field):
        code = field[i + 1 : i + 4]
        if field[i] == "\\" and len(code) == 3 and all(c in "01234567" for c in code):
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root`` (from /proc/self/mountinfo), deepest first."""
    base = os.path.realpath(root)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        fields = line.split(" ")
        if len(fields) < 5:
            continue
        point = _unescape_mountinfo(fields[4])
        if point == base or point.startswith(base.rstrip("/") + "/"):
            out.append(point)
    return sorted(set(out), key=lambda p: -p.count("/"))


#: The store directories below which fastdist itself mounts: container root filesystems
#: (``containers/<id>/rootfs``), snapshotter views (``snapshots/<name>/...``) and the overlay
#: probe (``tmp/overlay-probe-*``).
OWN_MOUNT_DIRS = ("containers", "snapshots", "tmp")


def stray_mounts(root: Path, legitimate: Iterable[str] = ()) -> list[str]:
    """Mounts fastdist made under the store that belong to no known container.

    Only mount points strictly below ``OWN_MOUNT_DIRS`` are candidates: the root itself, or
    ``content/``, may be a filesystem the user mounted for the store (a tmpfs, a dedicated disk),
    and unmounting it would make every image vanish.
    """
    keep = set(legitimate)
    base = os.path.realpath(root).rstrip("/")
    own = tuple(f"{base}/{d}/" for d in OWN_MOUNT_DIRS)
    return [m for m in mounts_under(root) if m.startswith(own) and m not in keep]


def format_report(report: CheckReport, verbose: bool = False) -> Sequence[str]:
    """Lines for the CLI: every problem, leftovers counted (listed with ``verbose``)."""
    lines = [f"repaired: {r.message}" for r in report.repaired]
    lines += [f"problem: {p}" for p in report.problems]
    if verbose:
        lines += [f"leftover: {x}" for x in report.leftovers]
    lines.append(
        f"checked {report.blobs} blob(s), {report.snapshots} snapshot(s), {report.images} "
        f"image(s): {len(report.problems)} problem(s), {len(report.leftovers)} leftover(s)"
        + (
            " (fastdist prune removes leftovers; partial downloads once a day old)"
            if report.leftovers
            else ""
        )
    )
    if report.corrupt_blobs:
        lines.append(
            f"hint: fastdist check --repair removes the {len(report.corrupt_blobs)} corrupt "
            "blob(s); a pull of each image that used one then fetches it again"
        )
    incomplete = report.incomplete_images
    if incomplete:
        lines.append(
            f"hint: {len(incomplete)} image(s) are incomplete; pull them again to fetch what "
            "is missing: fastdist pull " + " ".join(incomplete)
        )
    return lines


__all__ = [
    "CheckReport",
    "Finding",
    "StoreChecker",
    "format_report",
    "mounts_under",
    "repair",
    "stray_mounts",
]
