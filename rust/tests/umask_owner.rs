//! Modes and owners come out exactly as the tar says whatever the umask, set-gid directories
//! and default ACLs do to a new file, in both modes. The applier creates a file that will be
//! ours with its final permission bits and skips `fchown`/`fchmod` when `fstat` shows the
//! kernel gave it the right owner and mode; these are the cases where it does not.
//!
//! One test in its own binary: it sets the process umask, which every thread shares.

mod common;

use std::path::Path;

use common::{apply, node, Tar, Work, E};
use fastdist_core::apply::Mode;

/// A POSIX ACL in its xattr form (version 2, then tag/perm/id entries): u::rwx g::r-x o::---.
fn acl_user_rwx_group_rx_other_none() -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm) in [(0x01u16, 7u16), (0x04, 5), (0x20, 0)] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&u32::MAX.to_le_bytes());
    }
    v
}

fn files() -> Vec<(&'static str, u32, u64, u64)> {
    vec![
        ("f644", 0o644, 0, 0),
        ("f755", 0o755, 0, 0),
        ("f444", 0o444, 0, 0),
        ("f600", 0o600, 0, 0),
        ("f777", 0o777, 0, 0),
        ("f4755", 0o4755, 0, 0),
        ("f2755", 0o2755, 0, 0),
        ("f1777", 0o1777, 0, 0),
        ("user", 0o644, 1000, 1000),
        ("group", 0o644, 0, 1000),
    ]
}

/// The files alone, applied over the tree of `layer` in Flatten mode: now the set-gid
/// directory really is set-gid (a directory's mode lands at the end of its layer).
fn files_layer() -> Vec<u8> {
    let mut t = Tar::new();
    for dir in ["plain", "sgid", "acl"] {
        for (name, mode, uid, gid) in files() {
            let e = E::file(&format!("{dir}/{name}"), name.as_bytes());
            t = t.add(e.mode(mode).owner(uid, gid));
        }
    }
    t.finish()
}

fn layer(acl: bool) -> Vec<u8> {
    let mut t = Tar::new().add(E::dir("plain"));
    // A set-gid directory of group 1000: a new file in it gets group 1000 unless chowned.
    t = t.add(E::dir("sgid").mode(0o2775).owner(0, 1000));
    let mut d = E::dir("acl");
    if acl {
        d = d.xattr(
            "system.posix_acl_default",
            &acl_user_rwx_group_rx_other_none(),
        );
    }
    t = t.add(d);
    for dir in ["plain", "sgid", "acl"] {
        for (name, mode, uid, gid) in files() {
            let e = E::file(&format!("{dir}/{name}"), name.as_bytes());
            t = t.add(e.mode(mode).owner(uid, gid));
        }
    }
    t.finish()
}

fn check(root: &Path, what: &str) {
    for dir in ["plain", "sgid", "acl"] {
        for (name, mode, uid, gid) in files() {
            let n = node(&root.join(dir).join(name));
            assert_eq!(
                (n.mode, n.uid, n.gid),
                (mode, uid as u32, gid as u32),
                "{what}: {dir}/{name}"
            );
            assert_eq!(n.content, name.as_bytes(), "{what}: {dir}/{name}");
        }
    }
}

/// Whether the filesystem of the test directories takes default ACLs.
fn acl_supported() -> bool {
    let probe = tempfile::tempdir().expect("tempdir");
    xattr_set(probe.path(), &acl_user_rwx_group_rx_other_none())
}

fn xattr_set(path: &Path, value: &[u8]) -> bool {
    rustix::fs::setxattr(
        path,
        "system.posix_acl_default",
        value,
        rustix::fs::XattrFlags::empty(),
    )
    .is_ok()
}

#[test]
fn modes_and_owners_are_exact_under_any_umask_setgid_dir_and_default_acl() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root (chown)");
        return;
    }
    let acl = acl_supported();
    for umask in [0o022, 0o077, 0o000, 0o277] {
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(umask));
        for mode in [Mode::Layer, Mode::Flatten] {
            let w = Work::new();
            apply(&layer(acl), &w.root, mode).expect("apply");
            check(&w.root, &format!("umask {umask:o}, {mode:?}, acl {acl}"));
            if mode == Mode::Flatten {
                apply(&files_layer(), &w.root, mode).expect("apply over");
                check(
                    &w.root,
                    &format!("umask {umask:o}, second layer, acl {acl}"),
                );
            }
            w.assert_sentinel_intact();

            // The destination itself has a default ACL: nothing may rely on the umask.
            if acl {
                let w = Work::new();
                assert!(xattr_set(&w.root, &acl_user_rwx_group_rx_other_none()));
                apply(&layer(false), &w.root, mode).expect("apply under an ACL");
                check(
                    &w.root,
                    &format!("umask {umask:o}, {mode:?}, ACL on the root"),
                );
            }
        }
    }
}
