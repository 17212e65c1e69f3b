//! The end-of-layer pass that gives directories their mode and mtime (they are created 0700 so
//! that a read-only mode cannot stop later entries): a directory that a later entry removed or
//! replaced is skipped, any other failure to reach one is an error naming it — never a
//! directory silently left at 0700.
//!
//! In a binary of its own: the deep-path test relies on the applier's directory cache being
//! evicted, and no other test here forces the openat2-less resolver.

mod common;

use common::{apply, node, opts, Tar, Work, E};
use fastdist_core::apply::{apply_tar, Mode};
use fastdist_core::error::Error;

#[test]
fn directories_removed_or_replaced_later_in_the_layer_are_skipped() {
    for mode in [Mode::Flatten, Mode::Layer] {
        let w = Work::new();
        let t = Tar::new()
            .add(E::dir("to-file").mode(0o751))
            .add(E::dir("to-file/sub").mode(0o751))
            .add(E::dir("to-link").mode(0o751))
            .add(E::dir("to-link/sub").mode(0o751))
            .add(E::dir("loop").mode(0o751))
            .add(E::dir("loop/sub").mode(0o751))
            .add(E::dir("kept").mode(0o751))
            .add(E::file("to-file", b"now a file"))
            .add(E::symlink("to-link", "kept"))
            .add(E::symlink("loop", "loop"))
            .finish();
        // ENOTDIR (a file now, or under one), ELOOP (a symlink now, or a loop on the way) and
        // ENOENT (`to-link/sub` resolves to `kept/sub`): nothing left to set.
        apply(&t, &w.root, mode).expect("apply");
        assert_eq!(node(&w.p("to-file")).kind, "file");
        assert_eq!(node(&w.p("to-link")).kind, "symlink");
        assert_eq!(node(&w.p("loop")).kind, "symlink");
        assert_eq!(node(&w.p("kept")).mode, 0o751);
        assert!(!w.p("kept/sub").exists());
        w.assert_sentinel_intact();
    }
}

#[test]
fn a_directory_the_final_pass_cannot_open_is_an_error_naming_it() {
    // Directories nested past PATH_MAX (allowed by a raised max_path_len) are created through
    // their parents' cached fds, but the final pass reaches them by path once the cache has
    // moved on: ENAMETOOLONG. That used to be skipped like a removed directory, leaving them
    // 0700; it must fail, naming the directory.
    let w = Work::new();
    let comp = "d".repeat(200);
    let mut path = String::new();
    let mut t = Tar::new();
    for _ in 0..25 {
        if !path.is_empty() {
            path.push('/');
        }
        path.push_str(&comp);
        t = t.add(E::dir(&path).mode(0o755).long_name());
    }
    assert!(path.len() > 4096);
    // Enough other directories afterwards to evict the deep ones from the cache.
    for i in 0..100 {
        t = t.add(E::dir(&format!("s{i}")));
    }
    let mut o = opts(Mode::Layer);
    o.limits.max_path_len = 8192;
    let r = apply_tar(&t.finish()[..], &w.root, &o);
    match r {
        Err(Error::Io {
            op,
            path: p,
            source,
        }) => {
            assert_eq!(op, "open directory");
            assert!(p.starts_with(&comp) && p.len() > 4096, "{p}");
            assert_eq!(source.raw_os_error(), Some(libc::ENAMETOOLONG), "{source}");
        }
        other => panic!("expected an I/O error naming the directory, got {other:?}"),
    }
    w.assert_sentinel_intact();
}

/// Drop this thread (only: raw syscalls, not libc's process-wide wrappers) to uid/gid 65534
/// with no supplementary groups and so no capabilities.
fn become_nobody_on_this_thread() {
    // SAFETY: plain syscalls on integers and a null list; each result is checked.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()),
            0
        );
        assert_eq!(libc::syscall(libc::SYS_setresgid, 65534, 65534, 65534), 0);
        assert_eq!(libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534), 0);
    }
}

#[test]
fn an_unsearchable_directory_mode_lands_after_the_directories_below_it() {
    // As a user without CAP_DAC_OVERRIDE: `a` becomes 0600 (no search bit) at the end of the
    // layer; had it been set first, `a/b` could no longer be opened and kept its 0700.
    if !rustix::process::geteuid().is_root() {
        return; // needs root to become another user; CI runs as root
    }
    let w = Work::new();
    rustix::fs::chmod(w.tmp.path(), rustix::fs::Mode::from_raw_mode(0o755)).expect("chmod");
    std::os::unix::fs::chown(&w.root, Some(65534), Some(65534)).expect("chown");
    let t = Tar::new()
        .add(E::dir("a").mode(0o600))
        .add(E::dir("a/b").mode(0o755))
        .add(E::file("a/b/f", b"x"))
        .add(E::dir("c").mode(0o500))
        .add(E::dir("c/d").mode(0o700))
        .finish();
    let root = w.root.clone();
    let r = std::thread::spawn(move || {
        become_nobody_on_this_thread();
        let mut o = opts(Mode::Layer);
        o.preserve_owner = false;
        apply_tar(&t[..], &root, &o).map(|_| ())
    })
    .join()
    .expect("applier thread");
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(node(&w.p("a")).mode, 0o600);
    assert_eq!(node(&w.p("a/b")).mode, 0o755);
    assert_eq!(node(&w.p("c")).mode, 0o500);
    assert_eq!(node(&w.p("c/d")).mode, 0o700);
    assert_eq!(node(&w.p("a/b/f")).uid, 65534);
    w.assert_sentinel_intact();
}
