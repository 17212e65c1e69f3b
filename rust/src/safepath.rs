//! Every path resolved inside the snapshot root through directory fds (design.md §7).
//!
//! Entry names are first normalised lexically (`normalize`): leading `/` and `./` stripped,
//! `.` dropped, `..` clamped at the root as if the root were `/` (containerd's behaviour).
//! Directories are then opened with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` from the
//! root fd, so symlinks met on the way (relative or absolute, e.g. `var/run -> /run`) resolve
//! inside the root. Where openat2 is missing (ENOSYS) a component-by-component `O_NOFOLLOW` walk
//! resolves symlinks itself, with the same in-root semantics. The final component of an entry is
//! never resolved here: callers operate on it with the write primitives below, relative to
//! the parent fd.
//!
//! It is also the one audited module for every filesystem write of the crate (design.md §7;
//! `rust/tests/audited_writes.rs` fails on a write call anywhere else): a write primitive takes a
//! directory fd and a single name, never follows that name (`O_EXCL|O_NOFOLLOW` creates,
//! `AT_SYMLINK_NOFOLLOW` metadata, `linkat(…, 0)`, chmod of a non-fd through an `O_PATH` fd
//! checked not to be a symlink), or works on an fd the crate opened itself; every fd it opens
//! is close-on-exec. The two files opened by path (a layer blob to read, the ingest tee to
//! append to) are opened with `O_NOFOLLOW` relative to their directory, itself opened
//! `O_NOFOLLOW`; the tee must be a regular file of one link (or a fifo).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{
    AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Timestamps, Uid, XattrFlags, CWD,
};
use rustix::io::Errno;

use crate::error::{Error, Result};

/// Set once openat2 has answered ENOSYS: use the walk from then on.
static OPENAT2_MISSING: AtomicBool = AtomicBool::new(false);
/// Test hook: force the component walk even where openat2 exists.
static FORCE_WALK: AtomicBool = AtomicBool::new(false);

/// Symlinks followed while resolving one path, as the kernel's MAXSYMLINKS.
const MAX_SYMLINKS: usize = 40;

/// Force (or stop forcing) the openat2-less fallback resolver, process-wide. For tests that
/// exercise the fallback on kernels that have openat2.
#[doc(hidden)]
pub fn force_component_walk(on: bool) {
    FORCE_WALK.store(on, Ordering::SeqCst);
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC
}

/// Result of lexical normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Normalized {
    /// A `..` tried to climb above the root (and was clamped).
    pub escaped: bool,
    /// Number of components in the normalised path.
    pub depth: usize,
}

/// Normalise `raw` into `out` as `a/b/c` (no leading/trailing slash, no `.`/`..`/empty
/// components); the root itself is the empty string.
pub fn normalize(raw: &[u8], out: &mut Vec<u8>) -> Normalized {
    out.clear();
    let mut escaped = false;
    let mut depth = 0usize;
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                if depth == 0 {
                    escaped = true;
                } else {
                    depth -= 1;
                    let cut = out.iter().rposition(|&b| b == b'/').unwrap_or(0);
                    out.truncate(cut);
                }
            }
            c => {
                if depth > 0 {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
                depth += 1;
            }
        }
    }
    Normalized { escaped, depth }
}

/// Split a normalised path into (parent, name). The root has no name.
pub fn split_parent(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&b""[..], path),
    }
}

/// An open snapshot root.
pub struct Root {
    fd: OwnedFd,
}

impl Root {
    /// Open `dest`, which must be an existing directory.
    pub fn open(dest: &Path) -> Result<Root> {
        let fd = rustix::fs::open(dest, dir_flags(), Mode::empty())
            .map_err(|e| Error::io("open destination", dest.display().to_string(), e.into()))?;
        Ok(Root { fd })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Open the directory at the normalised path `rel` inside the root, following symlinks
    /// inside the root. With `create`, missing directories are created with mode 0755.
    pub fn open_dir(&self, rel: &[u8], create: bool) -> io::Result<OwnedFd> {
        if !FORCE_WALK.load(Ordering::Relaxed) && !OPENAT2_MISSING.load(Ordering::Relaxed) {
            match self.open_dir_openat2(rel, create, 0) {
                Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                    OPENAT2_MISSING.store(true, Ordering::Relaxed);
                }
                r => return r,
            }
        }
        self.walk(rel, create)
    }

    /// Create the regular file at the normalised path `rel` (not the root) for writing, in
    /// one `openat2` from the root: `O_CREAT|O_EXCL|O_NOFOLLOW`, so that nothing existing is
    /// opened and the name itself is never followed, while the directories on the way resolve
    /// inside the root as in `open_dir`. `None` when that did not create it, for whatever
    /// reason (a missing parent, the name taken, no openat2): the caller then goes through
    /// `open_dir`, which creates, replaces and reports.
    pub fn create_file(&self, rel: &[u8], mode: Mode) -> Option<OwnedFd> {
        if rel.is_empty()
            || FORCE_WALK.load(Ordering::Relaxed)
            || OPENAT2_MISSING.load(Ordering::Relaxed)
        {
            return None;
        }
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        rustix::fs::openat2(
            &self.fd,
            rel,
            flags,
            mode,
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
        .ok()
    }

    fn openat2_in_root(&self, rel: &[u8]) -> io::Result<OwnedFd> {
        let path: &[u8] = if rel.is_empty() { b"." } else { rel };
        let mut tries = 0;
        loop {
            match rustix::fs::openat2(
                &self.fd,
                path,
                dir_flags(),
                Mode::empty(),
                ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
            ) {
                // EAGAIN: a concurrent rename raced the lookup; the kernel asks us to retry.
                Err(Errno::AGAIN) if tries < 16 => tries += 1,
                r => return r.map_err(io::Error::from),
            }
        }
    }

    fn open_dir_openat2(&self, rel: &[u8], create: bool, links: usize) -> io::Result<OwnedFd> {
        match self.openat2_in_root(rel) {
            Err(e) if create && e.kind() == io::ErrorKind::NotFound && !rel.is_empty() => {
                let (parent, name) = split_parent(rel);
                let pfd = self.open_dir_openat2(parent, true, links)?;
                match rustix::fs::mkdirat(&pfd, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                match rustix::fs::openat(&pfd, name, dir_flags() | OFlags::NOFOLLOW, Mode::empty())
                {
                    Ok(fd) => Ok(fd),
                    // Something other than a plain dir is there: resolve it again through the
                    // root; a dangling symlink has its target created (as containerd does).
                    Err(_) => match self.openat2_in_root(rel) {
                        Err(e) if e.kind() == io::ErrorKind::NotFound && links < MAX_SYMLINKS => {
                            let target = rustix::fs::readlinkat(&pfd, name, Vec::new())
                                .map_err(|_| e)?
                                .into_bytes();
                            let mut joined = Vec::with_capacity(parent.len() + 1 + target.len());
                            if target.first() != Some(&b'/') {
                                joined.extend_from_slice(parent);
                                joined.push(b'/');
                            }
                            joined.extend_from_slice(&target);
                            let mut resolved = Vec::new();
                            normalize(&joined, &mut resolved);
                            self.open_dir_openat2(&resolved, true, links + 1)
                        }
                        r => r,
                    },
                }
            }
            r => r,
        }
    }

    /// The openat2-less resolver: one component at a time with O_NOFOLLOW, symlinks read and
    /// expanded by us, `..` and absolute targets clamped at the root.
    fn walk(&self, rel: &[u8], create: bool) -> io::Result<OwnedFd> {
        // Directory fds from the root down to the current directory (root not included).
        let mut stack: Vec<OwnedFd> = Vec::new();
        // Components still to resolve, in reverse order (pop from the end).
        let mut todo: Vec<Vec<u8>> = rel
            .split(|&b| b == b'/')
            .rev()
            .filter(|c| !c.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        let mut links = 0usize;
        while let Some(comp) = todo.pop() {
            match comp.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    stack.pop();
                    continue;
                }
                _ => {}
            }
            let cur: BorrowedFd<'_> = stack.last().map_or(self.fd.as_fd(), |f| f.as_fd());
            let flags = dir_flags() | OFlags::NOFOLLOW;
            let opened = match rustix::fs::openat(cur, comp.as_slice(), flags, Mode::empty()) {
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(cur, comp.as_slice(), Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    rustix::fs::openat(cur, comp.as_slice(), flags, Mode::empty())
                }
                r => r,
            };
            match opened {
                Ok(fd) => stack.push(fd),
                Err(e @ (Errno::LOOP | Errno::NOTDIR)) => {
                    let target = match rustix::fs::readlinkat(cur, comp.as_slice(), Vec::new()) {
                        Ok(t) => t.into_bytes(),
                        // Not a symlink: a non-directory where a directory is needed.
                        Err(_) => return Err(e.into()),
                    };
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(Errno::LOOP.into());
                    }
                    if target.first() == Some(&b'/') {
                        stack.clear();
                    }
                    todo.extend(
                        target
                            .split(|&b| b == b'/')
                            .rev()
                            .filter(|c| !c.is_empty())
                            .map(<[u8]>::to_vec),
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
        match stack.pop() {
            Some(fd) => Ok(fd),
            None => {
                rustix::fs::openat(&self.fd, ".", dir_flags(), Mode::empty()).map_err(Into::into)
            }
        }
    }
}

// ---- the audited writes ----------------------------------------------------------------------

/// Create the regular file `name` in `dir` for writing: `O_CREAT|O_EXCL|O_NOFOLLOW`, so that
/// nothing existing (a symlink least of all) is opened.
pub fn create_file(dir: BorrowedFd<'_>, name: &[u8], perm: u32) -> rustix::io::Result<OwnedFd> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(perm))
}

/// Create the directory `name` in `dir` (`mkdirat` never follows the name).
pub fn mkdir(dir: BorrowedFd<'_>, name: &[u8], perm: u32) -> rustix::io::Result<()> {
    rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(perm))
}

/// Open the directory `name` in `dir` without following it (a symlink fails with ELOOP).
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &[u8]) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(dir, name, dir_flags() | OFlags::NOFOLLOW, Mode::empty())
}

/// Create the symlink `name` in `dir` pointing at `target` (never resolved by us).
pub fn symlink(target: &[u8], dir: BorrowedFd<'_>, name: &[u8]) -> rustix::io::Result<()> {
    rustix::fs::symlinkat(target, dir, name)
}

/// Hardlink `tname` in `tdir` as `name` in `dir`; `linkat(…, 0)` does not follow `tname`.
pub fn hardlink(
    tdir: BorrowedFd<'_>,
    tname: &[u8],
    dir: BorrowedFd<'_>,
    name: &[u8],
) -> rustix::io::Result<()> {
    rustix::fs::linkat(tdir, tname, dir, name, AtFlags::empty())
}

/// Create a device node, fifo or overlay whiteout `name` in `dir`.
pub fn mknod(
    dir: BorrowedFd<'_>,
    name: &[u8],
    ft: FileType,
    perm: u32,
    dev: u64,
) -> rustix::io::Result<()> {
    rustix::fs::mknodat(dir, name, ft, Mode::from_raw_mode(perm), dev)
}

pub fn fchown(fd: BorrowedFd<'_>, uid: Uid, gid: Gid) -> rustix::io::Result<()> {
    rustix::fs::fchown(fd, Some(uid), Some(gid))
}

/// chown `name` in `dir` itself, never a symlink's target.
pub fn chown_at(dir: BorrowedFd<'_>, name: &[u8], uid: Uid, gid: Gid) -> rustix::io::Result<()> {
    rustix::fs::chownat(dir, name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)
}

pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> rustix::io::Result<()> {
    rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))
}

/// chmod `name` in `dir` (a special file just created) without following a symlink: open it
/// `O_PATH|O_NOFOLLOW`, check it is not a symlink, chmod through its /proc/self/fd magic link.
pub fn chmod_at(dir: BorrowedFd<'_>, name: &[u8], mode: u32) -> io::Result<()> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
        return Err(io::Error::from_raw_os_error(libc::ELOOP));
    }
    let p = format!("/proc/self/fd/{}", fd.as_raw_fd());
    rustix::fs::chmodat(CWD, p.as_str(), Mode::from_raw_mode(mode), AtFlags::empty())?;
    Ok(())
}

pub fn set_times(fd: BorrowedFd<'_>, times: &Timestamps) -> rustix::io::Result<()> {
    rustix::fs::futimens(fd, times)
}

/// Set the times of `name` in `dir` itself, never a symlink's target.
pub fn set_times_at(
    dir: BorrowedFd<'_>,
    name: &[u8],
    times: &Timestamps,
) -> rustix::io::Result<()> {
    rustix::fs::utimensat(dir, name, times, AtFlags::SYMLINK_NOFOLLOW)
}

pub fn set_xattr(fd: BorrowedFd<'_>, key: &[u8], value: &[u8]) -> rustix::io::Result<()> {
    rustix::fs::fsetxattr(fd, key, value, XattrFlags::empty())
}

/// Set an xattr on `name` in `dir` itself (a symlink or a device node, which cannot be opened
/// for it): `lsetxattr` on /proc/self/fd/DIR/NAME, where DIR is our fd and NAME not followed.
pub fn set_xattr_at(
    dir: BorrowedFd<'_>,
    name: &[u8],
    key: &[u8],
    value: &[u8],
) -> rustix::io::Result<()> {
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name);
    rustix::fs::lsetxattr(p.as_slice(), key, value, XattrFlags::empty())
}

/// Remove whatever is at `name` in `dir` (a whole tree for a directory) without following a
/// symlink; gone already is fine.
pub fn remove(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    remove_listed(
        dir,
        name,
        FileType::from_raw_mode(st.st_mode) == FileType::Directory,
    )
}

/// Remove the directory `name` in `dir` and everything below it, never following symlinks.
fn remove_tree(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let fd = match open_dir_at(dir, name) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(()),
        // Not a directory after all (swapped): unlink it.
        Err(Errno::NOTDIR | Errno::LOOP) => {
            return rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(Into::into)
        }
        Err(e) => return Err(e.into()),
    };
    clear_dir(fd.as_fd(), |_| false)?;
    match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// List a directory's entries (name, is a real directory).
pub fn list_dir(fd: BorrowedFd<'_>) -> io::Result<Vec<(Vec<u8>, bool)>> {
    let dup = rustix::fs::openat(fd, ".", dir_flags(), Mode::empty())?;
    let mut dir = rustix::fs::Dir::new(dup)?;
    let mut out = Vec::new();
    while let Some(ent) = dir.read() {
        let ent = ent?;
        let name = ent.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let is_dir = match ent.file_type() {
            FileType::Directory => true,
            FileType::Unknown => {
                let st = rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW)?;
                FileType::from_raw_mode(st.st_mode) == FileType::Directory
            }
            _ => false,
        };
        out.push((name.to_vec(), is_dir));
    }
    Ok(out)
}

/// Remove `name` from `dir` as listed by `list_dir`: a whole tree for a directory, symlinks
/// never followed; gone is fine.
pub fn remove_listed(dir: BorrowedFd<'_>, name: &[u8], is_dir: bool) -> io::Result<()> {
    if is_dir {
        return remove_tree(dir, name);
    }
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Remove every entry of `fd` for which `keep` is false.
fn clear_dir(fd: BorrowedFd<'_>, keep: impl Fn(&[u8]) -> bool) -> io::Result<()> {
    for (name, is_dir) in list_dir(fd)? {
        if keep(&name) {
            continue;
        }
        remove_listed(fd, &name, is_dir)?;
    }
    Ok(())
}

/// The directory fd and last component of a path to a file the crate opens by path.
fn open_parent(path: &Path) -> io::Result<(OwnedFd, &std::ffi::OsStr)> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dfd = rustix::fs::open(parent, dir_flags() | OFlags::NOFOLLOW, Mode::empty())
        .map_err(|e| not_followed(e, "its directory"))?;
    Ok((dfd, name))
}

/// ELOOP from an `O_NOFOLLOW` open, said plainly.
fn not_followed(e: Errno, what: &str) -> io::Error {
    if e == Errno::LOOP {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} is a symlink, which is never followed"),
        )
    } else {
        e.into()
    }
}

/// The tee may only be what it was created as: a regular file with one link (a hard link
/// would make the writes land in another file too); it is written at offsets and read back.
fn tee_file(fd: OwnedFd) -> io::Result<File> {
    let st = rustix::fs::fstat(&fd)?;
    let ok = FileType::from_raw_mode(st.st_mode) == FileType::RegularFile && st.st_nlink == 1;
    if !ok {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file of one link",
        ));
    }
    Ok(File::from(fd))
}

/// Open the file at `path` for reading, following no symlink at its last two components (a
/// planted link to a host file is refused, not read).
pub fn open_read(path: &Path) -> io::Result<File> {
    let (dfd, name) = open_parent(path)?;
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(&dfd, name, flags, Mode::empty())
        .map_err(|e| not_followed(e, "the file"))?;
    Ok(File::from(fd))
}

/// Open the file at `path` for reading and writing at offsets (`pwrite`; no `O_APPEND`, which
/// Linux applies to `pwrite` too), creating it (0600) if missing, following no symlink at its
/// last two components: a planted `data -> /host/file` (or a hard link to one, or anything but
/// a regular file) is refused, so the host file is neither read as a resumed prefix nor
/// written to.
pub fn open_rw(path: &Path) -> io::Result<File> {
    let (dfd, name) = open_parent(path)?;
    let flags = OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(&dfd, name, flags, Mode::from_raw_mode(0o600))
        .map_err(|e| not_followed(e, "the file"))?;
    tee_file(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> (String, bool) {
        let mut out = Vec::new();
        let n = normalize(s.as_bytes(), &mut out);
        (String::from_utf8(out).unwrap_or_default(), n.escaped)
    }

    #[test]
    fn normalize_strips_and_clamps() {
        assert_eq!(norm("./a/b/"), ("a/b".into(), false));
        assert_eq!(norm("/etc//passwd"), ("etc/passwd".into(), false));
        assert_eq!(norm("a/../b"), ("b".into(), false));
        assert_eq!(norm("../../x"), ("x".into(), true));
        assert_eq!(norm("a/../../x"), ("x".into(), true));
        assert_eq!(norm("./"), ("".into(), false));
        assert_eq!(norm("a/./b/.."), ("a".into(), false));
    }

    #[test]
    fn split_parent_gives_dir_and_name() {
        assert_eq!(split_parent(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split_parent(b"c"), (&b""[..], &b"c"[..]));
    }
}
