//! Properties the fuzz targets check on every input, shared by the libFuzzer targets
//! (`fuzz_targets/*.rs`), the seed generator and the plain `cargo test` replay (`tests/`).
//!
//! Each `check_*` function takes arbitrary bytes and panics only when a property is broken:
//! the crate panicked, returned an impossible result, or changed something outside the root.
//! A typed `Error` is always an acceptable answer to hostile input.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use fastdist_core::apply::{apply_tar, ApplyOptions, Mode};
use fastdist_core::decompress::Decoder;
use fastdist_core::error::Error;
use fastdist_core::limits::Limits;
use fastdist_core::pipeline::{LayerSpec, LayerWriter, TarStream};
use fastdist_core::tar::{EntryMeta, TarReader};

pub mod tarbuild;

/// Tight limits so that the fuzzer reaches every limit quickly and an input cannot make a run
/// slow or large.
pub fn limits() -> Limits {
    Limits {
        max_entries: 256,
        max_layer_bytes: 4 << 20,
        max_entry_bytes: 1 << 20,
        max_header_bytes: 16 << 10,
        max_path_len: 1024,
        max_path_depth: 24,
        max_ratio: 200,
        ratio_grace_bytes: 256 << 10,
        zstd_window_log_max: 20,
        max_volumes: 16,
    }
}

pub const MEDIA_TYPES: [&str; 3] = [
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
];

// ---- the arena: a root with a sentinel tree beside it -----------------------------------

/// `base/root` is where layers are applied; everything else under `base` is the sentinel,
/// which no input may change. The root is re-created before every run with a "lower layer"
/// holding handles that point out of it (absolute and relative symlinks to the sentinel, a
/// hardlink to a sentinel file), so an input can try to write through them without knowing
/// the arena's path.
pub struct Arena {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    root: PathBuf,
    before: Tree,
    /// (dev, ino) of every sentinel node: none may show up inside a root that started empty.
    inodes: Vec<(u64, u64)>,
}

/// What is compared of one node outside the root (not ctime or nlink: unlinking the in-root
/// hardlink to a sentinel file legitimately changes those).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    content: Vec<u8>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

type Tree = BTreeMap<PathBuf, Node>;

fn xattrs(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut names = vec![0u8; 4096];
    let Ok(n) = rustix::fs::llistxattr(p, &mut names[..]) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let mut v = vec![0u8; 4096];
        if let Ok(l) = rustix::fs::lgetxattr(p, name, &mut v[..]) {
            v.truncate(l);
            out.push((name.to_vec(), v));
        }
    }
    out
}

fn node(p: &Path) -> Node {
    let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("sentinel {p:?} vanished: {e}"));
    let ft = m.file_type();
    let (kind, content) = if ft.is_symlink() {
        let t = fs::read_link(p).unwrap_or_default();
        ("symlink", t.into_os_string().into_encoded_bytes())
    } else if ft.is_dir() {
        ("dir", Vec::new())
    } else if ft.is_file() {
        ("file", fs::read(p).unwrap_or_default())
    } else if ft.is_char_device() || ft.is_block_device() {
        ("device", Vec::new())
    } else {
        ("other", Vec::new())
    };
    Node {
        kind,
        mode: m.mode(),
        uid: m.uid(),
        gid: m.gid(),
        size: if kind == "dir" { 0 } else { m.size() },
        mtime: (m.mtime(), m.mtime_nsec()),
        content,
        xattrs: xattrs(p),
    }
}

/// Every node under `dir` except `skip` (the root), keyed by path; the listing of `dir` itself
/// is part of it, so anything new beside the root shows up.
fn snapshot(dir: &Path, skip: &Path, out: &mut Tree) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for ent in rd.flatten() {
        let p = ent.path();
        if p == skip {
            continue;
        }
        let n = node(&p);
        let is_dir = n.kind == "dir";
        out.insert(p.clone(), n);
        if is_dir {
            snapshot(&p, skip, out);
        }
    }
}

impl Arena {
    pub fn new() -> Arena {
        // tmpfs when there is one: the fuzzer re-creates the root thousands of times a second.
        let parent = Path::new("/dev/shm");
        let tmp = if parent.is_dir() {
            tempfile::Builder::new()
                .prefix("fastdist-fuzz-")
                .tempdir_in(parent)
        } else {
            tempfile::Builder::new().prefix("fastdist-fuzz-").tempdir()
        }
        .expect("arena tempdir");
        let base = tmp.path().to_path_buf();
        let s = base.join("sentinel");
        fs::create_dir(&s).expect("sentinel");
        fs::write(s.join("secret"), b"do not touch").expect("secret");
        fs::write(s.join("x"), b"x content").expect("x");
        fs::create_dir(s.join("dir")).expect("dir");
        fs::write(s.join("dir/inner"), b"inner").expect("inner");
        std::os::unix::fs::symlink("secret", s.join("link")).expect("link");
        std::os::unix::fs::symlink("/", s.join("slash")).expect("slash");
        fs::write(base.join("beside"), b"beside the root").expect("beside");
        let root = base.join("root");
        let mut before = Tree::new();
        snapshot(&base, &root, &mut before);
        // The base dir's own mode/owner must not change either.
        before.insert(
            base.clone(),
            Node {
                mtime: (0, 0),
                ..node(&base)
            },
        );
        let inodes = before
            .keys()
            .filter_map(|p| fs::symlink_metadata(p).ok())
            .map(|m| (m.dev(), m.ino()))
            .collect();
        Arena {
            _tmp: tmp,
            base,
            root,
            before,
            inodes,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A fresh root. `lower`: populate it with a lower layer holding handles out of the root.
    pub fn reset(&self, lower: bool) {
        remove_all(&self.root);
        fs::create_dir(&self.root).expect("root");
        if !lower {
            return;
        }
        let r = &self.root;
        let s = self.base.join("sentinel");
        let sym = |target: &Path, name: &str| {
            std::os::unix::fs::symlink(target, r.join(name)).expect("handle symlink")
        };
        sym(&s, "abs");
        sym(&s.join("dir"), "absdir");
        sym(&s.join("secret"), "abssecret");
        sym(Path::new("../sentinel"), "rel");
        sym(Path::new("../../../../../../../../.."), "up");
        sym(Path::new("/"), "slash");
        fs::hard_link(s.join("x"), r.join("hl")).expect("hardlink handle");
        fs::create_dir_all(r.join("lower/d")).expect("lower dir");
        fs::write(r.join("lower/f"), b"lower file").expect("lower file");
        fs::write(r.join("lower/d/g"), b"lower nested").expect("lower nested");
        sym(Path::new("../abs"), "lower/up1");
    }

    /// Panics if anything outside the root changed.
    pub fn assert_sentinel_intact(&self, what: &str) {
        let mut after = Tree::new();
        snapshot(&self.base, &self.root, &mut after);
        after.insert(
            self.base.clone(),
            Node {
                mtime: (0, 0),
                ..node(&self.base)
            },
        );
        if after != self.before {
            let mut diff = String::new();
            for (p, n) in &self.before {
                match after.get(p) {
                    None => diff += &format!("  removed {p:?}\n"),
                    Some(m) if m != n => diff += &format!("  changed {p:?}: {n:?} -> {m:?}\n"),
                    _ => {}
                }
            }
            for p in after.keys().filter(|p| !self.before.contains_key(*p)) {
                diff += &format!("  added {p:?}\n");
            }
            panic!("{what}: files outside the root changed:\n{diff}");
        }
    }
}

impl Arena {
    /// Panics if a node inside the root is a sentinel node (a hardlink out of the root, or a
    /// directory of the sentinel reached through the root). Only meaningful for a root that
    /// started empty: the lower layer holds a hardlink to a sentinel file on purpose.
    pub fn assert_no_sentinel_inode_inside(&self, what: &str) {
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            for ent in rd.flatten() {
                let Ok(m) = ent.metadata() else { continue };
                assert!(
                    !self.inodes.contains(&(m.dev(), m.ino())),
                    "{what}: {:?} inside the root is a sentinel node",
                    ent.path()
                );
                if m.is_dir() {
                    stack.push(ent.path());
                }
            }
        }
    }
}

impl Default for Arena {
    fn default() -> Self {
        Arena::new()
    }
}

/// Remove a tree whatever the modes inside it (an input may leave 0000 directories).
fn remove_all(p: &Path) {
    if fs::remove_dir_all(p).is_ok() || !p.exists() {
        return;
    }
    fn open_up(p: &Path) {
        let Ok(m) = fs::symlink_metadata(p) else {
            return;
        };
        if m.is_dir() {
            let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o700));
            if let Ok(rd) = fs::read_dir(p) {
                for e in rd.flatten() {
                    open_up(&e.path());
                }
            }
        }
    }
    open_up(p);
    fs::remove_dir_all(p).unwrap_or_else(|e| panic!("cannot clear the root {p:?}: {e}"));
}

/// One arena per process (libFuzzer runs inputs one at a time on one thread).
pub fn arena() -> std::sync::MutexGuard<'static, Arena> {
    static ARENA: OnceLock<Mutex<Arena>> = OnceLock::new();
    ARENA
        .get_or_init(|| Mutex::new(Arena::new()))
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn check_error(e: &Error, what: &str) {
    // `State` is misuse of the streaming API by its caller; input alone must never cause it.
    if let Error::State(m) = e {
        panic!("{what}: input produced a State error: {m}");
    }
}

// ---- the properties ----------------------------------------------------------------------

/// `apply_layer`: `data` as an uncompressed layer tar, applied in Flatten mode over a lower
/// layer with escape handles, then in Layer mode into an empty root. Ok or a typed error; the
/// sentinel never changes; the reported byte count never exceeds the input.
pub fn check_apply(data: &[u8]) {
    let arena = arena();
    for (mode, lower) in [
        (Mode::Flatten, true),
        (Mode::Layer, false),
        (Mode::Layer, true),
    ] {
        arena.reset(lower);
        let opts = ApplyOptions {
            mode,
            limits: limits(),
            preserve_owner: is_root(),
        };
        match apply_tar(data, arena.root(), &opts) {
            Ok(stats) => {
                assert!(
                    stats.bytes <= data.len() as u64,
                    "consumed more than the input"
                );
                assert!(stats.entries <= opts.limits.max_entries);
            }
            Err(e) => check_error(&e, "apply_tar"),
        }
        let what = format!("apply_tar {mode:?} lower={lower}");
        arena.assert_sentinel_intact(&what);
        if !lower {
            arena.assert_no_sentinel_inode_inside(&what);
        }
    }
}

/// `tar_reader`: the reader alone. Every returned entry respects the limits; the stream is
/// never over-read; data copied matches the sizes claimed.
pub fn check_tar_reader(data: &[u8]) {
    let l = limits();
    let mut reader = TarReader::new(data, l);
    let mut meta = EntryMeta::default();
    let mut sink = Vec::new();
    loop {
        match reader.next_entry(&mut meta) {
            Ok(false) => break,
            Ok(true) => {
                assert!(meta.path.len() as u64 <= l.max_path_len);
                assert!(meta.link.len() as u64 <= l.max_path_len);
                assert!(!meta.path.contains(&0) && !meta.link.contains(&0));
                assert!(meta.mode <= 0o7777);
                assert!(reader.entries() <= l.max_entries);
                // Read the data of every other entry and skip the rest, as the applier does
                // for non-files.
                if reader.entries() & 1 == 0 {
                    sink.clear();
                    match reader.copy_data(&mut sink) {
                        Ok(n) => {
                            assert_eq!(n, sink.len() as u64);
                            assert!(n <= meta.size, "copied more than the entry's size");
                            assert!(n <= l.max_entry_bytes.max(l.max_layer_bytes));
                        }
                        Err(e) => {
                            check_error(&e, "copy_data");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                check_error(&e, "next_entry");
                break;
            }
        }
        assert!(reader.consumed() <= data.len() as u64);
    }
    assert!(reader.consumed() <= data.len() as u64);
}

/// `decompress`: byte 0 picks the media type, the rest is the blob. Output never exceeds
/// `max_layer_bytes`; a gzip stream accepted to its end decodes identically with zlib
/// (flate2's multi-member decoder), the reference.
pub fn check_decompress(data: &[u8]) {
    let Some((&sel, blob)) = data.split_first() else {
        return;
    };
    let media = MEDIA_TYPES[usize::from(sel) % MEDIA_TYPES.len()];
    let l = limits();
    let mut dec = match Decoder::new(media, blob, &l) {
        Ok(d) => d,
        Err(e) => return check_error(&e, "Decoder::new"),
    };
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 + usize::from(sel >> 2) * 97];
    loop {
        match dec.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                assert!(n <= buf.len());
                out.extend_from_slice(&buf[..n]);
                assert_eq!(dec.produced(), out.len() as u64);
                assert!(dec.produced() <= l.max_layer_bytes);
            }
            Err(e) => return check_error(&e, "Decoder::read"),
        }
    }
    if let Err(e) = dec.finish() {
        return check_error(&e, "Decoder::finish");
    }
    match usize::from(sel) % MEDIA_TYPES.len() {
        0 => assert_eq!(out, blob, "an uncompressed layer passes through unchanged"),
        1 => {
            let mut reference = Vec::new();
            let r = std::io::Read::read_to_end(
                &mut flate2::read::MultiGzDecoder::new(blob),
                &mut reference,
            );
            assert!(
                r.is_ok(),
                "gzip accepted by the decoder but rejected by zlib: {r:?}"
            );
            assert!(reference == out, "gzip decoded differently from zlib");
        }
        _ => {}
    }
}

/// `apply_compressed`: the whole streaming pass (`LayerWriter`: tee-less, hash, decompress,
/// apply on a second thread) in Layer mode. Byte 0 picks how the rest becomes the blob: as is
/// under each media type, or compressed by the harness (so that the tar inside is what the
/// fuzzer mutates); byte 1 picks the write chunk size. The sentinel never changes.
pub fn check_apply_compressed(data: &[u8]) {
    let [sel, chunk, rest @ ..] = data else {
        return;
    };
    let (media, blob) = match sel % 5 {
        0 => (MEDIA_TYPES[0], rest.to_vec()),
        1 => (MEDIA_TYPES[1], rest.to_vec()),
        2 => (MEDIA_TYPES[2], rest.to_vec()),
        3 => (MEDIA_TYPES[1], gzip(rest)),
        _ => (MEDIA_TYPES[2], zstd_compress(rest)),
    };
    let arena = arena();
    let lower = sel & 0x80 != 0;
    arena.reset(lower);
    let spec = LayerSpec {
        media_type: media.to_owned(),
        expected_digest: None,
        expected_size: None,
        expected_diff_id: None,
        limits: limits(),
    };
    let dest = arena.root().to_path_buf();
    let opts = ApplyOptions {
        mode: if lower { Mode::Flatten } else { Mode::Layer },
        limits: limits(),
        preserve_owner: is_root(),
    };
    let sink = move |tar: &mut TarStream| apply_tar(tar, &dest, &opts).map(|s| s.entries);
    let res = LayerWriter::new(spec, None, sink).and_then(|mut w| {
        let step = 1 + usize::from(*chunk) * 61;
        for piece in blob.chunks(step) {
            w.write(piece)?;
        }
        w.finish()
    });
    match res {
        Ok(outcome) => {
            assert_eq!(outcome.compressed_size, blob.len() as u64);
            assert!(outcome.uncompressed_size <= limits().max_layer_bytes);
            assert!(outcome.digest.starts_with("sha256:") && outcome.digest.len() == 71);
            assert!(outcome.diff_id.starts_with("sha256:") && outcome.diff_id.len() == 71);
        }
        Err(e) => check_error(&e, "LayerWriter"),
    }
    arena.assert_sentinel_intact("LayerWriter");
    if !lower {
        arena.assert_no_sentinel_inode_inside("LayerWriter");
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).expect("gzip into memory");
    enc.finish().expect("gzip into memory")
}

pub fn zstd_compress(data: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(data, 1).expect("zstd into memory")
}
