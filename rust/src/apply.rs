//! Apply one uncompressed layer tar stream to a directory: OCI whiteouts become overlay
//! whiteouts (`Mode::Layer`) or deletions (`Mode::Flatten`) (image-spec `layer.md`).
//!
//! Every filesystem operation goes through a parent-directory fd resolved inside the root by
//! `safepath` (or, for a new regular file whose directory is not open, one
//! `openat2(RESOLVE_IN_ROOT)` from the root), and every write through `safepath`'s audited
//! primitives; the final component is never followed: entries are created with
//! `O_EXCL|O_NOFOLLOW` (or `mkdirat`/`symlinkat`/`mknodat`/`linkat(…, 0)`) after unlinking
//! what was there, and metadata is set through the new fd or with `AT_SYMLINK_NOFOLLOW`. Names are created in the layer's order on one thread; small files'
//! data and metadata are then finished through their fds on a second (`Finisher`).

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use rustix::fs::{AtFlags, FileType, Gid, Mode as FsMode, Timespec, Timestamps, Uid};
use rustix::io::Errno;
use xxhash_rust::xxh3::{xxh3_128, Xxh3};

use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::manifest::{self, HashingWriter, Manifest, RecordKind};
use crate::safepath::{self, normalize, split_parent, Root};
use crate::tar::{EntryMeta, Kind, TarReader};

/// How whiteouts are materialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `dest` is an empty directory holding this layer alone (an overlayfs lowerdir):
    /// `.wh.NAME` becomes a 0/0 char device, `.wh..wh..opq` sets `trusted.overlay.opaque=y`.
    Layer,
    /// `dest` is the full tree of the layers below: whiteouts delete inside it.
    Flatten,
}

/// Options of one `apply_tar` call.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    pub mode: Mode,
    pub limits: Limits,
    /// chown entries to their numeric uid/gid and create device nodes (needs root).
    pub preserve_owner: bool,
}

/// What one `apply_tar` call did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Tar entries (metadata records not counted).
    pub entries: u64,
    /// Tar bytes consumed, including padding and the trailer.
    pub bytes: u64,
    /// The layer's file manifest with xxh3-128 fingerprints (text form: see `manifest`).
    pub manifest: Vec<u8>,
}

const WH_PREFIX: &[u8] = b".wh.";
const WH_OPAQUE: &[u8] = b".wh..wh..opq";
const OVERLAY_OPAQUE: &str = "trusted.overlay.opaque";
/// Parent directory fds kept open between entries, per applier. Layers list a directory's
/// entries together as a rule, but not always (a tree walked breadth-first, or files added in
/// the order a build wrote them): a miss costs a path resolution from the root (`openat2`)
/// and a `close`. (A regular file in Layer mode needs no parent fd: `Root::create_file`.)
const DIR_CACHE: usize = 64;
/// Cached directory fds across every applier of the process (layers are applied in parallel):
/// stays well under the common soft `RLIMIT_NOFILE` of 1024.
const DIR_CACHE_GLOBAL: usize = 256;
static DIR_CACHE_OPEN: AtomicUsize = AtomicUsize::new(0);
/// Whether appliers fingerprint what they write (xxh3-128 into the manifest). Always on but in
/// the benchmark of what fingerprinting costs (`rust/examples/fingerprint_cost.rs`, through
/// `bench_set_fingerprints`); the Python bindings never turn it off.
static FINGERPRINTS: AtomicBool = AtomicBool::new(true);

/// Benchmark only: turn the appliers' xxh3-128 fingerprinting off (`false`) or back on, for
/// the whole process. Off, regular files' manifest records carry a fingerprint of 0, so the
/// manifests are wrong: never call this outside `rust/examples/fingerprint_cost.rs`.
#[doc(hidden)]
pub fn bench_set_fingerprints(on: bool) {
    FINGERPRINTS.store(on, Ordering::Relaxed);
}
/// Largest device numbers Linux can encode (12-bit major, 20-bit minor).
const MAX_MAJOR: u64 = (1 << 12) - 1;
const MAX_MINOR: u64 = (1 << 20) - 1;

/// Apply the uncompressed tar stream `tar` under the existing directory `dest`.
///
/// The stream is read to its very end (the caller hashes it for the diff_id). On error `dest`
/// is left partially written and must be discarded by the caller; nothing outside it is touched.
pub fn apply_tar<R: Read>(tar: R, dest: &Path, opts: &ApplyOptions) -> Result<ApplyStats> {
    let root = Root::open(dest)?;
    let mut reader = TarReader::new(tar, opts.limits);
    let mut applier = Applier {
        root,
        opts,
        cache: DirCache::default(),
        cache_dirty: false,
        ids: (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        ),
        finisher: Finisher::default(),
        deferred: Vec::new(),
        layer_paths: HashSet::new(),
        manifest: Manifest::default(),
        path: Vec::new(),
        link: Vec::new(),
    };
    let mut meta = EntryMeta::default();
    while reader.next_entry(&mut meta)? {
        applier.entry(&mut reader, &meta)?;
    }
    applier.finish()?;
    Ok(ApplyStats {
        entries: reader.entries(),
        bytes: reader.consumed(),
        manifest: applier.manifest.serialize(),
    })
}

/// Directory metadata applied once all entries are written (children change a dir's mtime, and
/// a read-only mode must not stop later entries).
struct DeferredDir {
    path: Vec<u8>,
    mode: u32,
    mtime: (i64, u32),
}

struct Applier<'a> {
    root: Root,
    opts: &'a ApplyOptions,
    cache: DirCache,
    /// Something was removed: cached fds may now be stale.
    cache_dirty: bool,
    /// This process's effective uid and gid: the owner of the files it creates.
    ids: (u32, u32),
    finisher: Finisher,
    deferred: Vec<DeferredDir>,
    /// Flatten mode: paths this layer created or wrote beneath (with all their ancestors), so
    /// that an opaque marker or whiteout only removes what came from lower layers.
    layer_paths: HashSet<Vec<u8>>,
    /// What this layer wrote, in order, with the files' fingerprints.
    manifest: Manifest,
    /// Scratch: the current entry's normalised path and link target.
    path: Vec<u8>,
    link: Vec<u8>,
}

/// A directory of the layer, open, with its normalised path.
struct CachedDir {
    path: Vec<u8>,
    fd: OwnedFd,
}

impl CachedDir {
    fn new(path: Vec<u8>, fd: OwnedFd) -> Self {
        CachedDir { path, fd }
    }
}

/// Most-recently-used cache of open directories; most recent last. Every fd it holds is
/// counted in `DIR_CACHE_OPEN`.
#[derive(Default)]
struct DirCache(Vec<CachedDir>);

impl DirCache {
    fn contains(&self, path: &[u8]) -> bool {
        self.0.iter().any(|d| d.path == path)
    }

    fn take(&mut self, path: &[u8]) -> Option<CachedDir> {
        let i = self.0.iter().rposition(|d| d.path == path)?;
        DIR_CACHE_OPEN.fetch_sub(1, Ordering::Relaxed);
        Some(self.0.remove(i))
    }

    fn put(&mut self, dir: CachedDir) {
        // One fd per path: a directory opened again (re-created by a later entry) replaces it.
        if let Some(i) = self.0.iter().position(|d| d.path == dir.path) {
            self.0.remove(i);
        } else if self.0.len() >= DIR_CACHE {
            self.0.remove(0);
        } else if DIR_CACHE_OPEN.fetch_add(1, Ordering::Relaxed) >= DIR_CACHE_GLOBAL {
            DIR_CACHE_OPEN.fetch_sub(1, Ordering::Relaxed);
            if self.0.is_empty() {
                return; // dropped: closes the fd
            }
            self.0.remove(0);
        }
        self.0.push(dir);
    }

    fn clear(&mut self) {
        DIR_CACHE_OPEN.fetch_sub(self.0.len(), Ordering::Relaxed);
        self.0.clear();
    }
}

impl Drop for DirCache {
    fn drop(&mut self) {
        self.clear();
    }
}

fn io_err(op: &'static str, meta: &EntryMeta, e: impl Into<io::Error>) -> Error {
    Error::io(op, meta.display(), e.into())
}

fn ts(sec: i64, nsec: u32) -> Timestamps {
    let t = Timespec {
        tv_sec: sec,
        tv_nsec: i64::from(nsec),
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn uid_gid(meta: &EntryMeta) -> Result<(Uid, Gid)> {
    // -1 means "unchanged" to chown: refuse it (and anything else out of range).
    let bad = || Error::corrupt("uid/gid out of range", Some(&meta.display()));
    let uid = u32::try_from(meta.uid)
        .ok()
        .filter(|&u| u != u32::MAX)
        .ok_or_else(bad)?;
    let gid = u32::try_from(meta.gid)
        .ok()
        .filter(|&g| g != u32::MAX)
        .ok_or_else(bad)?;
    Ok((Uid::from_raw(uid), Gid::from_raw(gid)))
}

/// Where xattrs go: an fd we hold open, or (symlinks, devices) a name in a directory fd.
enum XattrTarget<'a> {
    Fd(BorrowedFd<'a>),
    At(BorrowedFd<'a>, &'a [u8]),
}

impl<'a> Applier<'a> {
    fn entry<R: Read>(&mut self, reader: &mut TarReader<R>, meta: &EntryMeta) -> Result<()> {
        if self.finisher.failed() {
            self.finisher.join(self.opts.preserve_owner)?;
        }
        if self.cache_dirty {
            self.cache.clear();
            self.cache_dirty = false;
        }
        let mut path = std::mem::take(&mut self.path);
        let res = self.entry_at(reader, meta, &mut path);
        self.path = path;
        res
    }

    fn entry_at<R: Read>(
        &mut self,
        reader: &mut TarReader<R>,
        meta: &EntryMeta,
        path: &mut Vec<u8>,
    ) -> Result<()> {
        let norm = normalize(&meta.path, path);
        if norm.depth as u64 > self.opts.limits.max_path_depth {
            return Err(Error::Limit {
                limit: "max_path_depth",
                max: self.opts.limits.max_path_depth,
                actual: norm.depth as u64,
            });
        }
        let kind = meta.kind();
        if path.is_empty() {
            // The root itself ("./"): only a directory entry makes sense; it updates metadata.
            if kind != Kind::Dir {
                return Err(Error::unsafe_path(meta.display(), "entry names the root"));
            }
            let dir = self
                .take_dir(b"", false)
                .map_err(|e| io_err("open root", meta, e))?;
            let r = self.dir_metadata(dir.fd.as_fd(), meta, b"");
            self.put_dir(dir);
            r?;
            self.record(RecordKind::Dir, b"", meta, b"");
            return Ok(());
        }
        let (parent, name) = split_parent(path);
        if parent
            .split(|&b| b == b'/')
            .any(|c| c.starts_with(WH_PREFIX))
        {
            return Err(Error::unsafe_path(
                meta.display(),
                "a whiteout name used as a directory",
            ));
        }
        if name.starts_with(WH_PREFIX) {
            if norm.escaped {
                return Err(Error::unsafe_path(
                    meta.display(),
                    "whiteout path climbs above the root with '..'",
                ));
            }
            return self.whiteout(meta, parent, name);
        }

        if kind == Kind::Regular && self.opts.mode == Mode::Layer && !self.cache.contains(parent) {
            // The parent is not open: create the file from the root in one call (Layer mode
            // only: Flatten records the directories on the way in `take_dir_owned`). If that
            // fails for any reason (missing parent, a name in the way, no openat2), the
            // general path below creates the parents, replaces, or reports the error.
            let perm = self.create_perm(meta)?;
            if let Some(fd) = self.root.create_file(path, FsMode::from_raw_mode(perm)) {
                return self.fill_regular(reader, meta, fd, perm, path);
            }
        }
        let pdir = self
            .take_dir(parent, true)
            .map_err(|e| io_err("open parent directory", meta, e))?;
        let res = match kind {
            Kind::Regular => self.regular(reader, meta, pdir.fd.as_fd(), path, name),
            Kind::Dir => self.directory(meta, pdir.fd.as_fd(), path, name),
            Kind::Symlink => self.symlink(meta, pdir.fd.as_fd(), name),
            Kind::HardLink => self.hardlink(meta, pdir.fd.as_fd(), path, name),
            Kind::Char | Kind::Block | Kind::Fifo => self.special(meta, pdir.fd.as_fd(), name),
        };
        self.put_dir(pdir);
        res?;
        let recorded = match kind {
            Kind::Regular => None, // recorded by `fill_regular`, with its fingerprint
            Kind::Dir => Some(RecordKind::Dir),
            Kind::Symlink => Some(RecordKind::Symlink),
            Kind::HardLink => Some(RecordKind::HardLink),
            Kind::Fifo => Some(RecordKind::Fifo),
            // Unprivileged, device nodes are skipped (`special`).
            Kind::Char | Kind::Block if !self.opts.preserve_owner => None,
            Kind::Char => Some(RecordKind::Char),
            Kind::Block => Some(RecordKind::Block),
        };
        if let Some(rk) = recorded {
            let link = std::mem::take(&mut self.link);
            let target: &[u8] = match rk {
                RecordKind::Symlink => &meta.link,
                RecordKind::HardLink => &link, // the normalised target, a path of the tree
                _ => b"",
            };
            self.record(rk, path, meta, target);
            self.link = link;
        }
        if self.opts.mode == Mode::Flatten && !self.layer_paths.contains(path.as_slice()) {
            self.layer_paths.insert(path.clone());
        }
        Ok(())
    }

    // ---- the manifest ------------------------------------------------------------------

    /// The owner a new entry ends up with: its own ids when they are applied, else ours.
    fn owner(&self, meta: &EntryMeta) -> (u32, u32) {
        if self.opts.preserve_owner {
            if let Ok((uid, gid)) = uid_gid(meta) {
                return (uid.as_raw(), gid.as_raw());
            }
        }
        self.ids
    }

    fn record(&mut self, kind: RecordKind, path: &[u8], meta: &EntryMeta, link: &[u8]) -> usize {
        let owner = self.owner(meta);
        self.manifest.push(kind, path, meta, owner, link)
    }

    // ---- directory fd cache ------------------------------------------------------------

    fn take_dir(&mut self, rel: &[u8], create: bool) -> io::Result<CachedDir> {
        if let Some(dir) = self.cache.take(rel) {
            return Ok(dir);
        }
        self.take_dir_owned(rel.to_vec(), create)
    }

    fn take_dir_owned(&mut self, rel: Vec<u8>, create: bool) -> io::Result<CachedDir> {
        let fd = self.root.open_dir(&rel, create)?;
        if self.opts.mode == Mode::Flatten && create {
            // Everything on the way is now "touched" by this layer.
            let mut end = rel.len();
            while end > 0 {
                if !self.layer_paths.insert(rel[..end].to_vec()) {
                    break;
                }
                end = rel[..end].iter().rposition(|&b| b == b'/').unwrap_or(0);
            }
        }
        Ok(CachedDir::new(rel, fd))
    }

    fn put_dir(&mut self, dir: CachedDir) {
        if self.cache_dirty {
            return;
        }
        self.cache.put(dir);
    }

    // ---- replacing what is there -------------------------------------------------------

    /// Remove whatever is at `name` in `dir` (a whole tree for a directory) without
    /// following a symlink.
    fn remove(&mut self, dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
        self.cache_dirty = true;
        safepath::remove(dir, name)
    }

    /// Run `create`; if the name exists, remove it and run `create` once more.
    fn create_replacing<T>(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        mut create: impl FnMut() -> rustix::io::Result<T>,
    ) -> io::Result<T> {
        match create() {
            Err(Errno::EXIST) => {
                self.remove(dir, name)?;
                create().map_err(Into::into)
            }
            r => r.map_err(Into::into),
        }
    }

    // ---- entry kinds ------------------------------------------------------------------

    /// The permission bits to create a regular file with. Its own mode when the file will be
    /// ours (no chown to come) and has no set-id or sticky bits, so that usually neither
    /// `fchown` nor `fchmod` is needed; otherwise 0600, and the chown then chmod follow.
    fn create_perm(&self, meta: &EntryMeta) -> Result<u32> {
        let perm = meta.mode & 0o7777;
        let ours = if self.opts.preserve_owner {
            let (uid, gid) = uid_gid(meta)?;
            (uid.as_raw(), gid.as_raw()) == self.ids
        } else {
            true
        };
        Ok(if ours && perm & !0o777 == 0 {
            perm
        } else {
            0o600
        })
    }

    fn regular<R: Read>(
        &mut self,
        reader: &mut TarReader<R>,
        meta: &EntryMeta,
        dir: BorrowedFd<'_>,
        path: &[u8],
        name: &[u8],
    ) -> Result<()> {
        let perm = self.create_perm(meta)?;
        let fd = self
            .create_replacing(dir, name, || safepath::create_file(dir, name, perm))
            .map_err(|e| io_err("create file", meta, e))?;
        self.fill_regular(reader, meta, fd, perm, path)
    }

    /// Write a new regular file's data, then finish it (`finish_file`). A small file is
    /// handed whole to the finisher thread, which does everything after the create; so the
    /// applier's own thread, which must keep the layer's order, only creates names. The
    /// data is fingerprinted (xxh3-128) by whoever writes it, as it is written: the finisher
    /// reports a small file's fingerprint back by its manifest record's index.
    fn fill_regular<R: Read>(
        &mut self,
        reader: &mut TarReader<R>,
        meta: &EntryMeta,
        fd: OwnedFd,
        created_perm: u32,
        path: &[u8],
    ) -> Result<()> {
        let mut file = File::from(fd);
        let slot = self.record(RecordKind::File, path, meta, b"");
        if meta.size <= OFFLOAD_MAX_DATA && self.finisher.has_room() {
            let mut data = Vec::with_capacity(meta.size as usize);
            reader.copy_data(&mut data)?;
            let job = FileJob::new(file, data, meta.clone(), created_perm, slot);
            return self.finisher.submit(job, self.opts.preserve_owner);
        }
        if !FINGERPRINTS.load(Ordering::Relaxed) {
            if meta.size > 0 {
                reader.copy_data(&mut file)?;
            }
            self.manifest.set_xxh3(slot, 0);
            return finish_file(&file, meta, created_perm, self.opts.preserve_owner);
        }
        let mut hashing = HashingWriter {
            inner: &mut file,
            hasher: Xxh3::new(),
        };
        if meta.size > 0 {
            reader.copy_data(&mut hashing)?;
        }
        let xxh3 = hashing.hasher.digest128();
        self.manifest.set_xxh3(slot, xxh3);
        finish_file(&file, meta, created_perm, self.opts.preserve_owner)
    }

    fn directory(
        &mut self,
        meta: &EntryMeta,
        dir: BorrowedFd<'_>,
        path: &[u8],
        name: &[u8],
    ) -> Result<()> {
        match safepath::mkdir(dir, name, 0o700) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| io_err("stat", meta, e))?;
                // A directory over a directory keeps it (and its contents); anything else,
                // including a symlink to a directory, is replaced.
                if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                    self.remove(dir, name)
                        .map_err(|e| io_err("remove", meta, e))?;
                    safepath::mkdir(dir, name, 0o700)
                        .map_err(|e| io_err("create directory", meta, e))?;
                }
            }
            Err(e) => return Err(io_err("create directory", meta, e)),
        }
        let fd = safepath::open_dir_at(dir, name).map_err(|e| io_err("open directory", meta, e))?;
        self.dir_metadata(fd.as_fd(), meta, path)?;
        self.put_dir(CachedDir::new(path.to_vec(), fd));
        Ok(())
    }

    /// Owner and xattrs now; mode and mtime once the layer is written.
    fn dir_metadata(&mut self, fd: BorrowedFd<'_>, meta: &EntryMeta, path: &[u8]) -> Result<()> {
        if self.opts.preserve_owner {
            let (uid, gid) = uid_gid(meta)?;
            safepath::fchown(fd, uid, gid).map_err(|e| io_err("chown", meta, e))?;
        }
        set_xattrs(XattrTarget::Fd(fd), meta, false)?;
        self.deferred.push(DeferredDir {
            path: path.to_vec(),
            mode: meta.mode,
            mtime: (meta.mtime_sec, meta.mtime_nsec),
        });
        Ok(())
    }

    fn symlink(&mut self, meta: &EntryMeta, dir: BorrowedFd<'_>, name: &[u8]) -> Result<()> {
        if meta.link.is_empty() {
            return Err(Error::corrupt(
                "symlink with an empty target",
                Some(&meta.display()),
            ));
        }
        let target: &[u8] = &meta.link;
        self.create_replacing(dir, name, || safepath::symlink(target, dir, name))
            .map_err(|e| io_err("create symlink", meta, e))?;
        self.name_metadata(meta, dir, name, false)
    }

    /// Owner, xattrs and times of a symlink or special file, by name with NOFOLLOW.
    fn name_metadata(
        &mut self,
        meta: &EntryMeta,
        dir: BorrowedFd<'_>,
        name: &[u8],
        chmod: bool,
    ) -> Result<()> {
        if self.opts.preserve_owner {
            let (uid, gid) = uid_gid(meta)?;
            safepath::chown_at(dir, name, uid, gid).map_err(|e| io_err("chown", meta, e))?;
        }
        set_xattrs(XattrTarget::At(dir, name), meta, true)?;
        if chmod {
            safepath::chmod_at(dir, name, meta.mode).map_err(|e| io_err("chmod", meta, e))?;
        }
        safepath::set_times_at(dir, name, &ts(meta.mtime_sec, meta.mtime_nsec))
            .map_err(|e| io_err("set times", meta, e))?;
        Ok(())
    }

    fn hardlink(
        &mut self,
        meta: &EntryMeta,
        dir: BorrowedFd<'_>,
        path: &[u8],
        name: &[u8],
    ) -> Result<()> {
        let mut link = std::mem::take(&mut self.link);
        let r = self.hardlink_to(meta, dir, path, name, &mut link);
        self.link = link;
        r
    }

    fn hardlink_to(
        &mut self,
        meta: &EntryMeta,
        dir: BorrowedFd<'_>,
        path: &[u8],
        name: &[u8],
        link: &mut Vec<u8>,
    ) -> Result<()> {
        let norm = normalize(&meta.link, link);
        if norm.escaped {
            return Err(Error::unsafe_path(
                meta.display(),
                format!(
                    "hardlink target {:?} climbs above the root",
                    String::from_utf8_lossy(&meta.link)
                ),
            ));
        }
        if link.is_empty() {
            return Err(Error::unsafe_path(meta.display(), "hardlink to the root"));
        }
        if link.as_slice() == path {
            return Err(Error::corrupt("hardlink to itself", Some(&meta.display())));
        }
        let (tparent, tname) = split_parent(link);
        let missing = || {
            Error::corrupt(
                format!(
                    "hardlink target {:?} does not exist",
                    String::from_utf8_lossy(&meta.link)
                ),
                Some(&meta.display()),
            )
        };
        let tdir = match self.root.open_dir(tparent, false) {
            Ok(fd) => fd,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => {
                return Err(missing())
            }
            Err(e) => return Err(io_err("open hardlink target directory", meta, e)),
        };
        let st = match rustix::fs::statat(&tdir, tname, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Err(missing()),
            Err(e) => return Err(io_err("stat hardlink target", meta, e)),
        };
        let ft = FileType::from_raw_mode(st.st_mode);
        if ft == FileType::Directory {
            return Err(Error::unsafe_path(
                meta.display(),
                "hardlink to a directory",
            ));
        }
        if self.opts.mode == Mode::Layer && ft == FileType::CharacterDevice && st.st_rdev == 0 {
            return Err(Error::unsafe_path(meta.display(), "hardlink to a whiteout"));
        }
        // If the new name is the target itself (through a symlinked parent), unlinking it first
        // would destroy the target: compare inodes.
        if let Ok(cur) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            if cur.st_dev == st.st_dev && cur.st_ino == st.st_ino {
                return Ok(());
            }
        }
        let tdir = tdir.as_fd();
        self.create_replacing(dir, name, || safepath::hardlink(tdir, tname, dir, name))
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT) => missing(),
                _ => io_err("create hardlink", meta, e),
            })
    }

    fn special(&mut self, meta: &EntryMeta, dir: BorrowedFd<'_>, name: &[u8]) -> Result<()> {
        let kind = meta.kind();
        let (ft, dev) = match kind {
            Kind::Fifo => (FileType::Fifo, 0),
            _ => {
                if meta.dev_major > MAX_MAJOR || meta.dev_minor > MAX_MINOR {
                    return Err(Error::corrupt(
                        format!(
                            "device number {}:{} out of range",
                            meta.dev_major, meta.dev_minor
                        ),
                        Some(&meta.display()),
                    ));
                }
                if !self.opts.preserve_owner {
                    // Unprivileged: device nodes cannot be made; skip them like rootless tar.
                    return Ok(());
                }
                let ft = if kind == Kind::Char {
                    FileType::CharacterDevice
                } else {
                    FileType::BlockDevice
                };
                (
                    ft,
                    rustix::fs::makedev(meta.dev_major as u32, meta.dev_minor as u32),
                )
            }
        };
        self.create_replacing(dir, name, || safepath::mknod(dir, name, ft, 0o600, dev))
            .map_err(|e| io_err("create device node", meta, e))?;
        self.name_metadata(meta, dir, name, true)
    }

    // ---- whiteouts --------------------------------------------------------------------

    fn whiteout(&mut self, meta: &EntryMeta, parent: &[u8], name: &[u8]) -> Result<()> {
        if name == WH_OPAQUE {
            return self.opaque(meta, parent);
        }
        let target = &name[WH_PREFIX.len()..];
        if target.is_empty() || target == b"." || target == b".." || target.starts_with(WH_PREFIX) {
            return Err(Error::unsafe_path(meta.display(), "invalid whiteout name"));
        }
        if name.starts_with(b".wh..wh.") {
            return Err(Error::unsafe_path(
                meta.display(),
                "unknown .wh..wh. marker",
            ));
        }
        let mut whited = Vec::with_capacity(parent.len() + 1 + target.len());
        whited.extend_from_slice(parent);
        if !parent.is_empty() {
            whited.push(b'/');
        }
        whited.extend_from_slice(target);
        self.record(RecordKind::Whiteout, &whited, meta, b"");
        match self.opts.mode {
            Mode::Layer => {
                let pfd = self
                    .take_dir(parent, true)
                    .map_err(|e| io_err("open parent directory", meta, e))?;
                let r = self.layer_whiteout(meta, pfd.fd.as_fd(), target);
                self.put_dir(pfd);
                r
            }
            Mode::Flatten => {
                let mut key = Vec::with_capacity(parent.len() + 1 + target.len());
                key.extend_from_slice(parent);
                if !parent.is_empty() {
                    key.push(b'/');
                }
                key.extend_from_slice(target);
                // Whiteouts apply to lower layers only (layer.md#whiteouts).
                if self.layer_paths.contains(&key) {
                    return Ok(());
                }
                let pfd = match self.take_dir(parent, false) {
                    Ok(fd) => fd,
                    Err(e)
                        if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) =>
                    {
                        return Ok(())
                    }
                    Err(e) => return Err(io_err("open parent directory", meta, e)),
                };
                let r = self
                    .remove(pfd.fd.as_fd(), target)
                    .map_err(|e| io_err("remove whited-out path", meta, e));
                self.put_dir(pfd);
                r
            }
        }
    }

    fn layer_whiteout(
        &mut self,
        meta: &EntryMeta,
        dir: BorrowedFd<'_>,
        target: &[u8],
    ) -> Result<()> {
        match rustix::fs::statat(dir, target, AtFlags::SYMLINK_NOFOLLOW) {
            // Already written by this layer: a whiteout only hides lower layers.
            Ok(_) => return Ok(()),
            Err(Errno::NOENT) => {}
            Err(e) => return Err(io_err("stat", meta, e)),
        }
        safepath::mknod(
            dir,
            target,
            FileType::CharacterDevice,
            0,
            rustix::fs::makedev(0, 0),
        )
        .map_err(|e| {
            Error::io(
                "create overlay whiteout (a 0/0 char device, needs root)",
                meta.display(),
                e.into(),
            )
        })
    }

    fn opaque(&mut self, meta: &EntryMeta, parent: &[u8]) -> Result<()> {
        let pfd = self
            .take_dir(parent, true)
            .map_err(|e| io_err("open opaque directory", meta, e))?;
        self.record(RecordKind::Opaque, parent, meta, b"");
        let r = match self.opts.mode {
            Mode::Layer => safepath::set_xattr(pfd.fd.as_fd(), OVERLAY_OPAQUE.as_bytes(), b"y")
                .map_err(|e| io_err("set trusted.overlay.opaque", meta, e)),
            Mode::Flatten => {
                let mut prefix = parent.to_vec();
                self.cache_dirty = true;
                purge_lower(pfd.fd.as_fd(), &mut prefix, &self.layer_paths)
                    .map_err(|e| io_err("remove lower entries of opaque directory", meta, e))
            }
        };
        self.put_dir(pfd);
        r
    }

    // ---- end of layer -----------------------------------------------------------------

    fn finish(&mut self) -> Result<()> {
        // Every file written and finished before the directories' modes and times.
        self.finisher.join(self.opts.preserve_owner)?;
        for (slot, xxh3) in std::mem::take(&mut self.finisher.done) {
            self.manifest.set_xxh3(slot, xxh3);
        }
        if self.cache_dirty {
            self.cache.clear();
            self.cache_dirty = false;
        }
        let mut deferred = std::mem::take(&mut self.deferred);
        // The last entry of a path wins; then the deepest first, so that no directory is made
        // unsearchable (a mode without x, for a user without CAP_DAC_OVERRIDE) before the
        // directories below it are done.
        let mut seen = HashSet::new();
        deferred.reverse();
        deferred.retain(|d| seen.insert(d.path.clone()));
        deferred.sort_by_key(|d| std::cmp::Reverse(d.path.iter().filter(|&&b| b == b'/').count()));
        for d in &deferred {
            let shown = || String::from_utf8_lossy(&d.path).into_owned();
            let fd = match self.deferred_dir_fd(&d.path) {
                Ok(Some(fd)) => fd,
                Ok(None) => continue,
                Err(e) => return Err(Error::io("open directory", shown(), e)),
            };
            safepath::fchmod(fd.as_fd(), d.mode)
                .map_err(|e| Error::io("chmod", shown(), e.into()))?;
            safepath::set_times(fd.as_fd(), &ts(d.mtime.0, d.mtime.1))
                .map_err(|e| Error::io("set times", shown(), e.into()))?;
        }
        Ok(())
    }

    /// The directory a deferred entry created, or `None` when a later entry of the layer
    /// removed or replaced it (ENOENT: gone, whited out; ENOTDIR / ELOOP: the name, or a
    /// directory on the way, is now a file or a symlink): then there is nothing to set.
    /// Any other failure is an error: the directory would silently keep its 0700.
    fn deferred_dir_fd(&mut self, path: &[u8]) -> io::Result<Option<OwnedFd>> {
        let gone = |e: &io::Error| {
            matches!(
                e.raw_os_error(),
                Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ELOOP)
            )
        };
        if path.is_empty() {
            return self.take_dir(b"", false).map(|d| Some(d.fd));
        }
        let (parent, name) = split_parent(path);
        let pdir = match self.take_dir(parent, false) {
            Ok(p) => p,
            Err(e) if gone(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let r = safepath::open_dir_at(pdir.fd.as_fd(), name).map_err(io::Error::from);
        self.put_dir(pdir);
        match r {
            Ok(fd) => Ok(Some(fd)),
            Err(e) if gone(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Owner, xattrs, mode and times of a new regular file whose data is written. What the
/// kernel gave it (`fstat`: our euid, our egid or a set-gid directory's group, the mode less
/// the umask or a default ACL) decides whether `fchown` and `fchmod` are needed: for most
/// files of most layers neither is.
fn finish_file(
    file: &File,
    meta: &EntryMeta,
    created_perm: u32,
    preserve_owner: bool,
) -> Result<()> {
    let fd = file.as_fd();
    let st = rustix::fs::fstat(fd).map_err(|e| io_err("stat new file", meta, e))?;
    if preserve_owner {
        let (uid, gid) = uid_gid(meta)?;
        if (st.st_uid, st.st_gid) != (uid.as_raw(), gid.as_raw()) {
            safepath::fchown(fd, uid, gid).map_err(|e| io_err("chown", meta, e))?;
        }
    }
    set_xattrs(XattrTarget::Fd(fd), meta, false)?;
    // Created without set-id bits, so a chown cleared nothing: compare with what we got.
    if created_perm != meta.mode & 0o7777 || st.st_mode & 0o7777 != created_perm {
        safepath::fchmod(fd, meta.mode).map_err(|e| io_err("chmod", meta, e))?;
    }
    safepath::set_times(fd, &ts(meta.mtime_sec, meta.mtime_nsec))
        .map_err(|e| io_err("set times", meta, e))?;
    Ok(())
}

fn set_xattrs(target: XattrTarget<'_>, meta: &EntryMeta, non_regular: bool) -> Result<()> {
    if meta.xattrs.is_empty() {
        return Ok(());
    }
    for (key, value) in &meta.xattrs {
        // Overlay metadata in a layer would be honoured by overlayfs: never apply it.
        if !manifest::applied_xattr(key) {
            continue;
        }
        let r = match target {
            XattrTarget::Fd(fd) => safepath::set_xattr(fd, key, value),
            XattrTarget::At(dir, name) => safepath::set_xattr_at(dir, name, key, value),
        };
        match r {
            Ok(()) => {}
            // The filesystem has no xattrs of this kind: skip, as containerd does.
            Err(Errno::NOTSUP) => {}
            // user.* is not allowed on symlinks and device nodes.
            Err(Errno::PERM) if non_regular && key.starts_with(b"user.") => {}
            Err(e) => {
                return Err(Error::io(
                    "set xattr",
                    format!("{} ({})", meta.display(), String::from_utf8_lossy(key)),
                    e.into(),
                ))
            }
        }
    }
    Ok(())
}

// ---- the finisher thread -------------------------------------------------------------------

/// Largest file whose data is copied into a `FileJob` (bigger ones are written in place).
const OFFLOAD_MAX_DATA: u64 = 64 * 1024;
/// Jobs sent to the finisher at a time, and the data bytes that flush a batch early.
const OFFLOAD_BATCH: usize = 32;
const OFFLOAD_BATCH_BYTES: usize = 256 * 1024;
/// Batches queued for the finisher (memory: at most this many + 1 times ~320 KiB of data).
const OFFLOAD_QUEUE: usize = 4;
/// Files open in jobs across the process (every applier of every layer): with the directory
/// cache's 256, still far from a soft `RLIMIT_NOFILE` of 1024. Over it, files finish inline.
const OFFLOAD_OPEN_MAX: usize = 256;
static OFFLOAD_OPEN: AtomicUsize = AtomicUsize::new(0);

/// A finished small file's manifest slot and the xxh3-128 of its data.
type Fingerprint = (usize, u128);

/// A created regular file, open, with its data, to finish off the applier's thread. Counted in
/// `OFFLOAD_OPEN` from creation to drop, whether it was finished or discarded.
struct FileJob {
    file: File,
    data: Vec<u8>,
    meta: EntryMeta,
    created_perm: u32,
    /// The index of the file's manifest record.
    slot: usize,
}

impl FileJob {
    fn new(file: File, data: Vec<u8>, meta: EntryMeta, created_perm: u32, slot: usize) -> Self {
        OFFLOAD_OPEN.fetch_add(1, Ordering::Relaxed);
        FileJob {
            file,
            data,
            meta,
            created_perm,
            slot,
        }
    }

    /// Write and finish the file; its manifest slot and the fingerprint of what was written.
    fn run(&mut self, preserve_owner: bool) -> Result<Fingerprint> {
        use std::io::Write;
        if !self.data.is_empty() {
            self.file
                .write_all(&self.data)
                .map_err(|e| io_err("write", &self.meta, e))?;
        }
        let xxh3 = if FINGERPRINTS.load(Ordering::Relaxed) {
            xxh3_128(&self.data)
        } else {
            0
        };
        finish_file(&self.file, &self.meta, self.created_perm, preserve_owner)?;
        Ok((self.slot, xxh3))
    }
}

impl Drop for FileJob {
    fn drop(&mut self) {
        OFFLOAD_OPEN.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The second thread of one `apply_tar`: it writes small files' data and sets their metadata
/// while the applier goes on creating names in the layer's order. It only ever touches the
/// fds it is given (nothing is resolved by name), so the order of the namespace operations,
/// and with it every safety property of the applier, is the single-threaded one. Started on
/// first use; its first error stops it and is returned by the next `submit` or by `join`,
/// which `finish` (and drop, on the error paths) calls before the applier returns, so no
/// write into `dest` outlives `apply_tar`.
#[derive(Default)]
struct Finisher {
    batch: Vec<FileJob>,
    batch_bytes: usize,
    tx: Option<SyncSender<Vec<FileJob>>>,
    thread: Option<JoinHandle<Result<Vec<Fingerprint>>>>,
    failed: Arc<AtomicBool>,
    /// Fingerprints of the finished files, by manifest slot (filled in by `join`).
    done: Vec<Fingerprint>,
}

impl Finisher {
    fn has_room(&self) -> bool {
        OFFLOAD_OPEN.load(Ordering::Relaxed) < OFFLOAD_OPEN_MAX
    }

    fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    fn submit(&mut self, job: FileJob, preserve_owner: bool) -> Result<()> {
        self.batch_bytes += job.data.len();
        self.batch.push(job);
        if self.batch.len() >= OFFLOAD_BATCH || self.batch_bytes >= OFFLOAD_BATCH_BYTES {
            self.flush(preserve_owner)?;
        }
        Ok(())
    }

    fn flush(&mut self, preserve_owner: bool) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        if self.tx.is_none() {
            let (tx, rx) = sync_channel::<Vec<FileJob>>(OFFLOAD_QUEUE);
            let failed = Arc::clone(&self.failed);
            let thread = std::thread::Builder::new()
                .name("fastdist-files".into())
                .spawn(move || finisher_main(rx, failed, preserve_owner))
                .map_err(|e| Error::io("start thread", "fastdist-files", e))?;
            self.tx = Some(tx);
            self.thread = Some(thread);
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(batch).is_ok());
        if !sent || self.failed() {
            // The finisher stopped on an error: report it now.
            return self.join(preserve_owner);
        }
        Ok(())
    }

    /// Wait until every submitted file is finished; the finisher's first error, if any.
    fn join(&mut self, preserve_owner: bool) -> Result<()> {
        let rest = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        if !rest.is_empty() && !self.failed() {
            match &self.tx {
                // If the send fails the thread has stopped on an error, returned below.
                Some(tx) => {
                    let _ = tx.send(rest);
                }
                // Never started (fewer files than a batch): finish them here.
                None => {
                    for mut job in rest {
                        let fingerprint = job.run(preserve_owner)?;
                        self.done.push(fingerprint);
                    }
                }
            }
        }
        self.tx = None; // the thread drains the queue and ends
        match self.thread.take() {
            Some(thread) => {
                let done = thread.join().unwrap_or_else(|_| {
                    Err(Error::io(
                        "finish files",
                        "fastdist-files",
                        io::Error::other("the thread panicked"),
                    ))
                })?;
                self.done.extend(done);
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl Drop for Finisher {
    fn drop(&mut self) {
        // An error path of the applier: discard what is queued here, wait for the thread.
        self.failed.store(true, Ordering::Relaxed);
        self.batch.clear();
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn finisher_main(
    rx: Receiver<Vec<FileJob>>,
    failed: Arc<AtomicBool>,
    preserve_owner: bool,
) -> Result<Vec<Fingerprint>> {
    let mut done = Vec::new();
    for batch in rx {
        for mut job in batch {
            if failed.load(Ordering::Relaxed) {
                return Ok(done); // the applier gave up: discard the rest
            }
            match job.run(preserve_owner) {
                Ok(fingerprint) => done.push(fingerprint),
                Err(e) => {
                    failed.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
    }
    Ok(done)
}

/// Opaque directory in Flatten mode: remove everything below `dir` (at normalised `prefix`)
/// that this layer did not write. Directories this layer wrote into are kept and purged
/// recursively, so lower contents vanish while this layer's entries stay.
fn purge_lower(
    dir: BorrowedFd<'_>,
    prefix: &mut Vec<u8>,
    layer: &HashSet<Vec<u8>>,
) -> io::Result<()> {
    let base = prefix.len();
    for (name, is_dir) in safepath::list_dir(dir)? {
        prefix.truncate(base);
        if base > 0 {
            prefix.push(b'/');
        }
        prefix.extend_from_slice(&name);
        if layer.contains(prefix.as_slice()) {
            if is_dir {
                if let Ok(sub) = safepath::open_dir_at(dir, &name) {
                    purge_lower(sub.as_fd(), prefix, layer)?;
                }
            }
            continue;
        }
        safepath::remove_listed(dir, &name, is_dir)?;
    }
    prefix.truncate(base);
    Ok(())
}
