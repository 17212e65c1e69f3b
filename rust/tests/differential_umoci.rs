//! Differential: crafted layers unpacked by fastdist's applier and by umoci (Debian's, built on
//! Go's archive/tar, the reader containerd, moby and crane share) give identical trees. The
//! layers put header-only entries (hard link, symlink, char, block, directory, fifo, an old-style
//! `'\0'` directory) with a non-zero size — in the ustar field or a PAX `size` — in front of
//! bytes that are a complete further entry: a reader that skips "their data" hides that entry.
//!
//! Needs root (device nodes, owners) and `umoci` (installed by scripts/setup.sh); fails loudly
//! without umoci rather than passing without a comparison.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{apply, snapshot, Tar, Tree, E};
use fastdist_core::apply::Mode;
use fastdist_core::digest::Sha256;

fn sha(data: &[u8]) -> String {
    let mut s = Sha256::new();
    s.update(data);
    s.digest()
}

/// Write `blob` into the layout's blob store; its descriptor JSON.
fn put_blob(layout: &Path, media_type: &str, blob: &[u8]) -> String {
    let digest = sha(blob);
    let hex = digest.trim_start_matches("sha256:");
    fs::write(layout.join("blobs/sha256").join(hex), blob).expect("blob");
    format!(
        r#"{{"mediaType":"{media_type}","digest":"{digest}","size":{}}}"#,
        blob.len()
    )
}

/// An OCI image layout (image-spec image-layout.md) holding one uncompressed layer as `t`.
fn oci_layout(layout: &Path, tar: &[u8]) {
    fs::create_dir_all(layout.join("blobs/sha256")).expect("layout");
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("oci-layout");
    let layer = put_blob(layout, "application/vnd.oci.image.layer.v1.tar", tar);
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
        sha(tar)
    );
    let config = put_blob(
        layout,
        "application/vnd.oci.image.config.v1+json",
        config.as_bytes(),
    );
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{config},"layers":[{layer}]}}"#
    );
    let manifest = put_blob(
        layout,
        "application/vnd.oci.image.manifest.v1+json",
        manifest.as_bytes(),
    );
    let entry = manifest.trim_end_matches('}').to_owned()
        + r#","annotations":{"org.opencontainers.image.ref.name":"t"}}"#;
    fs::write(
        layout.join("index.json"),
        format!(r#"{{"schemaVersion":2,"manifests":[{entry}]}}"#),
    )
    .expect("index.json");
}

/// The tree umoci unpacks from `tar`, and the one fastdist applies.
fn both(tar: &[u8]) -> (Tree, Tree) {
    let tmp = tempfile::tempdir().expect("tmp");
    let layout = tmp.path().join("layout");
    oci_layout(&layout, tar);
    let theirs = tmp.path().join("umoci");
    let out = Command::new("umoci")
        .arg("raw")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:t", layout.display()))
        .arg(&theirs)
        .output()
        .expect("umoci is not installed (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "umoci raw unpack failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ours = tmp.path().join("fastdist");
    fs::create_dir(&ours).expect("ours");
    apply(tar, &ours, Mode::Flatten).expect("fastdist applies the layer");
    let mut a = snapshot(&ours, &[]);
    let mut b = snapshot(&theirs, &[]);
    // The root directory is the unpacker's own (umoci creates it, we are given it).
    a.remove("");
    b.remove("");
    (a, b)
}

fn smuggled(name: &str, content: &[u8]) -> Vec<u8> {
    let mut t = Tar::new();
    t.push(&E::file(name, content));
    assert_eq!(t.buf.len(), 1024);
    t.buf
}

fn sized(mut e: E, size: u64) -> E {
    e.size = Some(size);
    e
}

fn layer_with(e: E) -> Vec<u8> {
    let mut t = Tar::new()
        .add(E::dir("etc"))
        .add(E::file("etc/base", b"base content\n"));
    t.push(&e);
    t.raw(&smuggled("etc/smuggled", b"seen by Go's reader\n"))
        .add(E::file("etc/after", b"after\n"))
        .finish()
}

#[test]
fn header_only_entries_with_a_size_unpack_as_umoci_unpacks_them() {
    let cases = [
        ("dir", sized(E::dir("etc/d"), 1024)),
        ("symlink", sized(E::symlink("etc/s", "base"), 1024)),
        ("hardlink", sized(E::hardlink("etc/h", "etc/base"), 1024)),
        ("fifo", sized(E::fifo("etc/p"), 1024)),
        ("char", sized(E::chardev("etc/c", 1, 3), 1024)),
        ("block", sized(E::blockdev("etc/b", 7, 0), 1024)),
        ("old-style dir", sized(E::dir("etc/od/").typ(0), 1024)),
        (
            "pax size on a symlink",
            E::symlink("etc/ps", "base").pax("size", b"1024"),
        ),
        (
            "pax size on a directory",
            E::dir("etc/pd").pax("size", b"1536"),
        ),
    ];
    for (what, e) in cases {
        let (ours, theirs) = both(&layer_with(e));
        assert!(
            theirs.contains_key("etc/smuggled"),
            "{what}: umoci reads the entry after a header-only one"
        );
        assert_eq!(ours, theirs, "{what}: fastdist and umoci disagree");
    }
}

#[test]
fn a_plain_layer_unpacks_as_umoci_unpacks_it() {
    // The control: the comparison itself sees modes, owners, links and devices.
    let t = Tar::new()
        .add(E::dir("d").mode(0o750).owner(1000, 1000))
        .add(E::file("d/f", b"data").mode(0o4755))
        .add(E::symlink("d/l", "f"))
        .add(E::hardlink("d/h", "d/f"))
        .add(E::fifo("p"))
        .add(E::chardev("null", 1, 3))
        .add(E::file("big", &vec![7u8; 5000]))
        .finish();
    let (ours, theirs) = both(&t);
    assert_eq!(ours.len(), 7, "{:?}", ours.keys());
    assert_eq!(ours, theirs);
}

#[test]
fn empty_pax_values_unpack_as_umoci_unpacks_them() {
    let t = Tar::new()
        .add(E::dir("etc"))
        .add(E::file("etc/named", b"by its header\n").pax("path", b""))
        .add(E::symlink("etc/l", "named").pax("linkpath", b""))
        .add(
            E::file("etc/sized", b"four")
                .pax("size", b"")
                .pax("mtime", b""),
        )
        .finish();
    let (ours, theirs) = both(&t);
    assert!(theirs.contains_key("etc/named"), "{:?}", theirs.keys());
    assert_eq!(ours, theirs);
}
