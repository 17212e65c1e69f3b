"""Build the pull benchmark's fixture images on disk and push them to a local registry.

Layers are written as files (tar via ``tarfile``, then ``pigz``/``zstd``) and pushed by streaming,
so multi-hundred-MB fixtures never sit in memory. Manifests and configs come from
``fastdist.testing.images.build_image``. A fixture is built once per work directory: the registry
storage and a ``fixtures.json`` catalogue are kept under ``benches/work/`` and reused by later runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import stat
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

from fastdist.oci import Descriptor
from fastdist.testing.images import BuiltLayer, build_image, layer_media_type

log = logging.getLogger("bench.fixtures")

MiB = 1 << 20
MTIME = 1_700_000_000


@dataclass(frozen=True)
class LayerFile:
    """One layer blob on disk with what a manifest and a naive puller need."""

    path: Path
    digest: str
    size: int
    diff_id: str
    media_type: str
    uncompressed: int
    mtime_ns: int  # of the blob file, to notice a rebuild


@dataclass(frozen=True)
class Fixture:
    """A pushed image: ``repo:tag`` on the registry, its layers (bottom first)."""

    name: str  # e.g. "usr-gzip"
    repo: str
    tag: str
    compression: str
    layers: tuple[LayerFile, ...]
    manifest_digest: str

    @property
    def uncompressed(self) -> int:
        return sum(x.uncompressed for x in self.layers)

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "repo": self.repo,
            "tag": self.tag,
            "compression": self.compression,
            "manifest_digest": self.manifest_digest,
            "layers": [
                {
                    "path": str(x.path),
                    "digest": x.digest,
                    "size": x.size,
                    "diff_id": x.diff_id,
                    "media_type": x.media_type,
                    "uncompressed": x.uncompressed,
                    "mtime_ns": x.mtime_ns,
                }
                for x in self.layers
            ],
        }

    @classmethod
    def from_json(cls, d: dict[str, object]) -> Fixture:
        layers = tuple(
            LayerFile(
                Path(x["path"]),
                x["digest"],
                x["size"],
                x["diff_id"],
                x["media_type"],
                x["uncompressed"],
                x.get("mtime_ns", 0),
            )
            for x in d["layers"]  # type: ignore[attr-defined]
        )
        return cls(
            str(d["name"]),
            str(d["repo"]),
            str(d["tag"]),
            str(d["compression"]),
            layers,
            str(d["manifest_digest"]),
        )


# ---------------------------------------------------------------------------------------------
# Tar writers: each yields (path-in-layer, TarInfo, data-or-file) into a streaming tar file.


def _info(
    name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, mode: int = 0o644
) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.size = size
    ti.mode = mode
    ti.mtime = MTIME
    ti.uname = ti.gname = ""
    return ti


class _Writer:
    """A PAX tar file written incrementally."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tf = tarfile.open(path, "w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        self._dirs: set[str] = set()

    def dir(self, name: str, mode: int = 0o755) -> None:
        name = name.strip("/")
        if not name or name in self._dirs:
            return
        parent = name.rpartition("/")[0]
        if parent:
            self.dir(parent)
        self._dirs.add(name)
        self._tf.addfile(_info(name, tarfile.DIRTYPE, mode=mode))

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self.dir(name.rpartition("/")[0])
        self._tf.addfile(_info(name, size=len(data), mode=mode), _BytesReader(data))

    def big_file(self, name: str, size: int, chunk: Callable[[int], bytes]) -> None:
        """A ``size``-byte file whose content is produced ``chunk(n)`` at a time."""
        self.dir(name.rpartition("/")[0])
        self._tf.addfile(_info(name, size=size), _ChunkReader(size, chunk))

    def host_tree(self, root: Path, cap: int, max_file: int = 8 * MiB) -> int:
        """Add host files under ``root`` (sorted walk, hardlinks kept) until ``cap`` bytes.

        Files over ``max_file`` and host-specific trees (debug symbols, cloud SDKs) are skipped so
        the layer looks like a distribution's: many small files, a few large libraries.
        """
        total = 0
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
            self.dir(os.path.relpath(dirpath, "/"))
            for fn in sorted(filenames):
                p = os.path.join(dirpath, fn)
                try:
                    st = os.lstat(p)
                except OSError:
                    continue
                if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                    continue
                if st.st_size > max_file and stat.S_ISREG(st.st_mode):
                    continue
                ti = self._tf.gettarinfo(p, arcname=os.path.relpath(p, "/"))
                ti.uname = ti.gname = ""
                if ti.isreg():
                    try:
                        with open(p, "rb") as f:
                            self._tf.addfile(ti, f)
                    except OSError:
                        continue
                    total += ti.size
                else:
                    self._tf.addfile(ti)
                if total >= cap:
                    return total
        return total

    def close(self) -> None:
        self._tf.close()


_SKIP_DIRS = {"debug", "google-cloud-sdk", "rustlib", "llvm-14", "llvm-15", "llvm-16"}


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n < 0 else self._pos + n
        out = bytes(self._data[self._pos : end])
        self._pos += len(out)
        return out


class _ChunkReader:
    def __init__(self, size: int, chunk: Callable[[int], bytes]) -> None:
        self._left = size
        self._chunk = chunk

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        out = self._chunk(n) if n else b""
        self._left -= len(out)
        return out


# ---------------------------------------------------------------------------------------------
# Content generators (deterministic).

_WORDS = (
    b"the of and to in is for that with on as by be this are from or at which it an not "
    b"container image layer digest registry manifest config snapshot overlay tar gzip zstd "
    b"lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor\n"
).split(b" ")


def _text(rng: random.Random, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        out += b" ".join(rng.choices(_WORDS, k=64)) + b"\n"
    return bytes(out[:n])


def _text_chunks(seed: int) -> Callable[[int], bytes]:
    rng = random.Random(seed)
    pool = [_text(rng, 256 * 1024) for _ in range(16)]  # text-like, compresses ~3-4x

    def chunk(n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            block = pool[rng.randrange(len(pool))]
            start = rng.randrange(len(block) // 2)
            out += block[start : start + (n - len(out))]
        return bytes(out)

    return chunk


def _random_chunks(seed: int) -> Callable[[int], bytes]:
    rng = random.Random(seed)
    return rng.randbytes


def _zero_chunks(n: int) -> bytes:
    return bytes(n)


# ---------------------------------------------------------------------------------------------
# Fixture layer recipes: name → list of layer writers (bottom first).

LayerRecipe = Callable[[_Writer], None]


def _usr(cap: int) -> LayerRecipe:
    def write(w: _Writer) -> None:
        got = w.host_tree(Path("/usr/lib"), cap * 3 // 5)
        got += w.host_tree(Path("/usr/share"), cap - got)
        log.info("usr layer: %d MB of host files", got // MiB)

    return write


def _small_files(count: int, seed: int, prefix: str = "data") -> LayerRecipe:
    def write(w: _Writer) -> None:
        rng = random.Random(seed)
        for i in range(count):
            d = f"{prefix}/d{i % 97:02d}/s{(i // 97) % 13:02d}"
            size = int(rng.lognormvariate(7.5, 1.0)) % (64 * 1024)  # median ~1.8 kB
            w.file(f"{d}/f{i:05d}.txt", _text(rng, size), mode=0o755 if i % 10 == 0 else 0o644)

    return write


def _big_files(kinds: list[str], seed: int, size: int) -> LayerRecipe:
    def write(w: _Writer) -> None:
        for i, kind in enumerate(kinds):
            gen = {
                "random": _random_chunks(seed + i),
                "zeros": _zero_chunks,
                "text": _text_chunks(seed + i),
            }[kind]
            w.big_file(f"big/{kind}-{seed}-{i}.bin", size, gen)

    return write


def _whiteout_layers() -> list[LayerRecipe]:
    def base(w: _Writer) -> None:
        _small_files(6000, 11, "app")(w)
        _small_files(2000, 12, "cache")(w)
        _big_files(["text"], 13, 32 * MiB)(w)

    def second(w: _Writer) -> None:
        # layer.md#whiteouts: delete files and a directory, make cache/ opaque, add new files.
        for i in range(0, 6000, 7):
            d = f"app/d{i % 97:02d}/s{(i // 97) % 13:02d}"
            w.file(f"{d}/.wh.f{i:05d}.txt", b"")
        w.file("app/d05/.wh.s03", b"")
        w.file("cache/.wh..wh..opq", b"")
        _small_files(1500, 21, "cache")(w)
        _small_files(1500, 22, "app2")(w)

    def third(w: _Writer) -> None:
        w.file(".wh.app2", b"")
        w.file("big/.wh.text-13-0.bin", b"")
        _small_files(2000, 31, "app")(w)  # re-creates some deleted names
        _big_files(["text"], 33, 16 * MiB)(w)

    return [base, second, third]


def _app_layer(i: int) -> LayerRecipe:
    """One layer of a podman-built application image (``RUN``/``COPY`` steps): a few KB to a few
    hundred KB compressed. The mix (by ``i``): config files, a handful of compiled modules
    (random bytes, incompressible), a package's small text files, a binary or two."""

    def write(w: _Writer) -> None:
        rng = random.Random(1000 + i)
        kind = i % 4
        if kind == 0:  # an ENV/COPY of config: a few small files
            for j in range(rng.randint(1, 4)):
                w.file(f"etc/app/step{i:02d}-{j}.conf", _text(rng, rng.randint(200, 6000)))
        elif kind == 1:  # compiled modules
            for j in range(rng.randint(2, 8)):
                size = int(rng.lognormvariate(10.0, 0.8))  # median ~22 kB
                w.file(f"usr/lib/app/mod{i:02d}_{j}.so", rng.randbytes(size), mode=0o755)
        elif kind == 2:  # a package's sources / data: many small text files
            for j in range(rng.randint(20, 200)):
                size = int(rng.lognormvariate(7.5, 1.0)) % (64 * 1024)
                w.file(f"srv/app/pkg{i:02d}/f{j:03d}.py", _text(rng, size))
        else:  # a binary
            size = rng.randint(40 * 1024, 400 * 1024)
            w.file(f"usr/local/bin/tool{i:02d}", rng.randbytes(size), mode=0o755)

    return write


MANY_LAYERS = 36


def recipes(scale: float) -> dict[str, list[LayerRecipe]]:
    """Each fixture's layers; ``scale`` < 1 shrinks everything (for smoke runs)."""
    big = max(1 * MiB, int(128 * MiB * scale))
    return {
        "usr": [_usr(int(400 * MiB * scale))],
        "small-files": [_small_files(max(100, int(20000 * scale)), 1)],
        # 8 x 128 MB = 1 GiB uncompressed, in two layers: what the RSS target talks about.
        "big-files": [
            _big_files(["random", "text", "zeros", "text"], 100, big),
            _big_files(["random", "text", "zeros", "random"], 200, big),
        ],
        "whiteouts": _whiteout_layers() if scale >= 0.5 else [_small_files(300, 5)] * 3,
        # 36 small layers, as a podman-built application image has (issue 18).
        "many-layers": [_app_layer(i) for i in range(MANY_LAYERS)],
        # usr's layer + one small layer on top: the "base layers already present" case.
        "usr-app": [
            _usr(int(400 * MiB * scale)),
            _small_files(max(100, int(3000 * scale)), 77, "opt/app"),
        ],
    }


# ---------------------------------------------------------------------------------------------
# Building and pushing.


def _sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
            n += len(chunk)
    return "sha256:" + h.hexdigest(), n


def build_layer_file(recipe: LayerRecipe, tar_path: Path, compression: str) -> LayerFile:
    """Write the layer's tar (kept, shared between compressions) and its compressed blob."""
    if not tar_path.exists():
        tmp = tar_path.with_suffix(".partial")
        w = _Writer(tmp)
        recipe(w)
        w.close()
        tmp.rename(tar_path)
    blob = tar_path.with_suffix({"gzip": ".tar.gz", "zstd": ".tar.zst"}[compression])
    if not blob.exists():
        cmd = (
            ["pigz", "-6", "-n", "-c"]
            if compression == "gzip"
            else ["zstd", "-3", "-T0", "-q", "-c"]
        )
        tmp = blob.with_suffix(".partial")
        with open(tar_path, "rb") as src, open(tmp, "wb") as dst:
            subprocess.run([*cmd, "-"], stdin=src, stdout=dst, check=True)
        tmp.rename(blob)
    diff_id, raw_size = _sha256_file(tar_path)
    digest, size = _sha256_file(blob)
    media_type = layer_media_type("oci", compression)  # type: ignore[arg-type]
    return LayerFile(blob, digest, size, diff_id, media_type, raw_size, blob.stat().st_mtime_ns)


class StreamingPusher:
    """Pushes blobs from files (monolithic upload, distribution-spec #pushing-a-blob-monolithically)
    and manifests to a plain-HTTP loopback registry."""

    def __init__(self, host: str) -> None:
        self.base = f"http://{host}/v2"
        self.s = requests.Session()

    def blob(self, repo: str, digest: str, size: int, body: bytes | Path) -> None:
        if self.s.head(f"{self.base}/{repo}/blobs/{digest}", timeout=30).status_code == 200:
            return
        r = self.s.post(f"{self.base}/{repo}/blobs/uploads/", timeout=30)
        r.raise_for_status()
        loc = r.headers["Location"]
        if loc.startswith("/"):
            loc = self.base[: -len("/v2")] + loc
        sep = "&" if "?" in loc else "?"
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        if isinstance(body, Path):
            with open(body, "rb") as f:
                r = self.s.put(f"{loc}{sep}digest={digest}", data=f, headers=headers, timeout=600)
        else:
            r = self.s.put(f"{loc}{sep}digest={digest}", data=body, headers=headers, timeout=600)
        r.raise_for_status()

    def manifest(self, repo: str, tag: str, body: bytes, media_type: str) -> None:
        r = self.s.put(
            f"{self.base}/{repo}/manifests/{tag}",
            data=body,
            headers={"Content-Type": media_type},
            timeout=60,
        )
        r.raise_for_status()


def build_and_push(
    name: str, layers: list[LayerRecipe], compression: str, work: Path, pusher: StreamingPusher
) -> Fixture:
    layer_dir = work / "layers"
    layer_dir.mkdir(parents=True, exist_ok=True)
    built: list[LayerFile] = []
    for i, recipe in enumerate(layers):
        # usr-app shares usr's bottom layer file, so its blob is byte-identical (same digest).
        base = "usr" if name == "usr-app" and i == 0 else name
        built.append(build_layer_file(recipe, layer_dir / f"{base}-{i}.tar", compression))
    repo, tag = f"bench/{name}", compression
    image = build_image(
        [
            BuiltLayer(Descriptor(x.media_type, x.digest, x.size), x.diff_id, b"")  # type: ignore[arg-type]
            for x in built
        ],
        cmd=["/bin/sh"],
    )
    for x in built:
        pusher.blob(repo, x.digest, x.size, x.path)
    pusher.blob(repo, image.config_descriptor.digest, len(image.config), image.config)
    pusher.manifest(repo, tag, image.manifest, image.descriptor.media_type)
    fx = Fixture(
        f"{name}-{compression}", repo, tag, compression, tuple(built), image.descriptor.digest
    )
    log.info(
        "fixture %s: %d layers, %.0f MB compressed",
        fx.name,
        len(built),
        sum(x.size for x in built) / MiB,
    )
    return fx


def ensure_fixtures(
    names: list[str], compressions: list[str], work: Path, host: str, scale: float
) -> dict[str, Fixture]:
    """Build and push what the catalogue lacks; return every requested fixture by name."""
    catalogue_path = work / "fixtures.json"
    catalogue: dict[str, dict[str, object]] = {}
    if catalogue_path.exists():
        catalogue = json.loads(catalogue_path.read_text())
    if catalogue.get("_scale") != scale:  # type: ignore[comparison-overlap]
        catalogue = {"_scale": scale}  # type: ignore[dict-item]
    pusher = StreamingPusher(host)
    all_recipes = recipes(scale)
    out: dict[str, Fixture] = {}
    for name in names:
        for comp in compressions:
            key = f"{name}-{comp}"
            if key in catalogue and _present(pusher, Fixture.from_json(catalogue[key])):
                out[key] = Fixture.from_json(catalogue[key])
                continue
            out[key] = build_and_push(name, all_recipes[name], comp, work, pusher)
            catalogue[key] = out[key].to_json()
            catalogue_path.write_text(json.dumps(catalogue, indent=1))
    return out


def _present(pusher: StreamingPusher, fx: Fixture) -> bool:
    r = pusher.s.head(
        f"{pusher.base}/{fx.repo}/manifests/{fx.tag}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        timeout=30,
    )
    # A rebuilt layer file (e.g. usr's, shared by usr-app) invalidates every fixture that used it.
    return r.status_code == 200 and all(
        x.path.exists() and x.path.stat().st_mtime_ns == x.mtime_ns for x in fx.layers
    )
