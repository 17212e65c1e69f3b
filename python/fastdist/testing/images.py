"""Build OCI/Docker images from file trees or entry lists, and push them with fastdist's own client.

Layers are real tar streams (Python's ``tarfile``, PAX format, numeric owners), compressed with gzip
(in process) or zstd (the ``zstd`` tool), so tests exercise exactly what registries serve.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .. import oci
from ..errors import FastdistError
from ..oci import Descriptor, Digest, Platform, sha256_digest

Compression = Literal["gzip", "zstd", "none"]
Flavor = Literal["oci", "docker"]
EntryType = Literal["file", "dir", "symlink", "hardlink", "char", "block", "fifo"]


@dataclass(frozen=True)
class Entry:
    """One tar entry of a layer built in a test (``path`` relative, no leading slash)."""

    path: str
    type: EntryType = "file"
    data: bytes = b""
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    target: str = ""  # link target for symlink/hardlink
    mtime: float = 1_700_000_000
    devmajor: int = 0
    devminor: int = 0
    xattrs: Mapping[str, str] = field(default_factory=dict)


def File(path: str, data: bytes | str = b"", mode: int = 0o644, **kw: object) -> Entry:
    raw = data.encode() if isinstance(data, str) else data
    return Entry(path, "file", raw, mode, **kw)  # type: ignore[arg-type]


def Dir(path: str, mode: int = 0o755, **kw: object) -> Entry:
    return Entry(path, "dir", mode=mode, **kw)  # type: ignore[arg-type]


def Symlink(path: str, target: str, **kw: object) -> Entry:
    return Entry(path, "symlink", target=target, mode=0o777, **kw)  # type: ignore[arg-type]


def Hardlink(path: str, target: str, **kw: object) -> Entry:
    return Entry(path, "hardlink", target=target, **kw)  # type: ignore[arg-type]


def Whiteout(path: str) -> Entry:
    """Delete ``path`` from lower layers (image-spec layer.md#whiteouts)."""
    parent, _, name = path.rstrip("/").rpartition("/")
    return File(f"{parent}/.wh.{name}" if parent else f".wh.{name}")


def Opaque(directory: str) -> Entry:
    """Hide everything lower layers put in ``directory`` (layer.md#opaque-whiteout)."""
    return File(f"{directory.rstrip('/')}/.wh..wh..opq")


_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def tar_entries(entries: Iterable[Entry]) -> bytes:
    """A PAX tar stream of ``entries`` in the given order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            ti = tarfile.TarInfo(e.path)
            ti.type = _TYPES[e.type]
            ti.uid, ti.gid, ti.mtime = e.uid, e.gid, e.mtime
            ti.uname = ti.gname = ""
            default_mode = 0o755 if e.type == "dir" else 0o644
            ti.mode = e.mode if e.mode is not None else default_mode
            ti.linkname = e.target
            ti.devmajor, ti.devminor = e.devmajor, e.devminor
            if e.xattrs:
                ti.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in e.xattrs.items()}
            if e.type == "file":
                ti.size = len(e.data)
                tf.addfile(ti, io.BytesIO(e.data))
            else:
                tf.addfile(ti)
    return buf.getvalue()


def tar_tree(root: Path) -> bytes:
    """A PAX tar stream of the tree under ``root`` (sorted, numeric owners, hardlinks kept)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        paths = sorted(p for p in root.rglob("*"))
        for p in paths:
            rel = p.relative_to(root).as_posix()
            ti = tf.gettarinfo(str(p), arcname=rel)
            ti.uname = ti.gname = ""
            if ti.isreg():
                with open(p, "rb") as f:
                    tf.addfile(ti, f)
            else:
                tf.addfile(ti)
    return buf.getvalue()


def compress(data: bytes, compression: Compression) -> bytes:
    """Compress a tar stream the way registries serve it."""
    if compression == "none":
        return data
    if compression == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if shutil.which("zstd") is None:
        raise FastdistError("zstd not found on PATH", hint="apt-get install zstd")
    return subprocess.run(
        ["zstd", "-q", "-c", "-3", "-T0"], input=data, stdout=subprocess.PIPE, check=True
    ).stdout


def layer_media_type(flavor: Flavor, compression: Compression) -> str:
    if flavor == "docker":
        if compression != "gzip":
            raise ValueError("Docker schema 2 layers are gzip only")
        return oci.DOCKER_LAYER_GZIP
    return {"gzip": oci.OCI_LAYER_GZIP, "zstd": oci.OCI_LAYER_ZSTD, "none": oci.OCI_LAYER}[
        compression
    ]


@dataclass(frozen=True)
class BuiltLayer:
    descriptor: Descriptor
    diff_id: Digest
    blob: bytes


@dataclass(frozen=True)
class BuiltImage:
    """A complete single-platform image: its manifest, config and layer blobs."""

    manifest: bytes
    descriptor: Descriptor  # of the manifest
    config: bytes
    config_descriptor: Descriptor
    layers: tuple[BuiltLayer, ...]

    def blobs(self) -> dict[Digest, bytes]:
        out = {layer.descriptor.digest: layer.blob for layer in self.layers}
        out[self.config_descriptor.digest] = self.config
        return out


@dataclass(frozen=True)
class BuiltIndex:
    index: bytes
    descriptor: Descriptor
    images: tuple[BuiltImage, ...]


def build_layer(
    content: bytes, compression: Compression = "gzip", flavor: Flavor = "oci"
) -> BuiltLayer:
    """A layer blob from an uncompressed tar stream ``content``."""
    blob = compress(content, compression)
    desc = Descriptor(layer_media_type(flavor, compression), sha256_digest(blob), len(blob))
    return BuiltLayer(desc, sha256_digest(content), blob)


def build_image(
    layers: Sequence[BuiltLayer],
    *,
    flavor: Flavor = "oci",
    platform: Platform | None = None,
    entrypoint: Sequence[str] | None = None,
    cmd: Sequence[str] | None = None,
    env: Sequence[str] | None = None,
    working_dir: str | None = None,
    user: str | None = None,
    volumes: Sequence[str] = (),
    labels: Mapping[str, str] | None = None,
    diff_ids: Sequence[str] | None = None,
) -> BuiltImage:
    """Config + manifest for ``layers``; ``diff_ids`` overrides the config's (for bad images)."""
    plat = platform or Platform.host()
    container: dict[str, object] = {}
    if entrypoint is not None:
        container["Entrypoint"] = list(entrypoint)
    if cmd is not None:
        container["Cmd"] = list(cmd)
    if env is not None:
        container["Env"] = list(env)
    if working_dir:
        container["WorkingDir"] = working_dir
    if user:
        container["User"] = user
    if volumes:
        container["Volumes"] = {v: {} for v in volumes}
    if labels:
        container["Labels"] = dict(labels)
    cfg: dict[str, object] = {
        "architecture": plat.architecture,
        "os": plat.os,
        "created": "2026-01-01T00:00:00Z",
        "config": container,
        "rootfs": {
            "type": "layers",
            "diff_ids": list(diff_ids) if diff_ids is not None else [x.diff_id for x in layers],
        },
        "history": [{"created_by": "fastdist.testing"} for _ in layers],
    }
    if plat.variant:
        cfg["variant"] = plat.variant
    config = json.dumps(cfg, sort_keys=True).encode()
    config_type = oci.OCI_CONFIG if flavor == "oci" else oci.DOCKER_CONFIG
    config_desc = Descriptor(config_type, sha256_digest(config), len(config))
    manifest_type = oci.OCI_MANIFEST if flavor == "oci" else oci.DOCKER_MANIFEST
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": config_desc.to_json(),
            "layers": [x.descriptor.to_json() for x in layers],
        },
        sort_keys=True,
    ).encode()
    desc = Descriptor(manifest_type, sha256_digest(manifest), len(manifest), platform=plat)
    return BuiltImage(manifest, desc, config, config_desc, tuple(layers))


def build_index(images: Sequence[BuiltImage], flavor: Flavor = "oci") -> BuiltIndex:
    """An index (or Docker manifest list) over per-platform images."""
    media_type = oci.OCI_INDEX if flavor == "oci" else oci.DOCKER_MANIFEST_LIST
    doc = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": [img.descriptor.to_json() for img in images],
        },
        sort_keys=True,
    ).encode()
    return BuiltIndex(doc, Descriptor(media_type, sha256_digest(doc), len(doc)), tuple(images))


def push_image(pusher: object, ref: str, image: BuiltImage | BuiltIndex) -> Digest:
    """Push every blob and manifest of ``image`` to ``ref`` with fastdist's Pusher; returns the
    digest of the top-level document (what ``ref``'s tag now points at)."""
    from ..pusher import Pusher
    from ..reference import Reference

    if not isinstance(pusher, Pusher):
        raise TypeError("pusher must be a fastdist.pusher.Pusher")
    reference = Reference.parse(ref)
    images = image.images if isinstance(image, BuiltIndex) else (image,)
    by_digest = reference.with_digest
    for img in images:
        for digest, blob in img.blobs().items():
            pusher.push_blob(reference, digest, blob)
        if isinstance(image, BuiltIndex):
            pusher.push_manifest(
                by_digest(img.descriptor.digest), img.manifest, img.descriptor.media_type
            )
    top = image.index if isinstance(image, BuiltIndex) else image.manifest
    return pusher.push_manifest(reference, top, image.descriptor.media_type)


def tree_snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """A comparable description of a file tree: type, mode, owner, size, content hash, link
    target and xattrs per relative path (what differential and hostile tests compare)."""
    import hashlib
    import stat

    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            content: object = None
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    content = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(p)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                content = (os.major(st.st_rdev), os.minor(st.st_rdev))
            try:
                names = sorted(os.listxattr(p, follow_symlinks=False))
                xattrs = tuple((n, os.getxattr(p, n, follow_symlinks=False)) for n in names)
            except OSError:
                xattrs = ()
            size = st.st_size if stat.S_ISREG(st.st_mode) else 0
            out[rel] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                size,
                content,
                xattrs,
            )
    return out
