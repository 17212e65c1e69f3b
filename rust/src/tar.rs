//! A streaming tar reader whose every header allocation is bounded by `Limits`.
//!
//! Supports ustar/POSIX (prefix field, base-256 numbers), PAX extended headers (`path`,
//! `linkpath`, `size`, `mtime` with nanoseconds, `uid`, `gid`, `SCHILY.xattr.*`), PAX global
//! headers (skipped), and GNU long names/links (`L`/`K`). GNU sparse files and other exotic
//! types are refused with `Error::Corrupt` naming the entry. The reader never allocates more
//! than `max_header_bytes` for a metadata record and checks the limit before allocating.
//!
//! Entry boundaries are found exactly as Go's `archive/tar` finds them (the reader of
//! containerd, moby, crane and umoci), so that one layer cannot unpack to different trees
//! here and there: header-only types (hard link, symlink, char, block, directory, fifo,
//! including a `'\0'` entry whose name ends in `/`) carry no data whatever their size field
//! or PAX `size` says, and the next header follows at once; sizes above `i64::MAX` are
//! refused. Every size read from the stream is added with checked arithmetic.

use std::io::{self, Read, Write};

use crate::error::{Error, Result};
use crate::limits::Limits;

const BLOCK: usize = 512;
/// Read buffer size: large enough that file data is copied in big chunks.
const BUF_SIZE: usize = 256 * 1024;

/// The kind of a tar entry after metadata records have been folded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Regular,
    HardLink,
    Symlink,
    Char,
    Block,
    Dir,
    Fifo,
}

/// One entry's metadata. Owned by the caller and reused across entries (the buffers keep their
/// capacity), so steady-state reading allocates nothing per entry.
#[derive(Debug, Default, Clone)]
pub struct EntryMeta {
    /// Raw path bytes as in the archive (PAX/GNU overrides applied), not normalised.
    pub path: Vec<u8>,
    /// Raw link target (symlink target or hardlink target).
    pub link: Vec<u8>,
    pub kind: Option<Kind>,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Bytes of data following the header (for regular files, the file size).
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    pub dev_major: u64,
    pub dev_minor: u64,
    /// `SCHILY.xattr.NAME` records: (NAME, value).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl EntryMeta {
    /// The entry path for messages.
    pub fn display(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }

    pub fn kind(&self) -> Kind {
        self.kind.unwrap_or(Kind::Regular)
    }
}

/// Overrides collected from PAX and GNU records for the next real entry.
#[derive(Default)]
struct Pending {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    mtime: Option<(i64, u32)>,
    uid: Option<u64>,
    gid: Option<u64>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    any: bool,
}

/// Streaming tar reader over an uncompressed tar stream.
pub struct TarReader<R> {
    inner: R,
    buf: Box<[u8]>,
    pos: usize,
    len: usize,
    eof: bool,
    /// Bytes read from `inner` so far.
    consumed: u64,
    /// Data bytes (without padding) left in the current entry.
    remaining: u64,
    /// Padding bytes after the current entry's data.
    padding: u64,
    entries: u64,
    limits: Limits,
    /// Scratch buffer for PAX / GNU records.
    record: Vec<u8>,
    pending: Pending,
    /// Path of the last entry, for "truncated after ..." messages.
    last_path: Vec<u8>,
    finished: bool,
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl<R: Read> TarReader<R> {
    pub fn new(inner: R, limits: Limits) -> Self {
        TarReader {
            inner,
            buf: vec![0u8; BUF_SIZE].into_boxed_slice(),
            pos: 0,
            len: 0,
            eof: false,
            consumed: 0,
            remaining: 0,
            padding: 0,
            entries: 0,
            limits,
            record: Vec::new(),
            pending: Pending::default(),
            last_path: Vec::new(),
            finished: false,
        }
    }

    /// Tar bytes read from the stream so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Entries (excluding metadata records) returned so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    fn current_name(&self) -> String {
        lossy(&self.last_path)
    }

    /// Refill the buffer if it is empty. Returns false at EOF.
    fn fill(&mut self) -> Result<bool> {
        if self.pos < self.len {
            return Ok(true);
        }
        if self.eof {
            return Ok(false);
        }
        self.pos = 0;
        self.len = 0;
        loop {
            match self.inner.read(&mut self.buf) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.len = n;
                    self.consumed = self.consumed.saturating_add(n as u64);
                    if self.consumed > self.limits.max_layer_bytes {
                        return Err(Error::Limit {
                            limit: "max_layer_bytes",
                            max: self.limits.max_layer_bytes,
                            actual: self.consumed,
                        });
                    }
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("read layer stream", self.current_name(), e)),
            }
        }
    }

    /// Read exactly `out.len()` bytes. Returns Ok(false) if EOF came before the first byte,
    /// Corrupt if it came in the middle.
    fn read_exact_or_eof(&mut self, out: &mut [u8], what: &str) -> Result<bool> {
        let mut done = 0;
        while done < out.len() {
            if !self.fill()? {
                if done == 0 {
                    return Ok(false);
                }
                return Err(self.truncated(what));
            }
            let n = (self.len - self.pos).min(out.len() - done);
            out[done..done + n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
            done += n;
        }
        Ok(true)
    }

    fn truncated(&self, what: &str) -> Error {
        let entry = if self.last_path.is_empty() {
            None
        } else {
            Some(self.current_name())
        };
        Error::corrupt(format!("truncated tar stream in {what}"), entry.as_deref())
    }

    /// Discard `n` bytes of the stream.
    fn skip_bytes(&mut self, mut n: u64, what: &str) -> Result<()> {
        while n > 0 {
            if !self.fill()? {
                return Err(self.truncated(what));
            }
            let k = ((self.len - self.pos) as u64).min(n) as usize;
            self.pos += k;
            n -= k as u64;
        }
        Ok(())
    }

    /// Skip whatever is left of the current entry's data and its padding.
    fn finish_entry(&mut self) -> Result<()> {
        // Sizes are at most i64::MAX (header fields parse as i64, a PAX size is bounded), so
        // this cannot overflow; checked all the same: a wrapped sum would silently
        // desynchronise the stream in a release build.
        let n = self
            .remaining
            .checked_add(self.padding)
            .ok_or_else(|| Error::corrupt("entry size out of range", Some(&self.current_name())))?;
        self.remaining = 0;
        self.padding = 0;
        self.skip_bytes(n, "entry data")
    }

    /// Copy the current entry's remaining data into `out`.
    pub fn copy_data<W: Write>(&mut self, out: &mut W) -> Result<u64> {
        let mut copied = 0u64;
        while self.remaining > 0 {
            if !self.fill()? {
                return Err(self.truncated("file data"));
            }
            let k = ((self.len - self.pos) as u64).min(self.remaining) as usize;
            out.write_all(&self.buf[self.pos..self.pos + k])
                .map_err(|e| Error::io("write", self.current_name(), e))?;
            self.pos += k;
            self.remaining -= k as u64;
            copied += k as u64;
        }
        Ok(copied)
    }

    /// Read the next entry's metadata into `meta`. Returns false at the end of the archive
    /// (after the stream has been consumed to its end and checked to hold only zeros).
    pub fn next_entry(&mut self, meta: &mut EntryMeta) -> Result<bool> {
        if self.finished {
            return Ok(false);
        }
        self.finish_entry()?;
        self.pending.path = None;
        self.pending.link = None;
        self.pending.size = None;
        self.pending.mtime = None;
        self.pending.uid = None;
        self.pending.gid = None;
        self.pending.xattrs.clear();
        self.pending.any = false;
        let mut hdr = [0u8; BLOCK];
        loop {
            if !self.read_exact_or_eof(&mut hdr, "header")? {
                return Err(self.missing_end());
            }
            if hdr.iter().all(|&b| b == 0) {
                if self.pending.any {
                    return Err(Error::corrupt(
                        "end of archive right after an extended header",
                        Some(&self.current_name()),
                    ));
                }
                // A second zero block is expected; tolerate EOF instead (Go's archive/tar does).
                let mut second = [0u8; BLOCK];
                if self.read_exact_or_eof(&mut second, "end-of-archive marker")?
                    && second.iter().any(|&b| b != 0)
                {
                    return Err(Error::corrupt(
                        "non-zero block after the first end-of-archive block",
                        None,
                    ));
                }
                self.drain_trailer()?;
                self.finished = true;
                return Ok(false);
            }
            verify_checksum(&hdr, &self.last_path)?;
            let typeflag = hdr[156];
            let size = parse_num(&hdr[124..136], "size", &self.last_path)?;
            let size = u64::try_from(size)
                .map_err(|_| Error::corrupt("negative size", Some(&self.current_name())))?;
            match typeflag {
                b'x' | b'g' | b'L' | b'K' => {
                    // PAX and GNU L/K records: bounded before anything is allocated.
                    if size > self.limits.max_header_bytes {
                        return Err(Error::Limit {
                            limit: "max_header_bytes",
                            max: self.limits.max_header_bytes,
                            actual: size,
                        });
                    }
                    self.read_record(size)?;
                    match typeflag {
                        b'x' => self.parse_pax()?,
                        b'g' => {} // global headers only carry defaults we do not use
                        b'L' => self.pending.path = Some(cstr_bytes(&self.record).to_vec()),
                        _ => self.pending.link = Some(cstr_bytes(&self.record).to_vec()),
                    }
                    if typeflag != b'g' {
                        self.pending.any = true;
                    }
                    continue;
                }
                _ => {}
            }
            return self.fill_entry(&hdr, typeflag, size, meta).map(|()| true);
        }
    }

    fn missing_end(&self) -> Error {
        self.truncated("archive: end-of-archive marker missing")
    }

    /// Read a metadata record of `size` bytes (already checked against the limit) into
    /// `self.record`, then skip its padding.
    fn read_record(&mut self, size: u64) -> Result<()> {
        let n = usize::try_from(size).map_err(|_| self.truncated("extended header"))?;
        self.record.clear();
        self.record.resize(n, 0);
        let mut rec = std::mem::take(&mut self.record);
        let ok = self.read_exact_or_eof(&mut rec, "extended header");
        self.record = rec;
        if !ok? && n > 0 {
            return Err(self.truncated("extended header"));
        }
        self.skip_bytes(pad(size), "extended header padding")
    }

    fn parse_pax(&mut self) -> Result<()> {
        let rec = std::mem::take(&mut self.record);
        let res = self.parse_pax_records(&rec);
        self.record = rec;
        res
    }

    fn parse_pax_records(&mut self, mut rec: &[u8]) -> Result<()> {
        let name = self.current_name();
        let bad = |why: &str| Error::corrupt(format!("malformed PAX header: {why}"), Some(&name));
        while !rec.is_empty() {
            // "%d %s=%s\n", where %d counts the whole record.
            let sp = rec
                .iter()
                .position(|&b| b == b' ')
                .ok_or_else(|| bad("no length"))?;
            let len: usize = std::str::from_utf8(&rec[..sp])
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad("bad length"))?;
            if len <= sp + 1 || len > rec.len() || rec[len - 1] != b'\n' {
                return Err(bad("record length out of range"));
            }
            let kv = &rec[sp + 1..len - 1];
            rec = &rec[len..];
            let eq = kv
                .iter()
                .position(|&b| b == b'=')
                .ok_or_else(|| bad("record without '='"))?;
            let (key, value) = (&kv[..eq], &kv[eq + 1..]);
            if value.is_empty() {
                // An empty value deletes the keyword (POSIX pax; Go's archive/tar does so):
                // the header's own field applies again, an xattr is not set.
                match key {
                    b"path" => self.pending.path = None,
                    b"linkpath" => self.pending.link = None,
                    b"size" => self.pending.size = None,
                    b"uid" => self.pending.uid = None,
                    b"gid" => self.pending.gid = None,
                    b"mtime" => self.pending.mtime = None,
                    _ => {
                        if let Some(xname) = key.strip_prefix(b"SCHILY.xattr.") {
                            self.pending.xattrs.retain(|(n, _)| n.as_slice() != xname);
                        }
                    }
                }
                continue;
            }
            match key {
                b"path" => self.pending.path = Some(value.to_vec()),
                b"linkpath" => self.pending.link = Some(value.to_vec()),
                b"size" => {
                    // Go's archive/tar parses it as an int64: a larger size is no size.
                    let size = parse_dec_u64(value)
                        .filter(|&v| i64::try_from(v).is_ok())
                        .ok_or_else(|| bad("size"))?;
                    self.pending.size = Some(size);
                }
                b"uid" => self.pending.uid = Some(parse_dec_u64(value).ok_or_else(|| bad("uid"))?),
                b"gid" => self.pending.gid = Some(parse_dec_u64(value).ok_or_else(|| bad("gid"))?),
                b"mtime" => {
                    self.pending.mtime = Some(parse_pax_time(value).ok_or_else(|| bad("mtime"))?)
                }
                _ if key.starts_with(b"SCHILY.xattr.") => {
                    let xname = &key[b"SCHILY.xattr.".len()..];
                    if xname.is_empty() {
                        return Err(bad("empty xattr name"));
                    }
                    self.pending.xattrs.push((xname.to_vec(), value.to_vec()));
                }
                _ if key.starts_with(b"GNU.sparse.") => {
                    return Err(Error::corrupt(
                        "GNU sparse files are not supported",
                        Some(&name),
                    ));
                }
                // atime, ctime, uname, gname, comment, charset, LIBARCHIVE.* ...: not used.
                _ => {}
            }
        }
        Ok(())
    }

    fn fill_entry(
        &mut self,
        hdr: &[u8; BLOCK],
        typeflag: u8,
        hdr_size: u64,
        meta: &mut EntryMeta,
    ) -> Result<()> {
        // Path: PAX/GNU override, else (ustar prefix "/") name.
        meta.path.clear();
        if let Some(p) = self.pending.path.take() {
            meta.path = p;
        } else {
            let is_posix = &hdr[257..263] == b"ustar\0";
            let prefix = cstr_bytes(&hdr[345..500]);
            if is_posix && !prefix.is_empty() {
                meta.path.extend_from_slice(prefix);
                meta.path.push(b'/');
            }
            meta.path.extend_from_slice(cstr_bytes(&hdr[..100]));
        }
        self.last_path.clear();
        self.last_path.extend_from_slice(&meta.path);
        let name = self.current_name();

        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(Error::Limit {
                limit: "max_entries",
                max: self.limits.max_entries,
                actual: self.entries,
            });
        }

        meta.link.clear();
        if let Some(l) = self.pending.link.take() {
            meta.link = l;
        } else {
            meta.link.extend_from_slice(cstr_bytes(&hdr[157..257]));
        }
        for (what, p) in [("path", &meta.path), ("link target", &meta.link)] {
            if p.len() as u64 > self.limits.max_path_len {
                return Err(Error::Limit {
                    limit: "max_path_len",
                    max: self.limits.max_path_len,
                    actual: p.len() as u64,
                });
            }
            if p.contains(&0) {
                return Err(Error::corrupt(format!("NUL byte in {what}"), Some(&name)));
            }
        }

        let kind = match typeflag {
            b'0' | b'7' => Kind::Regular,
            0 => {
                if meta.path.ends_with(b"/") {
                    Kind::Dir
                } else {
                    Kind::Regular
                }
            }
            b'1' => Kind::HardLink,
            b'2' => Kind::Symlink,
            b'3' => Kind::Char,
            b'4' => Kind::Block,
            b'5' => Kind::Dir,
            b'6' => Kind::Fifo,
            b'S' => {
                return Err(Error::corrupt(
                    "GNU sparse files are not supported",
                    Some(&name),
                ))
            }
            t => {
                return Err(Error::corrupt(
                    format!("unsupported tar entry type {:?}", t as char),
                    Some(&name),
                ))
            }
        };
        meta.kind = Some(kind);
        let mode = parse_num(&hdr[100..108], "mode", &self.last_path)?;
        meta.mode = (mode & 0o7777) as u32;
        meta.uid = match self.pending.uid {
            Some(u) => u,
            None => non_negative(
                parse_num(&hdr[108..116], "uid", &self.last_path)?,
                "uid",
                &name,
            )?,
        };
        meta.gid = match self.pending.gid {
            Some(g) => g,
            None => non_negative(
                parse_num(&hdr[116..124], "gid", &self.last_path)?,
                "gid",
                &name,
            )?,
        };
        // Header-only types have no data section, whatever the size field or a PAX `size`
        // says (Go's archive/tar: `isHeaderOnlyType`); their next header follows at once.
        // Skipping "their data" instead would hide entries that containerd and umoci apply.
        let size = if kind == Kind::Regular {
            self.pending.size.unwrap_or(hdr_size)
        } else {
            0
        };
        meta.size = size;
        (meta.mtime_sec, meta.mtime_nsec) = match self.pending.mtime {
            Some(t) => t,
            None => (parse_num(&hdr[136..148], "mtime", &self.last_path)?, 0),
        };
        if matches!(kind, Kind::Char | Kind::Block) {
            meta.dev_major = non_negative(
                parse_num(&hdr[329..337], "devmajor", &self.last_path)?,
                "devmajor",
                &name,
            )?;
            meta.dev_minor = non_negative(
                parse_num(&hdr[337..345], "devminor", &self.last_path)?,
                "devminor",
                &name,
            )?;
        } else {
            meta.dev_major = 0;
            meta.dev_minor = 0;
        }
        std::mem::swap(&mut meta.xattrs, &mut self.pending.xattrs);
        self.pending.xattrs.clear();

        if kind == Kind::Regular && size > self.limits.max_entry_bytes {
            return Err(Error::Limit {
                limit: "max_entry_bytes",
                max: self.limits.max_entry_bytes,
                actual: size,
            });
        }
        self.remaining = size;
        self.padding = pad(size);
        Ok(())
    }

    /// After the end-of-archive marker: read the rest of the stream (the caller hashes it) and
    /// insist that it is all zeros.
    fn drain_trailer(&mut self) -> Result<()> {
        loop {
            if !self.fill()? {
                return Ok(());
            }
            if self.buf[self.pos..self.len].iter().any(|&b| b != 0) {
                return Err(Error::corrupt(
                    "non-zero data after the end-of-archive marker",
                    None,
                ));
            }
            self.pos = self.len;
        }
    }
}

fn pad(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// Bytes up to the first NUL.
fn cstr_bytes(b: &[u8]) -> &[u8] {
    match b.iter().position(|&c| c == 0) {
        Some(i) => &b[..i],
        None => b,
    }
}

fn non_negative(v: i64, what: &str, name: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| Error::corrupt(format!("negative {what}"), Some(name)))
}

fn verify_checksum(hdr: &[u8; BLOCK], last: &[u8]) -> Result<()> {
    let stored = parse_num(&hdr[148..156], "checksum", last)?;
    let mut unsigned: i64 = 0;
    let mut signed: i64 = 0;
    for (i, &b) in hdr.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += i64::from(b);
        signed += i64::from(b as i8);
    }
    if stored != unsigned && stored != signed {
        let after = if last.is_empty() {
            "at the first header".to_owned()
        } else {
            format!("in the header after {:?}", lossy(last))
        };
        return Err(Error::corrupt(
            format!("header checksum mismatch {after}: stored {stored}, computed {unsigned}"),
            None,
        ));
    }
    Ok(())
}

/// Parse a numeric header field: octal (space/NUL padded) or GNU base-256 (high bit set).
fn parse_num(field: &[u8], what: &str, last: &[u8]) -> Result<i64> {
    let bad = || {
        let at = if last.is_empty() {
            None
        } else {
            Some(lossy(last))
        };
        Error::corrupt(
            format!("invalid numeric field {what} in tar header"),
            at.as_deref().map(|s| format!("after {s}")).as_deref(),
        )
    };
    if let Some(&first) = field.first() {
        if first & 0x80 != 0 {
            // Base-256, big-endian two's complement; 0xff as first byte means negative.
            let negative = first & 0x40 != 0;
            let mut v: i128 = i128::from(first & 0x7f) - if negative { 0x80 } else { 0 };
            for &b in &field[1..] {
                v = v
                    .checked_mul(256)
                    .and_then(|v| v.checked_add(i128::from(b)))
                    .ok_or_else(bad)?;
                if v.abs() > i128::from(i64::MAX) {
                    return Err(bad());
                }
            }
            return i64::try_from(v).map_err(|_| bad());
        }
    }
    let mut v: i64 = 0;
    let mut started = false;
    for &b in field {
        match b {
            b'0'..=b'7' => {
                started = true;
                v = v
                    .checked_mul(8)
                    .and_then(|v| v.checked_add(i64::from(b - b'0')))
                    .ok_or_else(bad)?;
            }
            b' ' | 0 if !started => {}
            b' ' | 0 => break,
            _ => return Err(bad()),
        }
    }
    Ok(v)
}

fn parse_dec_u64(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// PAX time: `[-]SECONDS[.FRACTION]`, fraction truncated to nanoseconds.
fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let (neg, v) = match v.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, v),
    };
    let (int, frac) = match v.iter().position(|&b| b == b'.') {
        Some(i) => (&v[..i], &v[i + 1..]),
        None => (v, &b""[..]),
    };
    let secs = i64::try_from(parse_dec_u64(int)?).ok()?;
    if !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut ns: u32 = 0;
    for i in 0..9 {
        ns = ns * 10 + frac.get(i).map_or(0, |d| u32::from(d - b'0'));
    }
    if !neg {
        return Some((secs, ns));
    }
    if ns == 0 {
        Some((-secs, 0))
    } else {
        Some((-secs - 1, 1_000_000_000 - ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_and_base256_fields_parse() {
        assert_eq!(parse_num(b"0000644\0", "mode", b"").ok(), Some(0o644));
        assert_eq!(parse_num(b"   755 \0", "mode", b"").ok(), Some(0o755));
        assert_eq!(parse_num(b"\0\0\0\0\0\0\0\0", "x", b"").ok(), Some(0));
        let mut f = [0u8; 12];
        f[0] = 0x80;
        f[11] = 0x05;
        f[10] = 0x01;
        assert_eq!(parse_num(&f, "size", b"").ok(), Some(0x105));
        assert!(parse_num(b"00x0644\0", "mode", b"").is_err());
        let neg = [0xffu8; 12];
        assert_eq!(parse_num(&neg, "mtime", b"").ok(), Some(-1));
    }

    #[test]
    fn pax_times_keep_nanoseconds() {
        assert_eq!(
            parse_pax_time(b"1700000000.123456789"),
            Some((1700000000, 123456789))
        );
        assert_eq!(parse_pax_time(b"5.5"), Some((5, 500_000_000)));
        assert_eq!(parse_pax_time(b"-1.25"), Some((-2, 750_000_000)));
        assert_eq!(parse_pax_time(b"12"), Some((12, 0)));
        assert_eq!(parse_pax_time(b"x"), None);
    }
}
