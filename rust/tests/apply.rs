//! The layer applier on generated tarballs: entry types and metadata, both modes, whiteouts,
//! links, long names, and a round trip against GNU tar.

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::{apply, node, opts, snapshot, Tar, Work, E};
use fastdist_core::apply::{apply_tar, ApplyOptions, Mode};

#[test]
fn regular_file_gets_mode_owner_ns_mtime_and_xattrs() {
    let w = Work::new();
    let t = Tar::new()
        .add(
            E::file("bin/su", b"#!/bin/true\n")
                .mode(0o4755)
                .owner(1000, 2000)
                .pax("mtime", b"1700000000.123456789")
                .xattr("user.comment", b"hello")
                .xattr("security.capability", b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"),
        )
        .add(E::file("sgid", b"").mode(0o2711).owner(5, 6))
        .add(E::dir("tmp").mode(0o1777))
        .finish();
    apply(&t, &w.root, Mode::Flatten).expect("apply");
    let n = node(&w.p("bin/su"));
    assert_eq!(n.kind, "file");
    assert_eq!(n.content, b"#!/bin/true\n");
    assert_eq!(n.mode, 0o4755);
    assert_eq!((n.uid, n.gid), (1000, 2000));
    assert_eq!(n.mtime, (1_700_000_000, 123_456_789));
    assert_eq!(
        n.xattrs.get("user.comment").map(Vec::as_slice),
        Some(&b"hello"[..])
    );
    assert!(n.xattrs.contains_key("security.capability"));
    let s = node(&w.p("sgid"));
    assert_eq!((s.mode, s.uid, s.gid), (0o2711, 5, 6));
    assert_eq!(node(&w.p("tmp")).mode, 0o1777);
    // Implicit parent: 0755.
    assert_eq!(node(&w.p("bin")).mode, 0o755);
}

#[test]
fn every_entry_type_is_created() {
    let w = Work::new();
    let t = Tar::new()
        .add(E::dir("d").mode(0o750).owner(3, 4).mtime(1_000_000))
        .add(E::file("d/reg", b"regular").mtime(2_000_000))
        .add(E::file("d/old", b"typeflag nul").typ(0))
        .add(E::file("d/olddir/", b"").typ(0))
        .add(E::file("d/contig", b"contiguous").typ(b'7'))
        .add(E::symlink("d/sym", "reg").owner(7, 8).mtime(3_000_000))
        .add(E::hardlink("d/hard", "d/reg"))
        .add(E::chardev("d/null", 1, 3).mode(0o666))
        .add(E::blockdev("d/loop", 7, 200).mode(0o660))
        .add(E::fifo("d/pipe").mode(0o620).mtime(4_000_000))
        .finish();
    apply(&t, &w.root, Mode::Flatten).expect("apply");
    let d = node(&w.p("d"));
    assert_eq!(
        (d.kind, d.mode, d.uid, d.gid, d.mtime.0),
        ("dir", 0o750, 3, 4, 1_000_000)
    );
    let reg = node(&w.p("d/reg"));
    assert_eq!(
        (reg.content.as_slice(), reg.mtime.0),
        (&b"regular"[..], 2_000_000)
    );
    assert_eq!(fs::read(w.p("d/old")).unwrap(), b"typeflag nul");
    assert_eq!(node(&w.p("d/olddir")).kind, "dir");
    assert_eq!(fs::read(w.p("d/contig")).unwrap(), b"contiguous");
    let sym = node(&w.p("d/sym"));
    assert_eq!((sym.kind, sym.content.as_slice()), ("symlink", &b"reg"[..]));
    assert_eq!((sym.uid, sym.gid, sym.mtime.0), (7, 8, 3_000_000));
    let (a, b) = (
        fs::metadata(w.p("d/reg")).unwrap(),
        fs::metadata(w.p("d/hard")).unwrap(),
    );
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
    let null = node(&w.p("d/null"));
    assert_eq!(
        (null.kind, null.mode, null.rdev),
        ("char", 0o666, rustix::fs::makedev(1, 3))
    );
    let lp = node(&w.p("d/loop"));
    assert_eq!(
        (lp.kind, lp.mode, lp.rdev),
        ("block", 0o660, rustix::fs::makedev(7, 200))
    );
    let p = node(&w.p("d/pipe"));
    assert_eq!((p.kind, p.mode, p.mtime.0), ("fifo", 0o620, 4_000_000));
}

#[test]
fn directory_mtime_is_set_after_its_children() {
    let w = Work::new();
    let t = Tar::new()
        .add(E::dir("a").mtime(1_111))
        .add(E::dir("a/b").mtime(2_222))
        .add(E::file("a/b/f", b"x"))
        .add(E::file("a/g", b"y"))
        .add(E::dir("ro").mode(0o555).mtime(3_333))
        .add(E::file("ro/inside", b"z").mode(0o444))
        .finish();
    apply(&t, &w.root, Mode::Flatten).expect("apply");
    assert_eq!(node(&w.p("a")).mtime, (1_111, 0));
    assert_eq!(node(&w.p("a/b")).mtime, (2_222, 0));
    let ro = node(&w.p("ro"));
    assert_eq!((ro.mode, ro.mtime.0), (0o555, 3_333));
}

#[test]
fn root_entry_updates_root_metadata() {
    let w = Work::new();
    let t = Tar::new()
        .add(E::dir("./").mode(0o711).mtime(5_555))
        .add(E::file("./f", b"x"))
        .finish();
    apply(&t, &w.root, Mode::Layer).expect("apply");
    let r = node(&w.root);
    assert_eq!((r.mode, r.mtime.0), (0o711, 5_555));
}

#[test]
fn long_names_via_ustar_prefix_pax_and_gnu() {
    let w = Work::new();
    let deep = format!("{}/{}", "p".repeat(120), "n".repeat(90));
    let mut prefixed = E::file(&deep, b"ustar prefix");
    prefixed.ustar_prefix = true;
    let pax_name = format!("pax/{}", "q".repeat(250));
    let gnu_name = format!("gnu/{}", "g".repeat(250));
    let target = format!("/{}", "t".repeat(200));
    let t = Tar::new()
        .add(prefixed)
        .add(E::file("truncated-in-header", b"pax").pax("path", pax_name.as_bytes()))
        .add(E::file(&gnu_name, b"gnu").long_name())
        .add(E::symlink("pax/link", "short").pax("linkpath", target.as_bytes()))
        .add(E::symlink("gnu/link", &target).long_link())
        .add(
            E::hardlink(&format!("gnu/{}", "h".repeat(150)), &gnu_name)
                .long_name()
                .long_link(),
        )
        .finish();
    apply(&t, &w.root, Mode::Flatten).expect("apply");
    assert_eq!(fs::read(w.p(&deep)).unwrap(), b"ustar prefix");
    assert_eq!(fs::read(w.p(&pax_name)).unwrap(), b"pax");
    assert!(!w.p("truncated-in-header").exists());
    assert_eq!(fs::read(w.p(&gnu_name)).unwrap(), b"gnu");
    assert_eq!(node(&w.p("pax/link")).content, target.as_bytes());
    assert_eq!(node(&w.p("gnu/link")).content, target.as_bytes());
    assert_eq!(
        fs::read(w.p(&format!("gnu/{}", "h".repeat(150)))).unwrap(),
        b"gnu"
    );
}

#[test]
fn base256_sizes_and_pax_size_override_are_honoured() {
    let w = Work::new();
    let mut e = E::file("b256", &[9u8; 1500]);
    e.base256_size = true;
    let t = Tar::new()
        .add(e)
        .add(E::file("paxsize", &[3u8; 700]).pax("size", b"700"))
        .finish();
    apply(&t, &w.root, Mode::Flatten).expect("apply");
    assert_eq!(fs::read(w.p("b256")).unwrap(), vec![9u8; 1500]);
    assert_eq!(fs::read(w.p("paxsize")).unwrap(), vec![3u8; 700]);
}

#[test]
fn pax_global_headers_are_ignored() {
    let w = Work::new();
    let mut t = Tar::new();
    t.meta(
        b'g',
        b"pax_global_header",
        &common::pax_record("comment", b"abc"),
    );
    let t = t.add(E::file("f", b"x")).finish();
    let stats = apply(&t, &w.root, Mode::Flatten).expect("apply");
    assert_eq!(stats.entries, 1);
    assert_eq!(fs::read(w.p("f")).unwrap(), b"x");
}

#[test]
fn hardlink_to_symlink_links_the_symlink_itself() {
    let w = Work::new();
    let t = Tar::new()
        .add(E::file("target", b"t"))
        .add(E::symlink("sym", "target"))
        .add(E::hardlink("hl", "sym"))
        .finish();
    apply(&t, &w.root, Mode::Flatten).expect("apply");
    let hl = fs::symlink_metadata(w.p("hl")).unwrap();
    let sym = fs::symlink_metadata(w.p("sym")).unwrap();
    assert!(hl.file_type().is_symlink());
    assert_eq!(hl.ino(), sym.ino());
}

#[test]
fn hardlink_may_target_a_lower_layer_in_flatten_mode() {
    let w = Work::new();
    apply(
        &Tar::new().add(E::file("lower", b"l")).finish(),
        &w.root,
        Mode::Flatten,
    )
    .unwrap();
    apply(
        &Tar::new().add(E::hardlink("upper", "lower")).finish(),
        &w.root,
        Mode::Flatten,
    )
    .unwrap();
    assert_eq!(
        fs::metadata(w.p("upper")).unwrap().ino(),
        fs::metadata(w.p("lower")).unwrap().ino()
    );
    // A missing target is corrupt.
    let r = apply(
        &Tar::new().add(E::hardlink("x", "nope")).finish(),
        &w.root,
        Mode::Flatten,
    );
    assert!(
        matches!(r, Err(fastdist_core::error::Error::Corrupt { .. })),
        "{r:?}"
    );
}

#[test]
fn absolute_symlink_resolves_inside_root_for_later_entries() {
    let w = Work::new();
    let t = Tar::new()
        .add(E::dir("run"))
        .add(E::dir("var"))
        .add(E::symlink("var/run", "/run"))
        .add(E::file("var/run/x", b"pid"))
        .add(E::symlink("lib", "usr/lib"))
        .add(E::file("lib/y", b"created through a relative symlink"))
        .finish();
    apply(&t, &w.root, Mode::Flatten).expect("apply");
    assert_eq!(fs::read(w.p("run/x")).unwrap(), b"pid");
    assert_eq!(node(&w.p("var/run")).kind, "symlink");
    assert_eq!(
        fs::read(w.p("usr/lib/y")).unwrap(),
        b"created through a relative symlink"
    );
}

#[test]
fn replacing_entries_follows_layer_semantics() {
    let w = Work::new();
    let lower = Tar::new()
        .add(E::dir("d").mode(0o700))
        .add(E::file("d/keep", b"lower"))
        .add(E::dir("tree"))
        .add(E::file("tree/a/b", b"deep"))
        .add(E::file("f", b"file"))
        .add(E::symlink("s", "f"))
        .finish();
    apply(&lower, &w.root, Mode::Flatten).unwrap();
    let upper = Tar::new()
        .add(E::dir("d").mode(0o755).owner(9, 9))
        .add(E::file("tree", b"now a file"))
        .add(E::dir("f"))
        .add(E::file("s", b"not through the symlink"))
        .finish();
    apply(&upper, &w.root, Mode::Flatten).unwrap();
    let d = node(&w.p("d"));
    assert_eq!((d.mode, d.uid), (0o755, 9));
    assert_eq!(fs::read(w.p("d/keep")).unwrap(), b"lower");
    assert_eq!(fs::read(w.p("tree")).unwrap(), b"now a file");
    assert_eq!(node(&w.p("f")).kind, "dir");
    assert_eq!(fs::read(w.p("s")).unwrap(), b"not through the symlink");
}

#[test]
fn whiteouts_delete_lower_entries_across_layers() {
    let w = Work::new();
    let l1 = Tar::new()
        .add(E::file("a/b", b"b"))
        .add(E::file("a/c", b"c"))
        .add(E::file("d/e/f", b"f"))
        .add(E::symlink("l", "a"))
        .finish();
    let l2 = Tar::new()
        .add(E::file("a/.wh.b", b""))
        .add(E::file(".wh.d", b""))
        .add(E::file(".wh.l", b""))
        .add(E::file("a/.wh.never-existed", b""))
        .add(E::file("nodir/.wh.x", b""))
        .finish();
    let l3 = Tar::new().add(E::file("d/new", b"n")).finish();
    for l in [&l1, &l2, &l3] {
        apply(l, &w.root, Mode::Flatten).unwrap();
    }
    assert!(!w.p("a/b").exists());
    assert_eq!(fs::read(w.p("a/c")).unwrap(), b"c");
    assert!(!w.p("d/e").exists());
    assert_eq!(fs::read(w.p("d/new")).unwrap(), b"n");
    assert!(fs::symlink_metadata(w.p("l")).is_err());
    assert!(fs::symlink_metadata(w.p("a/.wh.b")).is_err());
    // The whiteout deleted the symlink, not the directory it pointed to.
    assert!(w.p("a").is_dir());
}

#[test]
fn whiteout_does_not_hide_an_entry_of_the_same_layer() {
    let w = Work::new();
    apply(
        &Tar::new().add(E::file("x", b"lower")).finish(),
        &w.root,
        Mode::Flatten,
    )
    .unwrap();
    let t = Tar::new()
        .add(E::file("x", b"same layer"))
        .add(E::file(".wh.x", b""))
        .finish();
    apply(&t, &w.root, Mode::Flatten).unwrap();
    assert_eq!(fs::read(w.p("x")).unwrap(), b"same layer");
}

#[test]
fn opaque_dir_hides_lower_entries_but_keeps_this_layers() {
    let w = Work::new();
    let l1 = Tar::new()
        .add(E::file("o/x", b"lower"))
        .add(E::file("o/sub/y", b"lower"))
        .add(E::file("o/gone/z", b"lower"))
        .add(E::file("other/k", b"untouched"))
        .finish();
    // The marker may come after siblings of the same layer.
    let l2 = Tar::new()
        .add(E::file("o/new", b"upper"))
        .add(E::file("o/sub/z", b"upper"))
        .add(E::file("o/.wh..wh..opq", b""))
        .add(E::file("o/after", b"upper"))
        .finish();
    apply(&l1, &w.root, Mode::Flatten).unwrap();
    apply(&l2, &w.root, Mode::Flatten).unwrap();
    let mut names: Vec<String> = snapshot(&w.p("o"), &[]).into_keys().collect();
    names.sort();
    assert_eq!(names, ["", "after", "new", "sub", "sub/z"]);
    assert_eq!(fs::read(w.p("other/k")).unwrap(), b"untouched");
    assert!(!w.p("o/.wh..wh..opq").exists());
}

#[test]
fn layer_mode_writes_overlay_whiteouts_and_opaque_xattr() {
    let w = Work::new();
    let t = Tar::new()
        .add(E::dir("etc"))
        .add(E::file("etc/.wh.passwd", b""))
        .add(E::file("etc/.wh..wh..opq", b""))
        .add(E::file(".wh.gone", b""))
        .add(E::file(".wh.back", b""))
        .add(E::file("back", b"recreated after its whiteout"))
        .add(E::file("kept", b"same layer"))
        .add(E::file(".wh.kept", b""))
        .add(E::file("implicit/.wh..wh..opq", b""))
        .finish();
    apply(&t, &w.root, Mode::Layer).unwrap();
    for wh in ["etc/passwd", "gone"] {
        let n = node(&w.p(wh));
        assert_eq!((n.kind, n.rdev), ("char", 0), "{wh}");
    }
    assert_eq!(
        node(&w.p("etc"))
            .xattrs
            .get("trusted.overlay.opaque")
            .map(Vec::as_slice),
        Some(&b"y"[..])
    );
    assert_eq!(
        node(&w.p("implicit"))
            .xattrs
            .get("trusted.overlay.opaque")
            .map(Vec::as_slice),
        Some(&b"y"[..])
    );
    assert_eq!(
        fs::read(w.p("back")).unwrap(),
        b"recreated after its whiteout"
    );
    assert_eq!(fs::read(w.p("kept")).unwrap(), b"same layer");
    assert!(!w.p(".wh.gone").exists());
}

#[test]
fn unprivileged_mode_skips_devices_but_makes_fifos() {
    let w = Work::new();
    let t = Tar::new()
        .add(E::chardev("null", 1, 3))
        .add(E::blockdev("sda", 8, 0))
        .add(E::fifo("pipe"))
        .add(E::file("f", b"x").owner(4321, 4321))
        .finish();
    let o = ApplyOptions {
        preserve_owner: false,
        ..opts(Mode::Flatten)
    };
    let stats = apply_tar(&t[..], &w.root, &o).unwrap();
    assert_eq!(stats.entries, 4);
    assert!(fs::symlink_metadata(w.p("null")).is_err());
    assert!(fs::symlink_metadata(w.p("sda")).is_err());
    assert_eq!(node(&w.p("pipe")).kind, "fifo");
    assert_eq!(node(&w.p("f")).uid, rustix::process::geteuid().as_raw());
}

/// Counts what was read, to prove the stream is consumed to its end.
struct Counting<'a> {
    inner: &'a [u8],
    read: usize,
}

impl Read for Counting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n;
        Ok(n)
    }
}

#[test]
fn stream_is_consumed_to_its_end_and_stats_count_it() {
    let w = Work::new();
    let mut t = Tar::new().add(E::file("a", b"1")).add(E::dir("b")).finish();
    t.resize(10240, 0); // tar's record padding
    let mut r = Counting { inner: &t, read: 0 };
    let stats = apply_tar(&mut r, &w.root, &opts(Mode::Flatten)).unwrap();
    assert_eq!(r.read, t.len());
    assert_eq!(stats.bytes, t.len() as u64);
    assert_eq!(stats.entries, 2);
}

#[test]
fn many_small_files_apply_with_exact_metadata_in_both_modes() {
    // Enough files for the finisher thread to take most of them, with modes and owners that
    // need a chown, a chmod after it, or neither.
    let modes = [0o644, 0o755, 0o600, 0o4755, 0o444, 0o2711, 0o1777];
    let owners = [(0, 0), (1000, 1000), (0, 5), (7, 0)];
    let spec = |d: usize, f: usize| {
        let i = d * 100 + f;
        (
            modes[i % modes.len()],
            owners[i % owners.len()],
            1_500_000_000 + i as u64,
        )
    };
    let mut t = Tar::new();
    for d in 0..20 {
        t = t.add(E::dir(&format!("d{d}")));
        for f in 0..100 {
            let (mode, (uid, gid), mtime) = spec(d, f);
            let data = format!("{d}-{f}").repeat(f * 7);
            let e = E::file(&format!("d{d}/f{f}"), data.as_bytes());
            t = t.add(e.mode(mode).owner(uid, gid).mtime(mtime));
        }
    }
    let t = t.finish();
    for mode in [Mode::Flatten, Mode::Layer] {
        let w = Work::new();
        let stats = apply(&t, &w.root, mode).unwrap();
        assert_eq!(stats.entries, 20 * 101);
        for d in 0..20 {
            for f in 0..100 {
                let (m, (uid, gid), mtime) = spec(d, f);
                let n = node(&w.p(&format!("d{d}/f{f}")));
                let want = format!("{d}-{f}").repeat(f * 7);
                assert_eq!(n.content, want.as_bytes(), "{mode:?} d{d}/f{f}");
                assert_eq!(
                    (n.mode, n.uid, n.gid, n.mtime),
                    (m, uid as u32, gid as u32, (mtime as i64, 0)),
                    "{mode:?} d{d}/f{f}"
                );
            }
        }
        w.assert_sentinel_intact();
    }
}

#[test]
fn an_error_finishing_a_file_is_reported_with_its_name() {
    // security.capability must be a well-formed capability: the kernel refuses "bad" with
    // EINVAL when the file is finished: in the applier's thread (a layer of fewer files than
    // a batch never starts the finisher) or in the finisher's.
    for (count, bad) in [(10, 3), (300, 250)] {
        let mut t = Tar::new();
        for f in 0..count {
            let mut e = E::file(&format!("f{f}"), b"x");
            if f == bad {
                e = e.xattr("security.capability", b"bad");
            }
            t = t.add(e);
        }
        let t = t.finish();
        for mode in [Mode::Flatten, Mode::Layer] {
            let w = Work::new();
            let err = apply(&t, &w.root, mode).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("set xattr") && msg.contains(&format!("f{bad}")),
                "{msg}"
            );
            w.assert_sentinel_intact();
        }
    }
}

// ---- round trip against GNU tar ---------------------------------------------------------

fn sh(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn build_tree(src: &Path) {
    use std::os::unix::fs::{symlink, PermissionsExt};
    fs::create_dir_all(src.join("usr/bin")).unwrap();
    fs::create_dir_all(src.join("var")).unwrap();
    fs::create_dir_all(src.join("run")).unwrap();
    fs::create_dir_all(src.join("tmp")).unwrap();
    fs::write(src.join("usr/bin/tool"), vec![42u8; 300_000]).unwrap();
    fs::set_permissions(src.join("usr/bin/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::write(src.join("empty"), b"").unwrap();
    fs::set_permissions(src.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    symlink("/run", src.join("var/run")).unwrap();
    symlink("../usr/bin/tool", src.join("var/rel")).unwrap();
    fs::hard_link(src.join("usr/bin/tool"), src.join("usr/bin/tool-hard")).unwrap();
    let long = src.join(format!("{}/{}", "l".repeat(120), "m".repeat(120)));
    fs::create_dir_all(long.parent().unwrap()).unwrap();
    fs::write(&long, b"long").unwrap();
    symlink("x".repeat(180), src.join("longlink")).unwrap();
    sh(Command::new("mkfifo").arg(src.join("fifo")));
    sh(Command::new("mknod")
        .arg(src.join("null"))
        .args(["c", "1", "3"]));
    sh(Command::new("chown")
        .args(["-h", "1234:5678"])
        .arg(src.join("var/rel")));
    sh(Command::new("chown")
        .args(["1001:1002"])
        .arg(src.join("empty")));
    rustix::fs::lsetxattr(
        src.join("empty").as_path(),
        "user.k",
        b"v",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    // ns mtimes, set last so directories keep theirs.
    sh(Command::new("find").arg(src).args([
        "-depth",
        "-exec",
        "touch",
        "-h",
        "-d",
        "2021-03-04 05:06:07.123456789",
        "{}",
        "+",
    ]));
}

fn round_trip(format: &str) {
    let base = tempfile::tempdir().unwrap();
    let (src, ours, theirs) = (
        base.path().join("src"),
        base.path().join("ours"),
        base.path().join("theirs"),
    );
    for d in [&src, &ours, &theirs] {
        fs::create_dir(d).unwrap();
    }
    build_tree(&src);
    let tarball = base.path().join("layer.tar");
    // GNU tar writes xattrs only in POSIX archives.
    let xattrs: &[&str] = if format == "posix" {
        &["--xattrs", "--xattrs-include=*"]
    } else {
        &[]
    };
    sh(Command::new("tar")
        .args(xattrs)
        .args(["--numeric-owner", &format!("--format={format}"), "-C"])
        .arg(&src)
        .arg("-cf")
        .arg(&tarball)
        .arg("."));
    sh(Command::new("tar")
        .args(xattrs)
        .args(["--numeric-owner", "-xpf"])
        .arg(&tarball)
        .arg("-C")
        .arg(&theirs));
    let bytes = fs::read(&tarball).unwrap();
    apply_tar(&bytes[..], &ours, &opts(Mode::Flatten)).unwrap();
    let layer = base.path().join("layer");
    fs::create_dir(&layer).unwrap();
    apply_tar(&bytes[..], &layer, &opts(Mode::Layer)).unwrap();
    assert_eq!(
        snapshot(&layer, &[]),
        snapshot(&ours, &[]),
        "{format}: Layer mode"
    );
    let (a, b) = (snapshot(&ours, &[]), snapshot(&theirs, &[]));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, n) in &a {
        assert_eq!(Some(n), b.get(k), "{format}: {k}");
    }
    assert!(a.contains_key("null") && a.contains_key("fifo"));
    if format == "posix" {
        assert_eq!(
            a["empty"].xattrs.get("user.k").map(Vec::as_slice),
            Some(&b"v"[..])
        );
        assert_eq!(a["usr/bin/tool"].mtime.1, 123_456_789);
    }
}

#[test]
fn round_trip_matches_gnu_tar_posix_format() {
    round_trip("posix");
}

#[test]
fn round_trip_matches_gnu_tar_gnu_format() {
    round_trip("gnu");
}
