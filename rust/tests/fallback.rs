//! The openat2-less resolver (component-by-component O_NOFOLLOW walk) gives the same in-root
//! answers as openat2 RESOLVE_IN_ROOT. Every test in this binary forces the walk.

mod common;

use std::fs;

use common::{apply, node, Tar, Work, E};
use fastdist_core::apply::Mode;
use fastdist_core::error::Error;
use fastdist_core::safepath::force_component_walk;

#[test]
fn walk_resolves_absolute_and_relative_symlinks_inside_root() {
    force_component_walk(true);
    let w = Work::new();
    let t = Tar::new()
        .add(E::dir("run"))
        .add(E::dir("var"))
        .add(E::symlink("var/run", "/run"))
        .add(E::file("var/run/x", b"pid"))
        .add(E::symlink("up", "../../.."))
        .add(E::file("up/sentinel/secret", b"pwned"))
        .add(E::symlink("out", &w.sentinel.display().to_string()))
        .add(E::file("out/x", b"pwned"))
        .add(E::symlink("lib", "usr/lib"))
        .add(E::file("lib/y", b"y"))
        .finish();
    apply(&t, &w.root, Mode::Flatten).expect("apply");
    assert_eq!(fs::read(w.p("run/x")).unwrap(), b"pid");
    assert_eq!(fs::read(w.p("sentinel/secret")).unwrap(), b"pwned");
    let inside = w.root.join(w.sentinel.strip_prefix("/").unwrap()).join("x");
    assert_eq!(fs::read(inside).unwrap(), b"pwned");
    assert_eq!(fs::read(w.p("usr/lib/y")).unwrap(), b"y");
    w.assert_sentinel_intact();
}

#[test]
fn walk_refuses_symlink_loops_and_whiteouts_stay_inside() {
    force_component_walk(true);
    let w = Work::new();
    let t = Tar::new()
        .add(E::symlink("a", "b"))
        .add(E::symlink("b", "a"))
        .add(E::file("a/x", b"x"))
        .finish();
    let r = apply(&t, &w.root, Mode::Flatten);
    assert!(matches!(r, Err(Error::Io { .. })), "{r:?}");
    let t = Tar::new()
        .add(E::symlink("out", &w.sentinel.display().to_string()))
        .add(E::file("out/.wh.secret", b""))
        .add(E::symlink("up", ".."))
        .add(E::file("up/.wh.sentinel", b""))
        .add(E::dir("d"))
        .add(E::symlink("d", "/"))
        .add(E::file("d/top", b"t"))
        .finish();
    apply(&t, &w.root, Mode::Flatten).expect("apply");
    assert_eq!(fs::read(w.p("top")).unwrap(), b"t");
    assert_eq!(node(&w.p("d")).kind, "symlink");
    w.assert_sentinel_intact();
}
