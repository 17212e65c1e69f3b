//! Every path resolved inside the snapshot root through directory fds (design.md §7).
//!
//! Entry names are first normalised lexically (`normalize`): leading `/` and `./` stripped,
//! `.` dropped, `..` clamped at the root as if the root were `/` (containerd's behaviour).
//! Directories are then opened with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` from the
//! root fd, so symlinks met on the way (relative or absolute, e.g. `var/run -> /run`) resolve
//! inside the root. Where openat2 is missing (ENOSYS) a component-by-component `O_NOFOLLOW` walk
//! resolves symlinks itself, with the same in-root semantics. The final component of an entry is
//! never resolved here: callers operate on it with `*at` calls relative to the parent fd.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{Mode, OFlags, ResolveFlags};
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
