//! Test support: a tar builder that can emit ustar, PAX and GNU entries (including malformed
//! ones), tree snapshots for comparisons, and a sentinel directory beside the destination.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use fastdist_core::apply::{apply_tar, ApplyOptions, ApplyStats, Mode};
use fastdist_core::error::Error;
use fastdist_core::limits::Limits;

/// One tar entry to emit. Fields are public so a test can craft anything.
#[derive(Clone, Debug)]
pub struct E {
    pub name: Vec<u8>,
    pub typ: u8,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub link: Vec<u8>,
    pub major: u64,
    pub minor: u64,
    pub data: Vec<u8>,
    /// Size written in the header (default: data length).
    pub size: Option<u64>,
    /// PAX records emitted in an 'x' header before the entry.
    pub pax: Vec<(String, Vec<u8>)>,
    /// Emit the name / link as GNU 'L' / 'K' records.
    pub long_name: bool,
    pub long_link: bool,
    pub bad_checksum: bool,
    /// Write the size in GNU base-256.
    pub base256_size: bool,
    /// Use ustar prefix/name split for long names.
    pub ustar_prefix: bool,
}

impl E {
    fn new(name: &str, typ: u8, mode: u32) -> E {
        E {
            name: name.as_bytes().to_vec(),
            typ,
            mode,
            uid: 0,
            gid: 0,
            mtime: 1_600_000_000,
            link: Vec::new(),
            major: 0,
            minor: 0,
            data: Vec::new(),
            size: None,
            pax: Vec::new(),
            long_name: false,
            long_link: false,
            bad_checksum: false,
            base256_size: false,
            ustar_prefix: false,
        }
    }
    pub fn file(name: &str, data: &[u8]) -> E {
        let mut e = E::new(name, b'0', 0o644);
        e.data = data.to_vec();
        e
    }
    pub fn dir(name: &str) -> E {
        E::new(name, b'5', 0o755)
    }
    pub fn symlink(name: &str, target: &str) -> E {
        let mut e = E::new(name, b'2', 0o777);
        e.link = target.as_bytes().to_vec();
        e
    }
    pub fn hardlink(name: &str, target: &str) -> E {
        let mut e = E::new(name, b'1', 0o644);
        e.link = target.as_bytes().to_vec();
        e
    }
    pub fn chardev(name: &str, major: u64, minor: u64) -> E {
        let mut e = E::new(name, b'3', 0o600);
        e.major = major;
        e.minor = minor;
        e
    }
    pub fn blockdev(name: &str, major: u64, minor: u64) -> E {
        let mut e = E::chardev(name, major, minor);
        e.typ = b'4';
        e
    }
    pub fn fifo(name: &str) -> E {
        E::new(name, b'6', 0o644)
    }
    pub fn typ(mut self, t: u8) -> E {
        self.typ = t;
        self
    }
    pub fn mode(mut self, m: u32) -> E {
        self.mode = m;
        self
    }
    pub fn owner(mut self, uid: u64, gid: u64) -> E {
        self.uid = uid;
        self.gid = gid;
        self
    }
    pub fn mtime(mut self, t: u64) -> E {
        self.mtime = t;
        self
    }
    pub fn pax(mut self, k: &str, v: &[u8]) -> E {
        self.pax.push((k.to_owned(), v.to_vec()));
        self
    }
    pub fn xattr(self, k: &str, v: &[u8]) -> E {
        self.pax(&format!("SCHILY.xattr.{k}"), v)
    }
    pub fn long_name(mut self) -> E {
        self.long_name = true;
        self
    }
    pub fn long_link(mut self) -> E {
        self.long_link = true;
        self
    }
}

fn octal(field: &mut [u8], v: u64) {
    let s = format!("{:0width$o}", v, width = field.len() - 1);
    assert!(s.len() < field.len(), "value too large for octal field");
    field[..s.len()].copy_from_slice(s.as_bytes());
    field[s.len()] = 0;
}

fn base256(field: &mut [u8], v: u64) {
    field.fill(0);
    field[0] = 0x80;
    let n = field.len();
    for (i, b) in v.to_be_bytes().iter().enumerate() {
        field[n - 8 + i] = *b;
    }
}

/// A raw 512-byte header block.
pub fn header_block(e: &E, name: &[u8], link: &[u8], typ: u8, size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    let mut name = name;
    if e.ustar_prefix && name.len() > 100 {
        let split = name[..name.len().min(156)]
            .iter()
            .rposition(|&b| b == b'/')
            .expect("splittable name");
        h[345..345 + split].copy_from_slice(&name[..split]);
        name = &name[split + 1..];
    }
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    octal(&mut h[100..108], u64::from(e.mode));
    octal(&mut h[108..116], e.uid);
    octal(&mut h[116..124], e.gid);
    if e.base256_size {
        base256(&mut h[124..136], size);
    } else {
        octal(&mut h[124..136], size);
    }
    octal(&mut h[136..148], e.mtime);
    h[156] = typ;
    let l = link.len().min(100);
    h[157..157 + l].copy_from_slice(&link[..l]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    octal(&mut h[329..337], e.major);
    octal(&mut h[337..345], e.minor);
    set_checksum(&mut h);
    if e.bad_checksum {
        h[148] ^= 1;
    }
    h
}

pub fn set_checksum(h: &mut [u8; 512]) {
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
}

fn pad_to_block(buf: &mut Vec<u8>) {
    let r = buf.len() % 512;
    if r != 0 {
        buf.resize(buf.len() + 512 - r, 0);
    }
}

/// PAX record "%d %s=%s\n" with the self-referential length.
pub fn pax_record(k: &str, v: &[u8]) -> Vec<u8> {
    let body = k.len() + v.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    loop {
        let l = body + len.to_string().len();
        if l == len {
            break;
        }
        len = l;
    }
    let mut r = format!("{len} {k}=").into_bytes();
    r.extend_from_slice(v);
    r.push(b'\n');
    r
}

/// Builds a tar stream entry by entry.
#[derive(Default)]
pub struct Tar {
    pub buf: Vec<u8>,
}

impl Tar {
    pub fn new() -> Tar {
        Tar::default()
    }

    pub fn add(mut self, e: E) -> Tar {
        self.push(&e);
        self
    }

    pub fn push(&mut self, e: &E) {
        if !e.pax.is_empty() {
            let mut body = Vec::new();
            for (k, v) in &e.pax {
                body.extend_from_slice(&pax_record(k, v));
            }
            self.meta(b'x', b"PaxHeaders/x", &body);
        }
        if e.long_name {
            let mut n = e.name.clone();
            n.push(0);
            self.meta(b'L', b"././@LongLink", &n);
        }
        if e.long_link {
            let mut n = e.link.clone();
            n.push(0);
            self.meta(b'K', b"././@LongLink", &n);
        }
        let size = e.size.unwrap_or(e.data.len() as u64);
        let h = header_block(e, &e.name, &e.link, e.typ, size);
        self.buf.extend_from_slice(&h);
        self.buf.extend_from_slice(&e.data);
        pad_to_block(&mut self.buf);
    }

    /// A metadata record ('x', 'g', 'L', 'K') with `body`.
    pub fn meta(&mut self, typ: u8, name: &[u8], body: &[u8]) {
        let e = E::new("", typ, 0o644);
        let h = header_block(&e, name, b"", typ, body.len() as u64);
        self.buf.extend_from_slice(&h);
        self.buf.extend_from_slice(body);
        pad_to_block(&mut self.buf);
    }

    /// A metadata header that claims `size` bytes but carries none (for limit tests).
    pub fn meta_claiming(mut self, typ: u8, size: u64) -> Tar {
        let mut e = E::new("", typ, 0o644);
        e.base256_size = size > 0o77_777_777_777;
        let h = header_block(&e, b"././@LongLink", b"", typ, size);
        self.buf.extend_from_slice(&h);
        self
    }

    pub fn raw(mut self, bytes: &[u8]) -> Tar {
        self.buf.extend_from_slice(bytes);
        self
    }

    /// The stream with the two zero end-of-archive blocks.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(&[0u8; 1024]);
        self.buf
    }

    pub fn unterminated(self) -> Vec<u8> {
        self.buf
    }
}

pub fn opts(mode: Mode) -> ApplyOptions {
    ApplyOptions {
        mode,
        limits: Limits::default(),
        preserve_owner: true,
    }
}

pub fn apply(bytes: &[u8], dest: &Path, mode: Mode) -> Result<ApplyStats, Error> {
    apply_tar(bytes, dest, &opts(mode))
}

/// A temporary workspace: `base/root` is the destination, `base/sentinel` the bystander.
pub struct Work {
    pub tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub sentinel: PathBuf,
    before: Tree,
}

impl Work {
    pub fn new() -> Work {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("root");
        let sentinel = tmp.path().join("sentinel");
        fs::create_dir(&root).expect("root");
        fs::create_dir(&sentinel).expect("sentinel");
        fs::write(sentinel.join("secret"), b"do not touch").expect("secret");
        fs::write(sentinel.join("x"), b"x content").expect("x");
        fs::create_dir(sentinel.join("dir")).expect("dir");
        fs::write(sentinel.join("dir/inner"), b"inner").expect("inner");
        std::os::unix::fs::symlink("secret", sentinel.join("link")).expect("link");
        // Fixed times so accidental utimes are visible.
        for p in ["secret", "x", "dir/inner", "dir", ""] {
            set_mtime(&sentinel.join(p), 1_234_567_890);
        }
        let before = snapshot(tmp.path(), &["root"]);
        Work {
            tmp,
            root,
            sentinel,
            before,
        }
    }

    /// Everything outside `root` is byte-for-byte and metadata unchanged.
    pub fn assert_sentinel_intact(&self) {
        let after = snapshot(self.tmp.path(), &["root"]);
        assert_eq!(self.before, after, "files outside the destination changed");
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
}

pub fn set_mtime(p: &Path, secs: i64) {
    let t = rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .expect("utimensat");
}

/// What we compare of one tree node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: (i64, i64),
    pub content: Vec<u8>,
    pub rdev: u64,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

pub type Tree = BTreeMap<String, Node>;

pub fn xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut names = vec![0u8; 65536];
    let n = match rustix::fs::llistxattr(p, &mut names[..]) {
        Ok(n) => n,
        Err(_) => return out,
    };
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let mut v = vec![0u8; 65536];
        if let Ok(l) = rustix::fs::lgetxattr(p, name, &mut v[..]) {
            v.truncate(l);
            out.insert(String::from_utf8_lossy(name).into_owned(), v);
        }
    }
    out
}

pub fn node(p: &Path) -> Node {
    let m = fs::symlink_metadata(p).expect("lstat");
    let ft = m.file_type();
    let (kind, content) = if ft.is_symlink() {
        (
            "symlink",
            fs::read_link(p)
                .expect("readlink")
                .into_os_string()
                .into_encoded_bytes(),
        )
    } else if ft.is_dir() {
        ("dir", Vec::new())
    } else if ft.is_file() {
        ("file", fs::read(p).expect("read"))
    } else if ft.is_char_device() {
        ("char", Vec::new())
    } else if ft.is_block_device() {
        ("block", Vec::new())
    } else if ft.is_fifo() {
        ("fifo", Vec::new())
    } else {
        ("other", Vec::new())
    };
    Node {
        kind,
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        size: if ft.is_file() { m.size() } else { 0 },
        mtime: (m.mtime(), m.mtime_nsec()),
        content,
        rdev: m.rdev(),
        xattrs: xattrs(p),
    }
}

/// Snapshot a tree (the root itself under ""), skipping top-level names in `skip`.
pub fn snapshot(root: &Path, skip: &[&str]) -> Tree {
    let mut t = Tree::new();
    t.insert(String::new(), node(root));
    walk(root, root, skip, &mut t);
    t
}

fn walk(root: &Path, dir: &Path, skip: &[&str], t: &mut Tree) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for p in entries {
        let rel = p
            .strip_prefix(root)
            .expect("prefix")
            .to_string_lossy()
            .into_owned();
        if dir == root && skip.contains(&rel.as_str()) {
            continue;
        }
        let n = node(&p);
        let is_dir = n.kind == "dir";
        t.insert(rel, n);
        if is_dir {
            walk(root, &p, skip, t);
        }
    }
}
