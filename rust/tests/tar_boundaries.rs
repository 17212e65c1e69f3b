//! Where one entry ends and the next begins, as Go's `archive/tar` (containerd, moby, crane,
//! umoci) decides it: header-only entries carry no data whatever their size says, sizes beyond
//! `i64::MAX` are refused, and no size arithmetic wraps. A layer whose entry boundaries were
//! read differently here would unpack to another tree than in containerd (a parser
//! differential: files hidden from one reader, smuggled past a scanner reading with the other).
//! `differential_umoci.rs` checks the same layers against umoci itself.

mod common;

use std::fs;

use common::{apply, header_block, node, opts, Tar, Work, E};
use fastdist_core::apply::{apply_tar, Mode};
use fastdist_core::error::Error;
use fastdist_core::limits::Limits;
use fastdist_core::tar::{EntryMeta, Kind, TarReader};

/// A whole file entry (header + one block of data): 1024 bytes that a reader which skips a
/// header-only entry's claimed data would swallow.
fn smuggled(name: &str, content: &[u8]) -> Vec<u8> {
    let mut t = Tar::new();
    t.push(&E::file(name, content));
    assert_eq!(t.buf.len(), 1024);
    t.buf
}

/// Every header-only type, each claiming 1024 bytes of data, written the ways a header can
/// claim them: the ustar size field, a PAX `size`, and a `'\0'` entry named `d/`.
fn header_only_cases() -> Vec<(&'static str, E)> {
    let sized = |e: E| {
        let mut e = e;
        e.size = Some(1024);
        e
    };
    vec![
        ("dir", sized(E::dir("d"))),
        ("symlink", sized(E::symlink("s", "target"))),
        ("hardlink", sized(E::hardlink("h", "base"))),
        ("fifo", sized(E::fifo("p"))),
        ("char", sized(E::chardev("c", 1, 3))),
        ("block", sized(E::blockdev("b", 7, 0))),
        ("old-style dir", sized(E::dir("od/").typ(0))),
        (
            "pax size on a symlink",
            E::symlink("ps", "target").pax("size", b"1024"),
        ),
    ]
}

#[test]
fn header_only_entries_with_a_size_carry_no_data() {
    for (what, e) in header_only_cases() {
        let w = Work::new();
        let mut t = Tar::new().add(E::file("base", b"base"));
        t.push(&e);
        let t = t
            .raw(&smuggled("smuggled", b"next header"))
            .add(E::file("after", b"after"))
            .finish();
        let r = apply(&t, &w.root, Mode::Flatten);
        assert!(r.is_ok(), "{what}: {r:?}");
        assert_eq!(
            fs::read(w.p("smuggled")).ok().as_deref(),
            Some(&b"next header"[..]),
            "{what}: the header after a header-only entry is the next entry"
        );
        assert_eq!(fs::read(w.p("after")).expect("after"), b"after", "{what}");
        w.assert_sentinel_intact();
    }
}

#[test]
fn reader_reports_no_data_for_header_only_entries() {
    for (what, e) in header_only_cases() {
        let mut t = Tar::new();
        t.push(&e);
        let t = t.raw(&smuggled("smuggled", b"x")).finish();
        let mut r = TarReader::new(&t[..], Limits::default());
        let mut meta = EntryMeta::default();
        assert!(r.next_entry(&mut meta).expect("first"), "{what}");
        assert_ne!(meta.kind(), Kind::Regular, "{what}");
        assert_eq!(meta.size, 0, "{what}");
        let mut data = Vec::new();
        assert_eq!(r.copy_data(&mut data).expect("copy"), 0, "{what}");
        assert!(r.next_entry(&mut meta).expect("second"), "{what}");
        assert_eq!(meta.path, b"smuggled", "{what}");
        assert!(!r.next_entry(&mut meta).expect("end"), "{what}");
    }
}

#[test]
fn a_regular_file_keeps_its_data_and_a_dir_after_it_is_not_confused() {
    // The counterpart: a regular entry's size is honoured, so 1024 bytes of "headers" inside
    // a file are file content.
    let w = Work::new();
    let inner = smuggled("inner", b"not an entry");
    let t = Tar::new()
        .add(E::file("blob", &inner))
        .add(E::dir("d"))
        .finish();
    apply(&t, &w.root, Mode::Flatten).expect("apply");
    assert_eq!(fs::read(w.p("blob")).expect("blob"), inner);
    assert!(!w.p("inner").exists());
    assert_eq!(node(&w.p("d")).kind, "dir");
}

#[test]
fn pax_size_beyond_i64_is_corrupt_not_a_wrapped_skip() {
    // size + padding of 2^64-1 wrapped to 0 in release builds: the entry's "data" (here a
    // whole file entry) was then read as the next header.
    for size in [&b"18446744073709551615"[..], b"9223372036854775808"] {
        for mut e in [E::symlink("s", "t"), E::file("f", b"")] {
            let w = Work::new();
            e = e.pax("size", size);
            let mut t = Tar::new();
            t.push(&e);
            let t = t.raw(&smuggled("smuggled", b"x")).finish();
            let mut o = opts(Mode::Flatten);
            o.limits.max_entry_bytes = u64::MAX;
            o.limits.max_layer_bytes = u64::MAX;
            let r = apply_tar(&t[..], &w.root, &o);
            assert!(matches!(r, Err(Error::Corrupt { .. })), "{r:?}");
            assert!(!w.p("smuggled").exists());
            w.assert_sentinel_intact();
        }
    }
}

#[test]
fn largest_header_sizes_do_not_overflow() {
    // An 11-digit octal and a base-256 size of i64::MAX: a truncated stream, never a wrap.
    for base256 in [false, true] {
        let mut e = E::file("f", b"");
        e.base256_size = base256;
        let size = if base256 {
            i64::MAX as u64
        } else {
            0o77_777_777_777
        };
        let h = header_block(&e, b"f", b"", b'0', size);
        let t = Tar::new().raw(&h).raw(&smuggled("smuggled", b"x")).finish();
        let mut r = TarReader::new(
            &t[..],
            Limits {
                max_entry_bytes: u64::MAX,
                max_layer_bytes: u64::MAX,
                ..Limits::default()
            },
        );
        let mut meta = EntryMeta::default();
        assert!(r.next_entry(&mut meta).expect("entry"));
        assert_eq!(meta.size, size);
        let mut sink = Vec::new();
        assert!(matches!(r.copy_data(&mut sink), Err(Error::Corrupt { .. })));
        assert!(matches!(
            r.next_entry(&mut meta),
            Err(Error::Corrupt { .. })
        ));
    }
}

#[test]
fn empty_pax_values_delete_the_keyword_as_go_does() {
    // POSIX pax: a record with an empty value removes the keyword; the header's own field
    // applies again (Go's archive/tar deletes the key), and an emptied xattr is not set.
    let e = E::file("f", b"data")
        .pax("path", b"elsewhere")
        .pax("path", b"")
        .pax("size", b"")
        .pax("uid", b"")
        .pax("mtime", b"")
        .pax("SCHILY.xattr.user.k", b"v")
        .pax("SCHILY.xattr.user.k", b"")
        .owner(7, 8);
    let mut t = Tar::new();
    t.push(&e);
    let t = t
        .add(E::symlink("s", "target").pax("linkpath", b""))
        .finish();
    let mut r = TarReader::new(&t[..], Limits::default());
    let mut meta = EntryMeta::default();
    assert!(r.next_entry(&mut meta).expect("file"));
    assert_eq!(meta.path, b"f");
    assert_eq!((meta.size, meta.uid, meta.gid), (4, 7, 8));
    assert_eq!(meta.mtime_sec, 1_600_000_000);
    assert!(meta.xattrs.is_empty(), "{:?}", meta.xattrs);
    let mut data = Vec::new();
    r.copy_data(&mut data).expect("data");
    assert_eq!(data, b"data");
    assert!(r.next_entry(&mut meta).expect("symlink"));
    assert_eq!(meta.link, b"target");
    assert!(!r.next_entry(&mut meta).expect("end"));
}
