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
import stat
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import _native, oci
from .content import ContentStore
from .errors import FastdistError
from .fingerprint import ExpectedTree, expected_tree, xxh3_file
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
    #: What ``check --repair`` did before this report was made (``blob-removed`` and
    #: ``snapshot-removed`` findings).
    repaired: tuple[Finding, ...] = ()
    #: The trees against their manifests (``check --deep``), None when not asked.
    deep: DeepReport | None = None

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
        deep: bool = False,
    ) -> None:
        self.root = Path(root)
        self.content = content
        self.metadata = metadata
        self.snapshotters = dict(snapshotters)
        self.container_mounts = {os.path.realpath(p) for p in container_mounts}
        self.verify_blobs = verify_blobs
        self.deep = deep
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
        deep = self._check_trees(images) if self.deep else None
        return CheckReport(
            blobs=len(blob_sizes),
            snapshots=snapshots,
            images=len(images),
            problems=tuple(self._problems),
            leftovers=tuple(self._leftovers),
            deep=deep,
        )

    # --- trees (deep) --------------------------------------------------------------------------
    def _check_trees(self, images: Sequence[ImageRecord]) -> DeepReport:
        start = time.monotonic()
        layers = deep_check(self.snapshotters)
        for x in layers:
            if not x.damaged:
                continue
            n = {
                k: sum(1 for f in x.findings if f.kind == k)
                for k in ("changed", "missing", "extra")
            }
            users = [
                rec.name
                for rec in images
                if rec.snapshotter == x.snapshotter and x.chain_id in rec.chain_ids
            ]
            self._problem(
                "snapshot-tree",
                x.chain_id,
                f"snapshot {x.chain_id} ({x.snapshotter}): {n['changed']} changed, "
                f"{n['missing']} missing, {n['extra']} extra file(s) against its manifest"
                + (f"; used by {', '.join(users)}" if users else ""),
            )
        return DeepReport(
            layers, damaged_by_image(images, layers), seconds=time.monotonic() - start
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
        return container_snapshots(self.snapshotters)


def container_snapshots(snapshotters: Mapping[str, Snapshotter]) -> set[tuple[str, Digest]]:
    """``(snapshotter, chain_id)`` of every committed snapshot a container's writable snapshot
    stands on (its parent and that parent's chain)."""
    out: set[tuple[str, Digest]] = set()
    for name, snap in snapshotters.items():
        for key in snap.list_active():
            try:
                parent = snap.get_active(key).parent
            except (FastdistError, ValueError):
                continue
            if parent is not None:
                out.update((name, chain) for chain in snap.chain(parent))
    return out


# --- deep: the trees of committed snapshots against their manifests ---------------------------

#: The metadata ``check --deep`` compares, as named in its findings.
DEEP_ASPECTS = ("type", "content", "size", "mode", "owner", "mtime", "xattrs", "link")
_OVERLAY_XATTR = (b"trusted.overlay.", b"user.overlay.")
_HOST_XATTRS = (b"security.selinux",)  # a host may label what the applier wrote


@dataclass(frozen=True)
class FileFinding:
    """One path of a snapshot's tree that differs from its manifest: ``kind`` is ``changed``
    (``aspects`` says what: content, mode, owner, mtime, xattrs, type, size, link), ``missing``
    or ``extra``. ``path`` is relative to the snapshot's ``fs`` (bytes as on disk)."""

    kind: str
    path: bytes
    aspects: tuple[str, ...] = ()

    @property
    def display_path(self) -> str:
        return self.path.decode("utf-8", "backslashreplace") or "."

    def __str__(self) -> str:
        what = f" ({', '.join(self.aspects)})" if self.aspects else ""
        return f"{self.kind}: {self.display_path}{what}"


@dataclass(frozen=True)
class LayerCheck:
    """The deep check of one committed snapshot. ``checked`` is False for a layer committed
    without a manifest (by an older fastdist), or below one: there is nothing to compare."""

    snapshotter: str
    chain_id: Digest
    checked: bool
    files: int = 0
    bytes_hashed: int = 0
    findings: tuple[FileFinding, ...] = ()

    @property
    def damaged(self) -> bool:
        return bool(self.findings)


@dataclass(frozen=True)
class DeepReport:
    """Every committed snapshot's tree against its manifest (``check --deep``)."""

    layers: tuple[LayerCheck, ...]
    #: image name -> chain_ids of its damaged snapshots (bottom first)
    images: Mapping[str, tuple[Digest, ...]]
    #: ``(snapshotter, chain_id)`` of the snapshots ``--repair`` removed (damaged and children)
    removed: tuple[tuple[str, Digest], ...] = ()
    seconds: float = 0.0

    @property
    def damaged(self) -> tuple[LayerCheck, ...]:
        return tuple(x for x in self.layers if x.damaged)

    @property
    def bytes_hashed(self) -> int:
        return sum(x.bytes_hashed for x in self.layers)


@dataclass(frozen=True)
class _OnDisk:
    st: os.stat_result
    xattrs: dict[bytes, bytes]


def _walk(root: bytes) -> dict[bytes, os.stat_result]:
    """Every path below ``root`` (relative; b"" is root itself) with its lstat; never follows."""
    out: dict[bytes, os.stat_result] = {b"": os.lstat(root)}
    stack = [b""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(root, rel) if rel else root) as it:
            for e in it:
                p = rel + b"/" + e.name if rel else e.name
                st = e.stat(follow_symlinks=False)
                out[p] = st
                if stat.S_ISDIR(st.st_mode):
                    stack.append(p)
    return out


def _xattrs(path: bytes) -> dict[bytes, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for name in names:
        key = os.fsencode(name)
        if key.startswith(_OVERLAY_XATTR):
            continue
        try:
            out[key] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
    return out


def _kind_of(st: os.stat_result) -> str:
    m = st.st_mode
    if stat.S_ISREG(m):
        return "f"
    if stat.S_ISDIR(m):
        return "d"
    if stat.S_ISLNK(m):
        return "l"
    if stat.S_ISCHR(m):
        return "c"
    if stat.S_ISBLK(m):
        return "b"
    if stat.S_ISFIFO(m):
        return "p"
    return "?"


def compare_tree(
    fs: Path, expected: ExpectedTree, *, overlay: bool
) -> tuple[tuple[FileFinding, ...], int, int]:
    """The findings of ``fs`` against ``expected``, the number of entries and the bytes hashed.
    Regular files are re-hashed with the ``xxhash`` package (``fingerprint.xxh3_file``)."""
    root = os.fsencode(fs)
    disk = _walk(root)
    owners = os.geteuid() == 0  # without root the applier could not chown
    findings: list[FileFinding] = []
    hashed = 0
    for path, rec in sorted(expected.entries.items()):
        st = disk.get(path)
        if st is None:
            findings.append(FileFinding("missing", path))
            continue
        full = os.path.join(root, path) if path else root
        want = "c" if rec.kind == "w" else ("f" if rec.kind == "h" else rec.kind)
        got = _kind_of(st)
        if got != want:
            findings.append(FileFinding("changed", path, ("type",)))
            continue
        bad: list[str] = []
        if rec.kind == "w":
            if st.st_rdev != 0:
                bad.append("type")
            if bad:
                findings.append(FileFinding("changed", path, tuple(bad)))
            continue
        xattrs = _xattrs(full)
        if overlay and path in expected.opaque:
            try:
                if os.getxattr(full, "trusted.overlay.opaque", follow_symlinks=False) != b"y":
                    bad.append("xattrs")
            except OSError:
                bad.append("xattrs")
        if path in expected.implicit:
            if bad:
                findings.append(FileFinding("changed", path, tuple(bad)))
            continue
        if want == "f":
            try:
                fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                findings.append(FileFinding("changed", path, ("content",)))
                continue
            try:
                digest, size = xxh3_file(fd)
            finally:
                os.close(fd)
            hashed += size
            if size != rec.size:
                bad.append("size")
            if digest != rec.xxh3:
                bad.append("content")
        if want == "l" and os.readlink(full) != rec.link:
            bad.append("link")
        if want != "l" and stat.S_IMODE(st.st_mode) != rec.mode:
            bad.append("mode")
        if owners and (st.st_uid, st.st_gid) != (rec.uid, rec.gid):
            bad.append("owner")
        # A directory's mtime moves whenever an entry below it is added or removed (the native
        # snapshotter applies a layer into a copy of its parent): not compared.
        if want != "d" and st.st_mtime_ns != rec.mtime_ns:
            bad.append("mtime")
        recorded = dict(rec.xattrs)
        for host in _HOST_XATTRS:
            if host not in recorded:
                xattrs.pop(host, None)
        if xattrs != recorded:
            bad.append("xattrs")
        if bad:
            findings.append(FileFinding("changed", path, tuple(bad)))
    for path in sorted(disk):
        if path not in expected.entries and path != b"":
            findings.append(FileFinding("extra", path))
    return tuple(findings), len(expected.entries), hashed


def deep_check(snapshotters: Mapping[str, Snapshotter]) -> tuple[LayerCheck, ...]:
    """Compare every committed snapshot's tree with what its manifests say it holds: a layer's
    own manifest (overlayfs: its directory holds that layer alone) or the fold of its chain's
    manifests, bottom first (native: its directory holds the flattened tree)."""
    out: list[LayerCheck] = []
    for name, snap in snapshotters.items():
        flatten = snap.apply_mode == "flatten"
        folded: dict[Digest, ExpectedTree | None] = {}
        # Parents first, so a deep chain folds without deep recursion.
        chains = sorted(snap.list(), key=lambda c: len(_safe_chain(snap, c)))
        for chain in chains:
            try:
                tree = expected_tree(snap, chain, folded)
            except (FastdistError, ValueError, OSError) as e:
                log.warning("check --deep: snapshot %s: %s", chain, e)
                out.append(LayerCheck(name, chain, False))
                continue
            if tree is None or not snap.fs_path(chain).is_dir():
                out.append(LayerCheck(name, chain, False))
                continue
            findings, files, hashed = compare_tree(
                snap.trusted_fs_path(chain), tree, overlay=not flatten
            )
            out.append(LayerCheck(name, chain, True, files, hashed, findings))
    return tuple(out)


def _safe_chain(snap: Snapshotter, chain: Digest) -> list[Digest]:
    try:
        return snap.chain(chain)
    except (FastdistError, ValueError):
        return [chain]


def damaged_by_image(
    images: Sequence[ImageRecord], layers: Sequence[LayerCheck]
) -> dict[str, tuple[Digest, ...]]:
    """Image name -> its damaged snapshots (bottom first), for the images that have any."""
    bad = {(x.snapshotter, x.chain_id) for x in layers if x.damaged}
    out: dict[str, tuple[Digest, ...]] = {}
    for rec in images:
        hit = tuple(c for c in rec.chain_ids if (rec.snapshotter, c) in bad)
        if hit:
            out[rec.name] = hit
    return out


def repair_snapshots(
    layers: Sequence[LayerCheck],
    snapshotters: Mapping[str, Snapshotter],
    in_use: Iterable[tuple[str, Digest]],
) -> tuple[tuple[tuple[str, Digest], ...], tuple[Finding, ...]]:
    """Remove each damaged snapshot and every snapshot above it (an overlay child needs its
    lower; a native child's parent record would dangle), children first, so the next pull
    unpacks them again from their verified blobs. A snapshot a container uses is kept (and
    named in a problem): removing a container's lower layer under it would break it. The caller
    holds the GC lock exclusively."""
    used = set(in_use)
    removed: list[tuple[str, Digest]] = []
    kept: list[Finding] = []
    for name, snap in snapshotters.items():
        damaged = {x.chain_id for x in layers if x.damaged and x.snapshotter == name}
        if not damaged:
            continue
        doomed = [c for c in snap.list() if damaged & set(_safe_chain(snap, c))]
        blocked = {c for c in doomed if (name, c) in used}
        for chain in sorted(doomed, key=lambda c: -len(_safe_chain(snap, c))):
            if blocked & set(_chain_above(snap, chain, doomed)):
                kept.append(
                    Finding(
                        "snapshot-in-use",
                        chain,
                        f"snapshot {chain} ({name}) is damaged but a container uses it: "
                        "remove the container, then check --deep --repair again",
                    )
                )
                continue
            snap.remove(chain)
            log.warning("check --deep --repair: removed snapshot %s (%s)", chain, name)
            removed.append((name, chain))
    return tuple(removed), tuple(kept)


def removed_findings(removed: Iterable[tuple[str, Digest]]) -> tuple[Finding, ...]:
    """``snapshot-removed`` findings for what ``repair_snapshots`` removed."""
    return tuple(
        Finding(
            "snapshot-removed",
            chain,
            f"removed damaged snapshot {chain} ({name}); the next pull of an image using it "
            "unpacks it again from its verified blob",
        )
        for name, chain in removed
    )


def _chain_above(snap: Snapshotter, chain: Digest, candidates: Sequence[Digest]) -> list[Digest]:
    """``chain`` and the candidates that have it in their chain (its children)."""
    return [c for c in candidates if chain in _safe_chain(snap, c)]


_FILES_SHOWN = 20


def format_deep(deep: DeepReport, verbose: bool = False) -> list[str]:
    """Lines for ``check --deep``: each damaged snapshot's files (the first 20 unless
    ``verbose``), the images they belong to, and what was hashed how fast."""
    lines: list[str] = []
    for x in deep.damaged:
        shown = x.findings if verbose else x.findings[:_FILES_SHOWN]
        lines += [f"  {x.chain_id} ({x.snapshotter}): {f}" for f in shown]
        if len(shown) < len(x.findings):
            lines.append(f"  … {len(x.findings) - len(shown)} more (-v lists them all)")
    for name, chains in deep.images.items():
        lines.append(f"image {name}: {len(chains)} damaged layer snapshot(s): " + ", ".join(chains))
    unchecked = sum(1 for x in deep.layers if not x.checked)
    rate = deep.bytes_hashed / deep.seconds / 1e9 if deep.seconds > 0 else 0.0
    lines.append(
        f"deep: {sum(1 for x in deep.layers if x.checked)} snapshot(s), "
        f"{sum(x.files for x in deep.layers)} entries, {deep.bytes_hashed} bytes re-hashed "
        f"in {deep.seconds:.2f}s ({rate:.2f} GB/s): {len(deep.damaged)} damaged"
        + (f", {unchecked} without a manifest (unpacked by an older fastdist)" if unchecked else "")
    )
    if deep.damaged and not deep.removed:
        lines.append(
            "hint: fastdist check --deep --repair removes the damaged snapshot(s) and those "
            "above them; the next pull of each image unpacks them again from its verified blobs"
        )
    return lines


def deep_json(deep: DeepReport) -> dict[str, object]:
    """``check --deep --json``'s ``deep`` object (paths as text, undecodable bytes escaped)."""
    return {
        "seconds": deep.seconds,
        "bytes_hashed": deep.bytes_hashed,
        "layers": [
            {
                "snapshotter": x.snapshotter,
                "chain_id": x.chain_id,
                "checked": x.checked,
                "entries": x.files,
                "bytes_hashed": x.bytes_hashed,
                "changed": [
                    {"path": f.display_path, "what": list(f.aspects)}
                    for f in x.findings
                    if f.kind == "changed"
                ],
                "missing": [f.display_path for f in x.findings if f.kind == "missing"],
                "extra": [f.display_path for f in x.findings if f.kind == "extra"],
            }
            for x in deep.layers
        ],
        "images": {name: list(chains) for name, chains in deep.images.items()},
        "removed": [{"snapshotter": n, "chain_id": c} for n, c in deep.removed],
    }


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
    if report.deep is not None:
        lines += format_deep(report.deep, verbose)
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
    "DeepReport",
    "FileFinding",
    "LayerCheck",
    "deep_check",
    "deep_json",
    "format_deep",
    "Finding",
    "StoreChecker",
    "container_snapshots",
    "format_report",
    "mounts_under",
    "repair",
    "stray_mounts",
]
