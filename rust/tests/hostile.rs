//! Hostile layers: path escapes, link tricks, bad whiteouts, smuggled xattrs and bombs. Every
//! test asserts the outcome (error variant, or where the entry landed inside the root) and that
//! the sentinel directory beside the destination is unchanged.

mod common;

use std::fs;

use common::{apply, node, opts, Tar, Work, E};
use fastdist_core::apply::{apply_tar, ApplyOptions, Mode};
use fastdist_core::error::Error;

fn abs(w: &Work, rel: &str) -> String {
    format!("{}/{rel}", w.sentinel.display())
}

fn with_limits(f: impl FnOnce(&mut fastdist_core::limits::Limits)) -> ApplyOptions {
    let mut o = opts(Mode::Flatten);
    f(&mut o.limits);
    o
}

fn is_unsafe(r: &Result<fastdist_core::apply::ApplyStats, Error>) -> bool {
    matches!(r, Err(Error::UnsafePath { .. }))
}

fn is_corrupt(r: &Result<fastdist_core::apply::ApplyStats, Error>) -> bool {
    matches!(r, Err(Error::Corrupt { .. }))
}

fn limit_name(r: &Result<fastdist_core::apply::ApplyStats, Error>) -> Option<&'static str> {
    match r {
        Err(Error::Limit { limit, .. }) => Some(limit),
        _ => None,
    }
}

#[test]
fn dotdot_traversal_is_clamped_inside_root() {
    let w = Work::new();
    let t = Tar::new()
        .add(E::file("../sentinel/secret", b"pwned"))
        .add(E::file("a/../../../sentinel/x", b"pwned"))
        .finish();
    for mode in [Mode::Flatten, Mode::Layer] {
        apply(&t, &w.root, mode).expect("clamped paths apply");
    }
    assert_eq!(fs::read(w.p("sentinel/secret")).unwrap(), b"pwned");
    assert_eq!(fs::read(w.p("sentinel/x")).unwrap(), b"pwned");
    w.assert_sentinel_intact();
}

#[test]
fn absolute_path_lands_inside_root() {
    // Both modes: Layer (overlayfs) creates files from the root in one openat2.
    for mode in [Mode::Flatten, Mode::Layer] {
        let w = Work::new();
        let name = abs(&w, "secret");
        let t = Tar::new().add(E::file(&name, b"pwned")).finish();
        apply(&t, &w.root, mode).expect("absolute names are relative to the root");
        let inside = w.root.join(name.trim_start_matches('/'));
        assert_eq!(fs::read(inside).unwrap(), b"pwned");
        w.assert_sentinel_intact();
    }
}

#[test]
fn write_through_absolute_symlink_stays_inside_root() {
    // Both modes: Layer (overlayfs) creates files from the root in one openat2.
    for mode in [Mode::Flatten, Mode::Layer] {
        let w = Work::new();
        let target = w.sentinel.display().to_string();
        let t = Tar::new()
            .add(E::symlink("evil", &target))
            .add(E::file("evil/secret", b"pwned"))
            .finish();
        // The symlink resolves to <root><sentinel>, created inside the root like any dangling
        // symlink's target.
        apply(&t, &w.root, mode).expect("in-root resolution");
        let inside = w.root.join(target.trim_start_matches('/')).join("secret");
        assert_eq!(fs::read(inside).unwrap(), b"pwned");
        assert_eq!(node(&w.p("evil")).kind, "symlink");
        w.assert_sentinel_intact();
    }
}

#[test]
fn write_through_relative_symlink_climbing_out_stays_inside_root() {
    // Both modes: Layer (overlayfs) creates files from the root in one openat2.
    for mode in [Mode::Flatten, Mode::Layer] {
        let w = Work::new();
        let t = Tar::new()
            .add(E::symlink("evil", "../../.."))
            .add(E::file("evil/sentinel/secret", b"pwned"))
            .add(E::symlink("evil2", "../sentinel"))
            .add(E::file("sentinel/x", b"inside"))
            .add(E::file("evil2/x", b"through evil2"))
            .finish();
        apply(&t, &w.root, mode).expect("in-root resolution");
        assert_eq!(fs::read(w.p("sentinel/secret")).unwrap(), b"pwned");
        assert_eq!(fs::read(w.p("sentinel/x")).unwrap(), b"through evil2");
        w.assert_sentinel_intact();
    }
}

#[test]
fn file_replacing_symlink_does_not_write_through_it() {
    // Both modes: Layer (overlayfs) creates files from the root in one openat2.
    for mode in [Mode::Flatten, Mode::Layer] {
        let w = Work::new();
        let t = Tar::new()
            .add(E::symlink("evil", &abs(&w, "secret")))
            .add(E::file("evil", b"pwned"))
            .add(E::symlink("rel", "../sentinel/x"))
            .add(E::file("rel", b"pwned"))
            .finish();
        apply(&t, &w.root, mode).expect("replace");
        assert_eq!(node(&w.p("evil")).kind, "file");
        assert_eq!(fs::read(w.p("rel")).unwrap(), b"pwned");
        w.assert_sentinel_intact();
    }
}

#[test]
fn metadata_entries_never_touch_symlink_targets() {
    // Both modes: Layer (overlayfs) creates files from the root in one openat2.
    for mode in [Mode::Flatten, Mode::Layer] {
        let w = Work::new();
        // Directory / fifo / hardlink entries named like a symlink to the outside: a naive applier
        // would chmod/chown/utime the target.
        let t = Tar::new()
            .add(E::symlink("d", &abs(&w, "dir")))
            .add(E::dir("d").mode(0o777).owner(1234, 1234).mtime(1))
            .add(E::symlink("s", &abs(&w, "secret")))
            .add(E::fifo("s").mode(0o777).owner(1234, 1234).mtime(1))
            .add(E::symlink("r", "../sentinel/x"))
            .add(E::symlink("r", "../sentinel/x").owner(1234, 1234).mtime(1))
            .finish();
        apply(&t, &w.root, mode).expect("apply");
        assert_eq!(node(&w.p("d")).kind, "dir");
        assert_eq!(node(&w.p("s")).kind, "fifo");
        let r = node(&w.p("r"));
        assert_eq!((r.kind, r.uid, r.mtime.0), ("symlink", 1234, 1));
        w.assert_sentinel_intact();
    }
}

#[test]
fn hardlink_to_outside_is_refused() {
    // Both modes: Layer (overlayfs) creates files from the root in one openat2.
    for mode in [Mode::Flatten, Mode::Layer] {
        let w = Work::new();
        let dotdot = Tar::new()
            .add(E::hardlink("h", "../sentinel/secret"))
            .finish();
        let r = apply(&dotdot, &w.root, mode);
        assert!(is_unsafe(&r), "{r:?}");

        // Absolute target: resolved inside the root, where it does not exist.
        let absolute = Tar::new()
            .add(E::hardlink("h", &abs(&w, "secret")))
            .finish();
        let r = apply(&absolute, &w.root, mode);
        assert!(is_corrupt(&r), "{r:?}");

        // Through a symlinked parent pointing out.
        let via = Tar::new()
            .add(E::symlink("out", &w.sentinel.display().to_string()))
            .add(E::hardlink("h", "out/secret"))
            .finish();
        let r = apply(&via, &w.root, mode);
        assert!(is_corrupt(&r), "{r:?}");
        let via_rel = Tar::new()
            .add(E::symlink("up", "../.."))
            .add(E::hardlink("h2", "up/sentinel/secret"))
            .finish();
        let r = apply(&via_rel, &w.root, mode);
        assert!(is_corrupt(&r), "{r:?}");
        assert_eq!(node(&w.sentinel.join("secret")).kind, "file");
        w.assert_sentinel_intact();
    }
}

#[test]
fn hardlink_to_directory_is_refused() {
    let w = Work::new();
    let t = Tar::new()
        .add(E::dir("d"))
        .add(E::hardlink("h", "d"))
        .finish();
    let r = apply(&t, &w.root, Mode::Flatten);
    assert!(is_unsafe(&r), "{r:?}");
    w.assert_sentinel_intact();
}

#[test]
fn dir_replaced_by_symlink_mid_layer_is_not_written_through() {
    // Both modes: Layer (overlayfs) creates files from the root in one openat2.
    for mode in [Mode::Flatten, Mode::Layer] {
        let w = Work::new();
        let t = Tar::new()
            .add(E::dir("d"))
            .add(E::file("d/a", b"a"))
            .add(E::symlink("d", "../sentinel"))
            .add(E::file("d/secret", b"pwned"))
            .finish();
        apply(&t, &w.root, mode).expect("apply");
        // d -> ../sentinel resolves to <root>/sentinel.
        assert_eq!(fs::read(w.p("sentinel/secret")).unwrap(), b"pwned");
        assert!(!w.p("sentinel/a").exists());
        w.assert_sentinel_intact();

        let w = Work::new();
        let t = Tar::new()
            .add(E::dir("d"))
            .add(E::file("d/a", b"a"))
            .add(E::symlink("d", "/"))
            .add(E::file("d/x", b"at root"))
            .finish();
        apply(&t, &w.root, mode).expect("apply");
        assert_eq!(fs::read(w.p("x")).unwrap(), b"at root");
        assert_eq!(node(&w.p("d")).kind, "symlink");
        w.assert_sentinel_intact();
    }
}

#[test]
fn removing_a_dir_does_not_follow_symlinks_inside_it() {
    // Both modes: Layer (overlayfs) creates files from the root in one openat2.
    for mode in [Mode::Flatten, Mode::Layer] {
        let w = Work::new();
        let t = Tar::new()
            .add(E::dir("d"))
            .add(E::symlink("d/out", &w.sentinel.display().to_string()))
            .add(E::symlink("d/rel", "../../sentinel"))
            .add(E::file("d", b"now a file"))
            .finish();
        apply(&t, &w.root, mode).expect("apply");
        assert_eq!(fs::read(w.p("d")).unwrap(), b"now a file");
        w.assert_sentinel_intact();
    }
}

#[test]
fn bad_whiteout_names_are_refused() {
    for mode in [Mode::Flatten, Mode::Layer] {
        for name in [
            ".wh.",
            ".wh..wh.foo",
            ".wh...",
            ".wh..",
            "a/.wh.",
            "a/.wh..wh.x",
        ] {
            let w = Work::new();
            let t = Tar::new().add(E::file(name, b"")).finish();
            let r = apply(&t, &w.root, mode);
            assert!(is_unsafe(&r), "{name}: {r:?}");
            w.assert_sentinel_intact();
        }
    }
}

#[test]
fn whiteout_climbing_out_is_refused() {
    let w = Work::new();
    let t = Tar::new().add(E::file("../.wh.sentinel", b"")).finish();
    let r = apply(&t, &w.root, Mode::Flatten);
    assert!(is_unsafe(&r), "{r:?}");
    let t = Tar::new()
        .add(E::file("../sentinel/.wh.secret", b""))
        .finish();
    let r = apply(&t, &w.root, Mode::Flatten);
    assert!(is_unsafe(&r), "{r:?}");
    w.assert_sentinel_intact();
}

#[test]
fn whiteout_through_symlink_deletes_only_inside_root() {
    let w = Work::new();
    fs::create_dir(w.p("sentinel")).unwrap();
    fs::write(w.p("sentinel/secret"), b"inside").unwrap();
    let t = Tar::new()
        .add(E::symlink("out", &w.sentinel.display().to_string()))
        .add(E::file("out/.wh.secret", b""))
        .add(E::symlink("up", "../.."))
        .add(E::file("up/sentinel/.wh.secret", b""))
        .add(E::file("up/.wh.sentinel", b""))
        .finish();
    apply(&t, &w.root, Mode::Flatten).expect("apply");
    assert!(!w.p("sentinel").exists());
    w.assert_sentinel_intact();
}

#[test]
fn whiteout_named_like_a_directory_component_is_refused() {
    let w = Work::new();
    let t = Tar::new().add(E::file(".wh.a/b", b"x")).finish();
    let r = apply(&t, &w.root, Mode::Flatten);
    assert!(is_unsafe(&r), "{r:?}");
    w.assert_sentinel_intact();
}

#[test]
fn trusted_overlay_xattrs_are_stripped() {
    for mode in [Mode::Flatten, Mode::Layer] {
        let w = Work::new();
        let t = Tar::new()
            .add(
                E::dir("d")
                    .xattr("trusted.overlay.opaque", b"y")
                    .xattr("trusted.overlay.redirect", b"/etc"),
            )
            .add(E::file("d/f", b"x").xattr("trusted.overlay.metacopy", b""))
            .add(E::file("d/g", b"x").xattr("user.ok", b"1"))
            .finish();
        apply(&t, &w.root, mode).expect("apply");
        assert!(node(&w.p("d"))
            .xattrs
            .keys()
            .all(|k| !k.starts_with("trusted.overlay.")));
        assert!(node(&w.p("d/f")).xattrs.is_empty());
        assert_eq!(
            node(&w.p("d/g")).xattrs.get("user.ok").map(Vec::as_slice),
            Some(&b"1"[..])
        );
        w.assert_sentinel_intact();
    }
}

#[test]
fn device_with_absurd_numbers_is_refused() {
    let w = Work::new();
    let t = Tar::new().add(E::chardev("dev", 0o7777777, 1)).finish();
    assert!(is_corrupt(&apply(&t, &w.root, Mode::Flatten)));
    let t = Tar::new().add(E::blockdev("dev", 1, 1 << 20)).finish();
    assert!(is_corrupt(&apply(&t, &w.root, Mode::Flatten)));
    w.assert_sentinel_intact();
}

#[test]
fn oversized_pax_header_is_refused_before_reading_it() {
    let w = Work::new();
    // Claims 1 TiB; nothing follows. Must fail on the limit, not on a truncated read / OOM.
    let t = Tar::new().meta_claiming(b'x', 1 << 40).unterminated();
    let r = apply(&t, &w.root, Mode::Flatten);
    assert_eq!(limit_name(&r), Some("max_header_bytes"), "{r:?}");
    let big = "p/".repeat(1000);
    let t = Tar::new()
        .add(E::file("f", b"").pax("path", big.as_bytes()))
        .finish();
    let o = with_limits(|l| l.max_header_bytes = 1024);
    let r = apply_tar(&t[..], &w.root, &o);
    assert_eq!(limit_name(&r), Some("max_header_bytes"), "{r:?}");
    w.assert_sentinel_intact();
}

#[test]
fn oversized_gnu_long_name_and_link_are_refused() {
    let w = Work::new();
    for typ in [b'L', b'K'] {
        let t = Tar::new().meta_claiming(typ, 64 << 20).unterminated();
        let r = apply(&t, &w.root, Mode::Flatten);
        assert_eq!(limit_name(&r), Some("max_header_bytes"), "{r:?}");
    }
    w.assert_sentinel_intact();
}

#[test]
fn entry_count_limit_is_enforced() {
    let w = Work::new();
    let mut t = Tar::new();
    for i in 0..5 {
        t = t.add(E::file(&format!("f{i}"), b"x"));
    }
    let r = apply_tar(
        &t.finish()[..],
        &w.root,
        &with_limits(|l| l.max_entries = 3),
    );
    assert_eq!(limit_name(&r), Some("max_entries"), "{r:?}");
    w.assert_sentinel_intact();
}

#[test]
fn layer_and_entry_byte_limits_are_enforced() {
    let w = Work::new();
    let t = Tar::new().add(E::file("big", &[7u8; 20_000])).finish();
    let r = apply_tar(
        &t[..],
        &w.root,
        &with_limits(|l| l.max_layer_bytes = 10_000),
    );
    assert_eq!(limit_name(&r), Some("max_layer_bytes"), "{r:?}");
    let r = apply_tar(&t[..], &w.root, &with_limits(|l| l.max_entry_bytes = 100));
    assert_eq!(limit_name(&r), Some("max_entry_bytes"), "{r:?}");
    w.assert_sentinel_intact();
}

#[test]
fn path_depth_and_length_limits_are_enforced() {
    let w = Work::new();
    let t = Tar::new().add(E::file("a/b/c/d/e", b"x")).finish();
    let r = apply_tar(&t[..], &w.root, &with_limits(|l| l.max_path_depth = 4));
    assert_eq!(limit_name(&r), Some("max_path_depth"), "{r:?}");
    let long = "n".repeat(300);
    let t = Tar::new().add(E::file(&long, b"x").long_name()).finish();
    let r = apply_tar(&t[..], &w.root, &with_limits(|l| l.max_path_len = 255));
    assert_eq!(limit_name(&r), Some("max_path_len"), "{r:?}");
    let t = Tar::new().add(E::symlink("s", &long).long_link()).finish();
    let r = apply_tar(&t[..], &w.root, &with_limits(|l| l.max_path_len = 255));
    assert_eq!(limit_name(&r), Some("max_path_len"), "{r:?}");
    w.assert_sentinel_intact();
}

#[test]
fn truncated_streams_are_corrupt_and_name_the_entry() {
    let w = Work::new();
    let full = Tar::new()
        .add(E::file("first", b"1"))
        .add(E::file("victim", &[1u8; 5000]))
        .finish();
    // Cut inside victim's data, inside its header, and just before the trailer.
    for cut in [512 * 2 + 512 + 100, 512 * 2 + 200, full.len() - 1024] {
        let r = apply(&full[..cut], &w.root, Mode::Flatten);
        match &r {
            Err(Error::Corrupt { entry, .. }) => assert!(entry.is_some(), "{r:?}"),
            _ => panic!("cut at {cut}: {r:?}"),
        }
    }
    w.assert_sentinel_intact();
}

#[test]
fn garbage_after_the_end_is_corrupt() {
    let w = Work::new();
    let mut t = Tar::new().add(E::file("f", b"x")).finish();
    t.extend_from_slice(&[0u8; 4096]);
    apply(&t, &w.root, Mode::Flatten).expect("zero padding after the end is fine");
    t.extend_from_slice(b"garbage");
    let r = apply(&t, &w.root, Mode::Flatten);
    assert!(is_corrupt(&r), "{r:?}");
    w.assert_sentinel_intact();
}

#[test]
fn bad_checksum_is_corrupt() {
    let w = Work::new();
    let mut e = E::file("f", b"x");
    e.bad_checksum = true;
    let r = apply(&Tar::new().add(e).finish(), &w.root, Mode::Flatten);
    assert!(is_corrupt(&r), "{r:?}");
    assert!(!w.p("f").exists());
    w.assert_sentinel_intact();
}

#[test]
fn sparse_and_unknown_entry_types_are_refused() {
    let w = Work::new();
    for typ in [b'S', b'V', b'M', b'Z'] {
        let t = Tar::new().add(E::file("odd", b"").typ(typ)).finish();
        let r = apply(&t, &w.root, Mode::Flatten);
        match &r {
            Err(Error::Corrupt { entry, .. }) => assert_eq!(entry.as_deref(), Some("odd")),
            _ => panic!("{r:?}"),
        }
    }
    let t = Tar::new()
        .add(E::file("sp", b"").pax("GNU.sparse.major", b"1"))
        .finish();
    assert!(is_corrupt(&apply(&t, &w.root, Mode::Flatten)));
    w.assert_sentinel_intact();
}

#[test]
fn symlink_loop_in_parents_fails_cleanly() {
    let w = Work::new();
    let t = Tar::new()
        .add(E::symlink("a", "b"))
        .add(E::symlink("b", "a"))
        .add(E::file("a/x", b"x"))
        .finish();
    let r = apply(&t, &w.root, Mode::Flatten);
    assert!(matches!(r, Err(Error::Io { .. })), "{r:?}");
    w.assert_sentinel_intact();
}

#[test]
fn entry_naming_the_root_must_be_a_directory() {
    let w = Work::new();
    let r = apply(
        &Tar::new().add(E::file("./", b"x")).finish(),
        &w.root,
        Mode::Flatten,
    );
    assert!(is_unsafe(&r), "{r:?}");
    let r = apply(
        &Tar::new().add(E::symlink("/", "/etc")).finish(),
        &w.root,
        Mode::Flatten,
    );
    assert!(is_unsafe(&r), "{r:?}");
    w.assert_sentinel_intact();
}
