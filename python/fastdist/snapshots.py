"""Snapshotters: unpacked layers on disk keyed by chain_id, and writable views for containers.

Layout under ``<root>/snapshots/<name>/`` (containerd's snapshotter model, design.md §5)::

    layers/<chain hex>/fs          a committed layer (overlayfs: that layer's diff; native: the
    layers/<chain hex>/info.json   whole flattened tree); info records parent and link id
    layers/<chain hex>/usage       its du in bytes, cached on first request (usage())
    layers/<chain hex>/manifest    what the applier wrote into that layer, with xxh3-128
                                   fingerprints of the files (rust/src/manifest.rs); written
                                   into staging, so it appears with the layer by the same rename
    staging/<random>/fs            an unpack in progress, renamed into layers/ on commit
    staging/<random>.lock          held by the live owner, so a sweep can tell leftovers apart
    active/<key>/...               a container's writable snapshot (overlay upper+work, or a copy)
    locks/<chain hex>.lock         per chain_id lock for commit and remove
    l/<link id> -> ../layers/<hex>/fs   (overlayfs) short names keep deep lowerdir lists short

Nothing half-done is visible: a layer appears in ``layers/`` by one ``rename`` of a complete
staging directory; "already committed" (by another process) is success. A layer is ``seal``ed
first (info.json and manifest written, then one ``syncfs`` shared with the layers sealing at the
same time), in parallel and without the parent; its ``commit`` in layer order is then only the
rename (and, unless the caller ``flush``es once for many, an fsync of ``layers/``).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import json
import logging
import os
import re
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from .errors import FastdistError, StoreError
from .oci import Digest, parse_digest
from .store import (
    FileLock,
    check_beneath,
    ensure_dir,
    ensure_root,
    fsync_dir,
    libc,
    rmtree,
    syncfs,
    tree_usage,
    write_file_atomic,
    write_new_file,
)

log = logging.getLogger(__name__)

ApplyMode = Literal["layer", "flatten"]

# Mount options travel in one page (overlayfs rejects longer data).
_MOUNT_DATA_MAX = 4095
_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_LINK_RE = re.compile(r"[a-z0-9]{10}")
_MNT_DETACH = 2
_USAGE_FILE = "usage"
MANIFEST_FILE = "manifest"


def _hex(chain_id: Digest) -> str:
    return parse_digest(chain_id).split(":", 1)[1]


def _check_key(key: str) -> str:
    if not _KEY_RE.fullmatch(key):
        raise StoreError(f"invalid snapshot key {key[:80]!r}: expected [A-Za-z0-9_.-], 1-128 chars")
    return key


@dataclass
class Staging:
    """A layer being unpacked: ``path`` is the directory handed to the layer applier."""

    chain_id: Digest
    parent: Digest | None
    dir: Path
    path: Path
    _lock: FileLock = field(repr=False)
    # The applier's file manifest for this layer, committed beside ``fs`` (``MANIFEST_FILE``).
    manifest: bytes | None = field(default=None, repr=False)
    # Set by ``Snapshotter.seal``: info.json and the manifest are written and all of it durable.
    sealed: bool = field(default=False, repr=False)
    info: dict[str, object] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ActiveSnapshot:
    """A container's writable snapshot on top of the committed layer ``parent``."""

    key: str
    parent: Digest | None
    dir: Path


class Snapshotter(ABC):
    """One snapshotter implementation rooted at ``<root>/snapshots/<name>``."""

    name: ClassVar[str]
    apply_mode: ClassVar[ApplyMode]
    #: Whether a pull runs the incremental dedup pass when not told (``pull --dedup/--no-dedup``,
    #: ``Client.pull(dedup=)``): off for every snapshotter, see ARCHITECTURE.md for the
    #: measurement. A class attribute so that a pull that does not dedup never imports dedup.py.
    dedup_after_pull: ClassVar[bool] = False

    def __init__(self, root: Path, *, sync: bool = True) -> None:
        """``sync=False`` skips the ``syncfs`` before each commit (tests, throwaway stores)."""
        self.sync = sync
        self.store_root = Path(root)
        ensure_root(self.store_root)
        self.root = self.store_root / "snapshots" / self.name
        self.layers_dir = self._check_beneath("layers", create=True)
        self.staging_dir = self._check_beneath("staging", create=True)
        self.active_dir = self._check_beneath("active", create=True)
        self.locks_dir = self._check_beneath("locks", create=True)

    def _check_beneath(self, rel: str, *, create: bool = False) -> Path:
        """``self.root / rel``, refused (StoreError) if reached through a symlink from the store
        root: a planted ``layers/<hex>/fs -> /etc`` is never copied, mounted or written."""
        check_beneath(self.store_root, Path("snapshots", self.name, rel), create=create)
        return self.root / rel

    # --- committed layers ---------------------------------------------------------------------
    def layer_dir(self, chain_id: Digest) -> Path:
        return self.layers_dir / _hex(chain_id)

    def fs_path(self, chain_id: Digest) -> Path:
        """The directory holding a committed layer's files."""
        return self.layer_dir(chain_id) / "fs"

    def trusted_fs_path(self, chain_id: Digest) -> Path:
        """``fs_path``, checked to be a real directory of the store (no symlink on the way)."""
        return self._check_beneath(f"layers/{_hex(chain_id)}/fs")

    def exists(self, chain_id: Digest) -> bool:
        return self.layer_dir(chain_id).is_dir()

    def lock(self, chain_id: Digest) -> FileLock:
        """The per-chain_id lock (re-entrant within a thread); use as a context manager."""
        return FileLock(self.locks_dir / f"{_hex(chain_id)}.lock", reentrant=True)

    def _info(self, chain_id: Digest) -> dict[str, object]:
        try:
            raw = (self.layer_dir(chain_id) / "info.json").read_bytes()
        except FileNotFoundError:
            raise StoreError(f"snapshot {chain_id} is not committed ({self.name})") from None
        info = json.loads(raw)
        if not isinstance(info, dict):
            raise StoreError(f"snapshot {chain_id}: info.json is corrupt")
        return info

    def manifest(self, chain_id: Digest) -> bytes | None:
        """The committed layer's file manifest, or None for a layer committed without one (by
        an older fastdist)."""
        try:
            return (self.layer_dir(chain_id) / MANIFEST_FILE).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreError(f"snapshot {chain_id}: cannot read its manifest: {e.strerror}") from e

    def parent(self, chain_id: Digest) -> Digest | None:
        p = self._info(chain_id).get("parent")
        return parse_digest(p) if p else None

    def usage(self, chain_id: Digest) -> int:
        """Bytes on disk of that layer's directory (``du``: blocks, hardlinks once).

        Measured on first request, not at commit (a walk of the whole tree would sit serially on
        every pull's path), and cached in ``layers/<hex>/usage``: a committed layer never
        changes. Stores committed before the cache existed have the size in info.json.
        """
        d = self.layer_dir(chain_id)
        try:
            return int((d / _USAGE_FILE).read_bytes())
        except (FileNotFoundError, ValueError):
            pass  # not measured yet (or a torn cache file: measure again)
        size = self._info(chain_id).get("size")  # also: StoreError if not committed
        if isinstance(size, int):
            return size
        n = tree_usage(self.fs_path(chain_id))
        # A cache: no fsync (a torn file reads as not measured); a concurrent remove may have
        # renamed the layer away meanwhile, which only loses the cache.
        with contextlib.suppress(OSError):
            write_file_atomic(d / _USAGE_FILE, str(n).encode(), sync=False)
        return n

    def chain(self, chain_id: Digest | None) -> builtins.list[Digest]:
        """``chain_id`` and its ancestors, top first."""
        out: builtins.list[Digest] = []
        cur = chain_id
        while cur is not None:
            if len(out) > 4096:
                raise StoreError(f"snapshot {chain_id}: parent chain is cyclic or too deep")
            out.append(cur)
            cur = self.parent(cur)
        return out

    def list(self) -> list[Digest]:
        out: list[Digest] = []
        for name in sorted(os.listdir(self.layers_dir)):
            try:
                out.append(parse_digest(f"sha256:{name}"))
            except FastdistError:
                continue
        return out

    # --- staging and commit -------------------------------------------------------------------
    def _new_staging(self, chain_id: Digest, parent: Digest | None) -> Staging:
        _hex(chain_id)
        if parent is not None:
            _hex(parent)
        while True:
            name = f"{int(time.time())}-{os.urandom(8).hex()}"
            lock = FileLock(self.staging_dir / f"{name}.lock")
            lock.acquire()
            d = self.staging_dir / name
            try:
                d.mkdir(mode=0o700)
            except FileExistsError:
                lock.release(unlink=True)
                continue
            return Staging(chain_id, parent, d, d / "fs", lock)

    @abstractmethod
    def prepare_layer(self, chain_id: Digest, parent: Digest | None) -> Staging:
        """A staging directory (``Staging.path``) to unpack the layer ``chain_id`` into."""

    def seal(self, staging: Staging) -> None:
        """Make a complete staging dir durable, ready for ``commit``: write its info.json and
        manifest, then ``syncfs`` (shared with the other layers sealing at the same time, see
        ``store.syncfs``). Needs no lock and not the parent, so layers seal in parallel while
        they wait for their parents; the commit after it is only a rename. Idempotent."""
        if staging.sealed:
            return
        chain_id = staging.chain_id
        if not staging.path.is_dir():
            raise StoreError(f"cannot commit snapshot {chain_id}: staging was removed")
        # No "size": usage() measures it when asked (see there).
        info: dict[str, object] = {
            "chain_id": chain_id,
            "parent": staging.parent,
            "created": time.time(),
        }
        info.update(self._commit_info())
        try:
            # New names in a private directory that only a rename makes visible: no temp file,
            # no fsync each; the syncfs below covers them with the tree.
            if staging.manifest is not None:
                write_new_file(staging.dir / MANIFEST_FILE, staging.manifest)
            write_new_file(staging.dir / "info.json", json.dumps(info).encode())
        except OSError as e:
            raise StoreError(f"cannot commit snapshot {chain_id}: {e.strerror}") from e
        if self.sync:
            syncfs(staging.dir)  # the files must be on disk before the rename is
        staging.info = info
        staging.sealed = True

    def commit(self, staging: Staging, *, durable: bool = True) -> None:
        """Rename a complete staging dir into ``layers/``; already committed means success.

        Seals it first if the caller did not (``seal``). ``durable=False`` skips the fsync of
        ``layers/`` that makes the rename itself survive a power loss: a caller committing many
        layers calls ``flush`` once before it records anything that relies on them (the layer is
        complete and durable either way; only its name may be lost, and then it is unpacked
        again)."""
        chain_id = staging.chain_id
        with self.lock(chain_id):
            if self.exists(chain_id):
                log.debug("snapshot %s already committed; dropping our staging", chain_id)
                self.abort(staging)
                return
            if staging.parent is not None and not self.exists(staging.parent):
                raise StoreError(
                    f"cannot commit snapshot {chain_id}: parent {staging.parent} is not committed"
                )
            self.seal(staging)
            try:
                os.rename(staging.dir, self.layer_dir(chain_id))
                if durable:
                    fsync_dir(self.layers_dir)
            except OSError as e:
                raise StoreError(f"cannot commit snapshot {chain_id}: {e.strerror}") from e
            self._after_commit(chain_id, staging.info)
        staging._lock.release(unlink=True)
        log.debug("committed snapshot %s (%s)", chain_id, self.name)

    def flush(self) -> None:
        """Make every rename into ``layers/`` so far durable (one directory fsync), those of
        ``commit(durable=False)`` and those of other processes whose layers a pull found
        committed and relies on."""
        try:
            fsync_dir(self.layers_dir)
        except OSError as e:
            raise StoreError(f"cannot sync {self.layers_dir}: {e.strerror}") from e

    def _commit_info(self) -> dict[str, object]:
        return {}

    def _after_commit(self, chain_id: Digest, info: dict[str, object] | None) -> None:
        return None

    def abort(self, staging: Staging) -> None:
        """Remove a staging directory (any permissions inside) and release it."""
        try:
            rmtree(staging.dir)
        except OSError as e:
            raise StoreError(f"cannot remove staging {staging.dir}: {e.strerror}") from e
        finally:
            if not staging.dir.exists():
                staging._lock.release(unlink=True)

    def remove(self, chain_id: Digest) -> None:
        """Remove a committed layer (the caller ensures nothing uses it or its children)."""
        with self.lock(chain_id):
            src = self.layer_dir(chain_id)
            if not src.is_dir():
                return
            self._before_remove(chain_id)
            trash = self.staging_dir / f".rm-{os.urandom(8).hex()}"
            os.rename(src, trash)  # disappears atomically, then deleted at leisure
            fsync_dir(self.layers_dir)
        rmtree(trash)

    def _before_remove(self, chain_id: Digest) -> None:
        return None

    def staging_leftovers(self) -> builtins.list[Path]:
        """Staging dirs whose owner is gone (crashed unpacks, interrupted removals)."""
        out: builtins.list[Path] = []
        for name in os.listdir(self.staging_dir):
            p = self.staging_dir / name
            if name.endswith(".lock"):
                if not (self.staging_dir / name[: -len(".lock")]).exists():
                    lock = FileLock(p)
                    if lock.acquire(blocking=False):
                        lock.release(unlink=True)
                continue
            if name.startswith(".rm-"):
                out.append(p)
                continue
            lock = FileLock(self.staging_dir / f"{name}.lock")
            if lock.acquire(blocking=False):
                lock.release()
                out.append(p)
        return out

    def sweep_staging(self) -> int:
        """Delete the leftovers of interrupted unpacks; returns how many were removed."""
        n = 0
        for p in self.staging_leftovers():
            lock = FileLock(p.with_name(p.name + ".lock"))
            if not p.name.startswith(".rm-") and not lock.acquire(blocking=False):
                continue  # an owner appeared meanwhile (a new staging with a reused name)
            try:
                rmtree(p)
                n += 1
            finally:
                lock.release(unlink=True)
        self._sweep_extra()
        return n

    def _sweep_extra(self) -> None:
        return None

    # --- active snapshots ---------------------------------------------------------------------
    def active_path(self, key: str) -> Path:
        return self.active_dir / _check_key(key)

    @abstractmethod
    def prepare_active(self, key: str, parent: Digest | None) -> ActiveSnapshot:
        """A writable snapshot for a container on top of the committed ``parent``."""

    def get_active(self, key: str) -> ActiveSnapshot:
        d = self.active_path(key)
        try:
            info = json.loads((d / "info.json").read_bytes())
        except FileNotFoundError:
            raise StoreError(f"active snapshot {key!r} does not exist ({self.name})") from None
        p = info.get("parent")
        return ActiveSnapshot(key, parse_digest(p) if p else None, d)

    def list_active(self) -> builtins.list[str]:
        return sorted(n for n in os.listdir(self.active_dir) if _KEY_RE.fullmatch(n))

    def _new_active(self, key: str, parent: Digest | None) -> Path:
        d = self.active_path(key)
        if parent is not None and not self.exists(parent):
            raise StoreError(f"cannot prepare {key!r}: snapshot {parent} is not committed")
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            raise StoreError(f"active snapshot {key!r} already exists ({self.name})") from None
        return d

    def _write_active_info(self, d: Path, key: str, parent: Digest | None) -> None:
        write_file_atomic(
            d / "info.json",
            json.dumps({"key": key, "parent": parent, "created": time.time()}).encode(),
        )

    @abstractmethod
    def mount(self, active: ActiveSnapshot, target: Path, readonly: bool = False) -> None:
        """Mount the snapshot's root filesystem on ``target``."""

    def unmount(self, target: Path) -> None:
        """Unmount ``target``; a busy mount is detached lazily; not mounted is fine."""
        t = os.fsencode(str(target))
        if _umount2(t, 0) == 0:
            return
        err = _errno()
        if err in (errno.EINVAL, errno.ENOENT):
            return  # not a mount point (any more)
        if err == errno.EBUSY and _umount2(t, _MNT_DETACH) == 0:
            return
        err = _errno()
        raise StoreError(f"cannot unmount {target}: {os.strerror(err)}")

    def remove_active(self, key: str) -> None:
        """Delete a container's snapshot (the caller unmounted it)."""
        rmtree(self.active_path(key))


def _errno() -> int:
    import ctypes

    return ctypes.get_errno()


def _umount2(target: bytes, flags: int) -> int:
    import ctypes

    ctypes.set_errno(0)
    rc: int = libc().umount2(ctypes.c_char_p(target), ctypes.c_int(flags))
    return rc


def _run(argv: list[str], what: str, cwd: Path | None = None) -> None:
    import subprocess

    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as e:
        raise StoreError(f"{what}: cannot run {argv[0]}: {e.strerror}") from e
    if proc.returncode != 0:
        raise StoreError(
            f"{what}: {argv[0]} exited {proc.returncode}: {proc.stderr.strip()[-500:]}"
        )


def _copy_tree(src: Path, dst: Path, what: str) -> None:
    # cp -a keeps hardlinks, owners, modes, times, xattrs, devices; reflinks where the fs can.
    _run(["cp", "-a", "--reflink=auto", "--", str(src), str(dst)], what)


class OverlaySnapshotter(Snapshotter):
    """Each layer is its own directory (overlay whiteouts); containers mount them with overlayfs.

    Layers are independent, so they unpack in parallel; only commits go in layer order.
    """

    name = "overlayfs"
    apply_mode = "layer"

    def __init__(self, root: Path, *, sync: bool = True) -> None:
        super().__init__(root, sync=sync)
        self.links_dir = self._check_beneath("l", create=True)

    def prepare_layer(self, chain_id: Digest, parent: Digest | None) -> Staging:
        s = self._new_staging(chain_id, parent)
        s.path.mkdir(mode=0o755)
        return s

    def _commit_info(self) -> dict[str, object]:
        return {"link": os.urandom(5).hex()}

    def _after_commit(self, chain_id: Digest, info: dict[str, object] | None) -> None:
        self._ensure_link(chain_id, info)

    def _ensure_link(self, chain_id: Digest, info: dict[str, object] | None = None) -> str:
        info = info if info is not None else self._info(chain_id)
        link = info.get("link")
        if not isinstance(link, str) or not _LINK_RE.fullmatch(link):
            raise StoreError(f"snapshot {chain_id}: info.json has no valid link id")
        path = self.links_dir / link
        target = f"../layers/{_hex(chain_id)}/fs"
        try:
            os.symlink(target, path)
        except FileExistsError:
            if os.readlink(path) != target:
                raise StoreError(f"snapshot {chain_id}: link {link} points elsewhere") from None
        self.trusted_fs_path(chain_id)  # the link's target: a real directory, never followed out
        return link

    def _before_remove(self, chain_id: Digest) -> None:
        link = self._info(chain_id).get("link")
        if isinstance(link, str) and _LINK_RE.fullmatch(link):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.links_dir / link)

    def _sweep_extra(self) -> None:
        for name in os.listdir(self.links_dir):
            p = self.links_dir / name
            if p.is_symlink() and not p.exists():
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()

    def prepare_active(self, key: str, parent: Digest | None) -> ActiveSnapshot:
        d = self._new_active(key, parent)
        try:
            (d / "upper").mkdir(mode=0o755)
            (d / "work").mkdir(mode=0o700)
            if parent is None:
                (d / "lower").mkdir(mode=0o755)  # overlay needs a lowerdir
            self._write_active_info(d, key, parent)
        except BaseException:
            rmtree(d)
            raise
        return ActiveSnapshot(key, parent, d)

    def mount_options(self, active: ActiveSnapshot, readonly: bool = False) -> str:
        """The overlay data string, with paths relative to ``self.root`` (the mount's cwd)."""
        rel = f"active/{_check_key(active.key)}"
        for sub in ("upper", "work") if not readonly else ("upper",):
            self._check_beneath(f"{rel}/{sub}")
        lowers = [f"l/{self._ensure_link(c)}" for c in self.chain(active.parent)]
        if not lowers:
            lowers = [f"{rel}/lower"]
            self._check_beneath(lowers[0])
        if readonly:
            opts = f"lowerdir={':'.join([f'{rel}/upper', *lowers])}"
        else:
            opts = f"lowerdir={':'.join(lowers)},upperdir={rel}/upper,workdir={rel}/work"
        if len(opts) > _MOUNT_DATA_MAX:
            raise StoreError(
                f"cannot mount {active.key!r}: {len(lowers)} layers exceed the overlay option limit"
            )
        return opts

    def mount(self, active: ActiveSnapshot, target: Path, readonly: bool = False) -> None:
        opts = self.mount_options(active, readonly)
        argv = ["mount", "-t", "overlay", "overlay", "-o", opts, str(Path(target).absolute())]
        _run(argv, f"cannot mount snapshot {active.key!r} on {target}", cwd=self.root)


class NativeSnapshotter(Snapshotter):
    """Plain directories: each committed layer is a full copy of the flattened tree.

    Works on any filesystem and without overlayfs, at the cost of copying the parent for every
    layer (reflinks make that cheap on btrfs/xfs). Layers must be applied in order.
    """

    name = "native"
    apply_mode = "flatten"

    def prepare_layer(self, chain_id: Digest, parent: Digest | None) -> Staging:
        if parent is not None and not self.exists(parent):
            raise StoreError(
                f"cannot prepare snapshot {chain_id}: parent {parent} is not committed",
                hint="the native snapshotter applies layers in order",
            )
        s = self._new_staging(chain_id, parent)
        try:
            if parent is None:
                s.path.mkdir(mode=0o755)
            else:
                _copy_tree(self.trusted_fs_path(parent), s.path, f"cannot copy snapshot {parent}")
        except BaseException:
            self.abort(s)
            raise
        return s

    def prepare_active(self, key: str, parent: Digest | None) -> ActiveSnapshot:
        d = self._new_active(key, parent)
        try:
            if parent is None:
                (d / "fs").mkdir(mode=0o755)
            else:
                _copy_tree(self.trusted_fs_path(parent), d / "fs", f"cannot copy snapshot {parent}")
            self._write_active_info(d, key, parent)
        except BaseException:
            rmtree(d)
            raise
        return ActiveSnapshot(key, parent, d)

    def mount(self, active: ActiveSnapshot, target: Path, readonly: bool = False) -> None:
        opts = "bind,ro" if readonly else "bind"
        source = self._check_beneath(f"active/{_check_key(active.key)}/fs")
        argv = ["mount", "-o", opts, str(source), str(Path(target).absolute())]
        _run(argv, f"cannot mount snapshot {active.key!r} on {target}")


SNAPSHOTTERS: dict[str, type[Snapshotter]] = {
    OverlaySnapshotter.name: OverlaySnapshotter,
    NativeSnapshotter.name: NativeSnapshotter,
}
_probed: dict[str, bool] = {}


def snapshotter_by_name(name: str, root: Path) -> Snapshotter:
    """The snapshotter called ``name`` (as recorded for an image) on ``root``."""
    cls = SNAPSHOTTERS.get(name)
    if cls is None:
        raise StoreError(f"unknown snapshotter {name!r}: expected one of {sorted(SNAPSHOTTERS)}")
    return cls(root)


def overlay_supported(root: Path) -> bool:
    """Whether overlayfs can be mounted with its dirs under ``root`` (probed once per root)."""
    key = str(Path(root).resolve())
    if key in _probed:
        return _probed[key]
    # A success is remembered on disk for this kernel and filesystem, so every later fastdist
    # process on the root skips the probe's mount (it costs a subprocess and two mount calls).
    stamp = Path(root) / "snapshots" / ".overlay-ok"
    if os.geteuid() == 0 and Path(root).exists():
        try:
            if stamp.read_text() == _overlay_stamp(root):
                _probed[key] = True
                return True
        except OSError:
            pass
    ok = False
    if os.geteuid() == 0:
        tmp = ensure_dir(ensure_root(Path(root)) / "tmp")
        probe = tmp / f"overlay-probe-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            for sub in ("l1", "l2", "u", "w", "m"):
                ensure_dir(probe / sub)
            (probe / "l1" / "f").write_bytes(b"x")
            opts = (
                f"lowerdir={probe / 'l2'}:{probe / 'l1'},"
                f"upperdir={probe / 'u'},workdir={probe / 'w'}"
            )
            import subprocess

            r = subprocess.run(
                ["mount", "-t", "overlay", "overlay", "-o", opts, str(probe / "m")],
                capture_output=True,
                check=False,
            )
            if r.returncode == 0:
                try:
                    ok = (probe / "m" / "f").read_bytes() == b"x"
                finally:
                    if _umount2(os.fsencode(str(probe / "m")), 0) != 0:
                        _umount2(os.fsencode(str(probe / "m")), _MNT_DETACH)
            else:
                log.debug("overlay probe failed: %s", r.stderr.decode(errors="replace").strip())
        except OSError as e:
            log.debug("overlay probe failed: %s", e)
        finally:
            import shutil

            shutil.rmtree(probe, ignore_errors=True)
    if ok:
        try:
            ensure_dir(stamp.parent)
            write_file_atomic(stamp, _overlay_stamp(root).encode(), sync=False)
        except OSError as e:
            log.debug("cannot record the overlay probe: %s", e)
    _probed[key] = ok
    return ok


def _overlay_stamp(root: Path) -> str:
    return f"{os.uname().release} {os.stat(root).st_dev}\n"


def default_snapshotter(root: Path) -> Snapshotter:
    """overlayfs when running as root and overlay mounts work on ``root``, else native."""
    if overlay_supported(root):
        return OverlaySnapshotter(root)
    return NativeSnapshotter(root)
