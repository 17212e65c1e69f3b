//! The file manifest of one applied layer: every entry the applier wrote, in the layer's order,
//! with its metadata and, for regular files, the xxh3-128 of the content it wrote (computed
//! in the same pass as the write, so nothing is read twice).
//!
//! Serialised as text, one record per line, so that Python (`fastdist.fingerprint`) reads it
//! without a parser of ours in between:
//!
//! ```text
//! fastdist-manifest 1
//! KIND \t PATH \t MODE(octal) \t UID \t GID \t MTIME_SEC.NSEC \t SIZE \t XXH3(hex|-) \t LINK(|-) \t XATTRS(|-)
//! ```
//!
//! KIND is `f` regular file, `d` directory, `l` symlink, `h` hardlink (LINK names its target, a
//! path of the tree; size and fingerprint are the target's), `c`/`b` device, `p` fifo, `w` a
//! whiteout of PATH (image-spec `layer.md#whiteouts`), `o` an opaque marker on directory PATH.
//! PATH is the entry's normalised path relative to the layer root (empty: the root itself),
//! as the layer names it: symlinks on the way resolve inside the root, as when it was applied
//! (`var/run/pid` under `var/run -> /run` is the file `run/pid`). PATH, LINK
//! and each xattr name and value are percent-escaped: every byte outside `!`..`~` and each of
//! `%`, `=` and `,` becomes `%XX`. XATTRS is `NAME=VALUE` pairs joined by `,`, as applied (the
//! overlay xattrs a layer may carry are never applied, so never listed). The same path may
//! appear more than once (a layer may replace its own entries): the last record wins.

use std::io::{self, Write};

use xxhash_rust::xxh3::Xxh3;

use crate::tar::EntryMeta;

/// The first line of every manifest.
pub const HEADER: &[u8] = b"fastdist-manifest 1\n";

/// What a manifest record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecordKind {
    File,
    Dir,
    Symlink,
    HardLink,
    Char,
    Block,
    Fifo,
    Whiteout,
    Opaque,
}

impl RecordKind {
    fn letter(self) -> u8 {
        match self {
            RecordKind::File => b'f',
            RecordKind::Dir => b'd',
            RecordKind::Symlink => b'l',
            RecordKind::HardLink => b'h',
            RecordKind::Char => b'c',
            RecordKind::Block => b'b',
            RecordKind::Fifo => b'p',
            RecordKind::Whiteout => b'w',
            RecordKind::Opaque => b'o',
        }
    }
}

/// One record; `xxh3` is filled in by whoever wrote the file's data (maybe the finisher).
pub(crate) struct Record {
    kind: RecordKind,
    path: Vec<u8>,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, u32),
    size: u64,
    xxh3: Option<u128>,
    link: Vec<u8>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The records of one layer, in the order the applier wrote them.
#[derive(Default)]
pub(crate) struct Manifest {
    records: Vec<Record>,
}

/// Overlay metadata in a layer is never applied (see `apply::set_xattrs`), so never recorded.
pub(crate) fn applied_xattr(key: &[u8]) -> bool {
    !(key.starts_with(b"trusted.overlay.") || key.starts_with(b"user.overlay."))
}

impl Manifest {
    /// Record an entry written from `meta` at normalised `path`, owned by `owner`; returns its
    /// index (to fill in the fingerprint with `set_xxh3`).
    pub(crate) fn push(
        &mut self,
        kind: RecordKind,
        path: &[u8],
        meta: &EntryMeta,
        owner: (u32, u32),
        link: &[u8],
    ) -> usize {
        let (mode, size, xattrs) = match kind {
            RecordKind::Whiteout | RecordKind::Opaque => (0, 0, Vec::new()),
            _ => (
                meta.mode & 0o7777,
                if kind == RecordKind::File {
                    meta.size
                } else {
                    0
                },
                meta.xattrs
                    .iter()
                    .filter(|(k, _)| applied_xattr(k))
                    .cloned()
                    .collect(),
            ),
        };
        self.records.push(Record {
            kind,
            path: path.to_vec(),
            mode,
            uid: owner.0,
            gid: owner.1,
            mtime: (meta.mtime_sec, meta.mtime_nsec),
            size,
            xxh3: None,
            link: link.to_vec(),
            xattrs,
        });
        self.records.len() - 1
    }

    pub(crate) fn set_xxh3(&mut self, index: usize, xxh3: u128) {
        if let Some(r) = self.records.get_mut(index) {
            r.xxh3 = Some(xxh3);
        }
    }

    /// The text form (see the module docs).
    pub(crate) fn serialize(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER.len() + self.records.len() * 96);
        out.extend_from_slice(HEADER);
        for r in &self.records {
            out.push(r.kind.letter());
            out.push(b'\t');
            escape(&r.path, &mut out);
            // Writing into a Vec cannot fail.
            let _ = write!(
                out,
                "\t{:o}\t{}\t{}\t{}.{:09}\t{}\t",
                r.mode, r.uid, r.gid, r.mtime.0, r.mtime.1, r.size
            );
            match r.xxh3 {
                Some(h) => {
                    let _ = write!(out, "{h:032x}");
                }
                None => out.push(b'-'),
            }
            out.push(b'\t');
            if r.link.is_empty() {
                out.push(b'-');
            } else {
                escape(&r.link, &mut out);
            }
            out.push(b'\t');
            if r.xattrs.is_empty() {
                out.push(b'-');
            }
            for (i, (k, v)) in r.xattrs.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                escape(k, &mut out);
                out.push(b'=');
                escape(v, &mut out);
            }
            out.push(b'\n');
        }
        out
    }
}

fn escape(bytes: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if (b'!'..=b'~').contains(&b) && !matches!(b, b'%' | b'=' | b',') {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

/// A writer that fingerprints what it passes on: a big file's data on its way to the file.
pub(crate) struct HashingWriter<'a, W: Write> {
    pub inner: &'a mut W,
    pub hasher: Xxh3,
}

impl<W: Write> Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_keeps_printable_bytes_and_escapes_separators() {
        let mut out = Vec::new();
        escape(b"a b\t%=,\xff/z", &mut out);
        assert_eq!(out, b"a%20b%09%25%3D%2C%FF/z");
    }
}
