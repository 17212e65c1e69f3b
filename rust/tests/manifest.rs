//! The layer manifest: every entry the applier wrote, with the xxh3-128 of each regular file's
//! data computed in the write pass (on the applier's thread for big files, on the finisher's
//! for small ones), checked against the tree on disk in both modes.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;

use common::{apply, Tar, Work, E};
use fastdist_core::apply::Mode;
use fastdist_core::manifest::HEADER;
use xxhash_rust::xxh3::xxh3_128;

/// kind, path → the record's fields (the last record of a path wins).
fn parse(manifest: &[u8]) -> BTreeMap<String, (String, Vec<String>)> {
    assert!(manifest.starts_with(HEADER), "header");
    let text = std::str::from_utf8(&manifest[HEADER.len()..]).expect("ascii");
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<String> = line.split('\t').map(str::to_owned).collect();
        assert_eq!(f.len(), 10, "{line:?}");
        out.insert(f[1].clone(), (f[0].clone(), f));
    }
    out
}

fn layer() -> Vec<u8> {
    let mut t = Tar::new().add(E::dir("etc").mode(0o755).mtime(1_000_000));
    // More than a batch of small files: most are written by the finisher thread.
    for i in 0..100 {
        t = t.add(E::file(
            &format!("etc/f{i}"),
            format!("file {i}\n").as_bytes(),
        ));
    }
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    t.add(E::file("usr/big", &big).mode(0o644).mtime(1_700_000_000))
        .add(E::file("empty", b""))
        .add(E::file("sp ace\t%", b"odd name").xattr("user.k", b"v=1,2"))
        .add(E::symlink("etc/link", "/etc/f1"))
        .add(E::hardlink("etc/hard", "etc/f2"))
        .add(E::file("gone/.wh.x", b""))
        .add(E::file("opq/.wh..wh..opq", b""))
        .finish()
}

fn manifests_match_the_tree(mode: Mode) {
    let w = Work::new();
    let stats = apply(&layer(), &w.root, mode).expect("apply");
    let m = parse(&stats.manifest);
    let mut files = 0;
    for (path, (kind, f)) in &m {
        if kind != "f" {
            continue;
        }
        files += 1;
        let data = fs::read(w.p(path_of(path).as_str())).expect("read");
        assert_eq!(f[7], format!("{:032x}", xxh3_128(&data)), "{path}");
        assert_eq!(f[6], data.len().to_string(), "{path}");
        let md = fs::symlink_metadata(w.p(path_of(path).as_str())).expect("stat");
        assert_eq!(f[2], format!("{:o}", md.mode() & 0o7777), "{path}");
        assert_eq!(
            f[5],
            format!("{}.{:09}", md.mtime(), md.mtime_nsec()),
            "{path}"
        );
    }
    assert_eq!(files, 103);
    assert_eq!(m["usr/big"].1[5], "1700000000.000000000");
    assert_eq!(m["etc/link"].0, "l");
    assert_eq!(m["etc/link"].1[8], "/etc/f1");
    assert_eq!(m["etc/hard"].0, "h");
    assert_eq!(m["etc/hard"].1[8], "etc/f2");
    assert_eq!(m["gone/x"].0, "w");
    assert_eq!(m["opq"].0, "o");
    assert_eq!(m["etc"].0, "d");
    assert_eq!(m["sp%20ace%09%25"].1[9], "user.k=v%3D1%2C2");
}

/// The escaped path of a record back to a path (the test's names only escape these).
fn path_of(escaped: &str) -> String {
    escaped
        .replace("%20", " ")
        .replace("%09", "\t")
        .replace("%25", "%")
}

#[test]
fn layer_mode_manifest_matches_the_tree() {
    manifests_match_the_tree(Mode::Layer);
}

#[test]
fn flatten_mode_manifest_matches_the_tree() {
    manifests_match_the_tree(Mode::Flatten);
}

#[test]
fn a_flipped_byte_changes_the_recorded_fingerprint() {
    let w = Work::new();
    let a = apply(&layer(), &w.root, Mode::Flatten).expect("apply");
    let mut changed = layer();
    // The content of etc/f5 ("file 5\n") is in the tar once: flip its first byte.
    let at = changed
        .windows(7)
        .position(|s| s == b"file 5\n")
        .expect("content");
    changed[at] ^= 1;
    // The header checksum covers only the header: the tar stays valid.
    let w2 = Work::new();
    let b = apply(&changed, &w2.root, Mode::Flatten).expect("apply");
    assert_ne!(
        parse(&a.manifest)["etc/f5"].1[7],
        parse(&b.manifest)["etc/f5"].1[7]
    );
    assert_eq!(
        parse(&a.manifest)["etc/f6"].1[7],
        parse(&b.manifest)["etc/f6"].1[7]
    );
}
