//! A small tar writer for seeds: ustar headers, PAX records and GNU long names, enough to
//! give the fuzzer one example of every construct the reader and the applier handle.

const BLOCK: usize = 512;

/// One entry: name, type flag, mode, link target, device numbers, data, PAX records.
#[derive(Clone, Debug, Default)]
pub struct Entry {
    pub name: Vec<u8>,
    pub typ: u8,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub link: Vec<u8>,
    pub major: u64,
    pub minor: u64,
    pub data: Vec<u8>,
    pub pax: Vec<(String, Vec<u8>)>,
    /// Emit the name as a GNU `L` record.
    pub gnu_long_name: bool,
}

impl Entry {
    fn new(name: &str, typ: u8, mode: u32) -> Entry {
        Entry {
            name: name.as_bytes().to_vec(),
            typ,
            mode,
            ..Entry::default()
        }
    }
    pub fn file(name: &str, data: &[u8]) -> Entry {
        Entry {
            data: data.to_vec(),
            ..Entry::new(name, b'0', 0o644)
        }
    }
    pub fn dir(name: &str) -> Entry {
        Entry::new(name, b'5', 0o755)
    }
    pub fn symlink(name: &str, target: &str) -> Entry {
        Entry {
            link: target.as_bytes().to_vec(),
            ..Entry::new(name, b'2', 0o777)
        }
    }
    pub fn hardlink(name: &str, target: &str) -> Entry {
        Entry {
            link: target.as_bytes().to_vec(),
            ..Entry::new(name, b'1', 0o644)
        }
    }
    pub fn device(name: &str, typ: u8, major: u64, minor: u64) -> Entry {
        Entry {
            major,
            minor,
            ..Entry::new(name, typ, 0o600)
        }
    }
    pub fn fifo(name: &str) -> Entry {
        Entry::new(name, b'6', 0o644)
    }
    pub fn mode(self, mode: u32) -> Entry {
        Entry { mode, ..self }
    }
    pub fn owner(self, uid: u64, gid: u64) -> Entry {
        Entry { uid, gid, ..self }
    }
    pub fn pax(mut self, k: &str, v: &[u8]) -> Entry {
        self.pax.push((k.to_owned(), v.to_vec()));
        self
    }
    pub fn gnu_long_name(self) -> Entry {
        Entry {
            gnu_long_name: true,
            ..self
        }
    }
}

fn octal(field: &mut [u8], v: u64) {
    let s = format!("{:0width$o}", v, width = field.len() - 1);
    let s = &s.as_bytes()[s.len().saturating_sub(field.len() - 1)..];
    field[..s.len()].copy_from_slice(s);
    field[s.len()] = 0;
}

fn header(e: &Entry, name: &[u8], typ: u8, size: u64) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    octal(&mut h[100..108], u64::from(e.mode));
    octal(&mut h[108..116], e.uid);
    octal(&mut h[116..124], e.gid);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 1_600_000_000);
    h[156] = typ;
    let l = e.link.len().min(100);
    h[157..157 + l].copy_from_slice(&e.link[..l]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    octal(&mut h[329..337], e.major);
    octal(&mut h[337..345], e.minor);
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

fn pad(buf: &mut Vec<u8>) {
    let r = buf.len() % BLOCK;
    if r != 0 {
        buf.resize(buf.len() + BLOCK - r, 0);
    }
}

/// A PAX record `"%d %s=%s\n"` whose length counts itself.
pub fn pax_record(k: &str, v: &[u8]) -> Vec<u8> {
    let body = k.len() + v.len() + 3;
    let mut len = body + 1;
    while body + len.to_string().len() != len {
        len = body + len.to_string().len();
    }
    let mut r = format!("{len} {k}=").into_bytes();
    r.extend_from_slice(v);
    r.push(b'\n');
    r
}

fn meta_record(out: &mut Vec<u8>, typ: u8, body: &[u8]) {
    let e = Entry::new("", typ, 0o644);
    out.extend_from_slice(&header(&e, b"././@LongLink", typ, body.len() as u64));
    out.extend_from_slice(body);
    pad(out);
}

/// The tar stream of `entries` with its end-of-archive blocks.
pub fn tar(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        if !e.pax.is_empty() {
            let body: Vec<u8> = e.pax.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
            meta_record(&mut out, b'x', &body);
        }
        if e.gnu_long_name {
            let mut n = e.name.clone();
            n.push(0);
            meta_record(&mut out, b'L', &n);
        }
        out.extend_from_slice(&header(e, &e.name, e.typ, e.data.len() as u64));
        out.extend_from_slice(&e.data);
        pad(&mut out);
    }
    out.extend_from_slice(&[0u8; 2 * BLOCK]);
    out
}

/// Seed tars: one or more of every construct, including the hostile ones of
/// `rust/tests/hostile.rs`, written against the arena's handles (`abs`, `rel`, `up`, `hl`,
/// `lower/…`).
pub fn seed_tars() -> Vec<(&'static str, Vec<u8>)> {
    use Entry as E;
    let long = "d/".repeat(60) + "f";
    vec![
        ("empty", tar(&[])),
        (
            "basic",
            tar(&[
                E::dir("a/"),
                E::file("a/f", b"hello"),
                E::symlink("a/s", "f"),
                E::hardlink("a/h", "a/f"),
                E::fifo("a/p"),
                E::device("a/c", b'3', 1, 3),
                E::device("a/b", b'4', 7, 0),
            ]),
        ),
        (
            "whiteouts",
            tar(&[
                E::file("lower/.wh.f", b""),
                E::file("lower/d/.wh..wh..opq", b""),
                E::file("lower/d/new", b"new"),
                E::file(".wh.hl", b""),
            ]),
        ),
        (
            "opaque_keeps_own",
            tar(&[
                E::dir("lower/"),
                E::file("lower/mine", b"m"),
                E::file("lower/.wh..wh..opq", b""),
            ]),
        ),
        (
            "escape_dotdot",
            tar(&[
                E::file("../sentinel/secret", b"pwned"),
                E::file("a/../../../beside", b"pwned"),
                E::file("/../x", b"pwned"),
            ]),
        ),
        (
            "escape_handles",
            tar(&[
                E::file("abs/secret", b"pwned"),
                E::file("absdir/inner", b"pwned"),
                E::file("rel/x", b"pwned"),
                E::file("up/beside", b"pwned"),
                E::file("lower/up1/secret", b"pwned"),
                E::file("abssecret", b"pwned"),
                E::dir("abs/dir/").mode(0o777),
                E::file("abs/.wh.secret", b""),
                E::file("abs/.wh..wh..opq", b""),
            ]),
        ),
        (
            "escape_own_symlink",
            tar(&[
                E::symlink("evil", "../../../.."),
                E::file("evil/pwned", b"pwned"),
                E::symlink("evil2", "/"),
                E::dir("evil2/etc/"),
                E::hardlink("hl2", "abs/secret"),
                E::hardlink("hl3", "../sentinel/x"),
                E::hardlink("hl", "hl"),
                E::file("hl", b"over the hardlink"),
            ]),
        ),
        (
            // Header-only entries with a size: Go's archive/tar reads the next header right
            // after them, so the "data" here is a whole file entry that must be applied.
            "header_only_sized",
            tar(&[
                E::dir("a/"),
                E::file("a/f", b"hello"),
                Entry {
                    data: tar(&[E::file("a/smuggled1", b"x")])[..2 * BLOCK].to_vec(),
                    ..E::symlink("a/s", "f")
                },
                Entry {
                    data: tar(&[E::file("a/smuggled2", b"x")])[..2 * BLOCK].to_vec(),
                    ..E::dir("a/d/")
                },
                E::fifo("a/p").pax("size", b"1024"),
                E::file("a/smuggled3", b"x"),
                E::hardlink("a/h", "a/f").pax("size", b"18446744073709551615"),
            ]),
        ),
        (
            "replace_kinds",
            tar(&[
                E::file("x", b"file"),
                E::dir("x/"),
                E::symlink("x", "abs"),
                E::file("x", b"again"),
                E::dir("lower/"),
                E::file("lower", b"file over dir"),
            ]),
        ),
        (
            "pax_and_gnu",
            tar(&[
                E::file("short", b"data")
                    .pax("path", long.as_bytes())
                    .pax("mtime", b"1600000000.123456789")
                    .pax("uid", b"1000")
                    .pax("gid", b"1000")
                    .pax("SCHILY.xattr.user.k", b"v")
                    .pax("SCHILY.xattr.trusted.overlay.opaque", b"y"),
                E::symlink("ln", "t").pax("linkpath", b"abs/secret"),
                E::file(&long, b"gnu").gnu_long_name(),
            ]),
        ),
        (
            "modes_owners",
            tar(&[
                E::dir("ro/").mode(0o000),
                E::file("ro/f", b"x").mode(0o4755).owner(65534, 65534),
                E::dir("./").mode(0o700),
                E::file("big_uid", b"").owner(0o7777777, 0o7777777),
            ]),
        ),
        (
            "bad_whiteouts",
            tar(&[
                E::file(".wh.", b""),
                E::file("a/.wh..wh.plnk", b""),
                E::file("../.wh.sentinel", b""),
                E::file(".wh.x/y", b""),
            ]),
        ),
    ]
}
