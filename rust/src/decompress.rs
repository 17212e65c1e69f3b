//! Layer media type → gzip | zstd | none decoder, magic bytes double-checked, output bounded.
//!
//! image-spec `layer.md` and `media-types.md` name the accepted types; Docker's schema 2 gzip
//! layer types are accepted too. The media type decides the codec and the first bytes must
//! agree (gzip `1f 8b`, zstd `28 b5 2f fd`); a mismatch is a corrupt layer, never a guess.
//! The decoder enforces `max_layer_bytes`, the decompression ratio (after `ratio_grace_bytes`)
//! and the zstd window, and rejects anything after the last complete gzip member / zstd frame.

use std::io::{self, BufRead, Chain, Cursor, Read};

#[cfg(not(feature = "isal"))]
use flate2::bufread::MultiGzDecoder as GzDecoder;

#[cfg(feature = "isal")]
use crate::igzip::GzDecoder;

use crate::error::{Error, Result};
use crate::limits::Limits;

/// How a layer's blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    None,
    Gzip,
    Zstd,
}

/// Every layer media type we accept, with its codec.
pub const LAYER_MEDIA_TYPES: &[(&str, Codec)] = &[
    ("application/vnd.oci.image.layer.v1.tar", Codec::None),
    ("application/vnd.oci.image.layer.v1.tar+gzip", Codec::Gzip),
    ("application/vnd.oci.image.layer.v1.tar+zstd", Codec::Zstd),
    (
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        Codec::None,
    ),
    (
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        Codec::Gzip,
    ),
    (
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        Codec::Zstd,
    ),
    (
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        Codec::Gzip,
    ),
    (
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        Codec::Gzip,
    ),
];

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
/// Longest zstd frame header we parse for the window check (magic + 14 bytes).
const PEEK: usize = 18;

/// The codec of a layer media type, or `UnsupportedMediaType`.
pub fn codec_for(media_type: &str) -> Result<Codec> {
    LAYER_MEDIA_TYPES
        .iter()
        .find(|(m, _)| *m == media_type)
        .map(|(_, c)| *c)
        .ok_or_else(|| unsupported(media_type))
}

#[cold]
fn unsupported(media_type: &str) -> Error {
    Error::UnsupportedMediaType(media_type.to_owned())
}

#[cold]
fn corrupt(reason: String) -> Error {
    Error::corrupt(reason, None)
}

#[cold]
fn limit(limit: &'static str, max: u64, actual: u64) -> Error {
    Error::Limit { limit, max, actual }
}

/// A `BufRead` that counts the compressed bytes the decoder has consumed (for the ratio).
pub(crate) struct Counting<R> {
    inner: R,
    consumed: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.consumed += n as u64;
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Counting<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }
    fn consume(&mut self, amt: usize) {
        self.consumed += amt as u64;
        self.inner.consume(amt);
    }
}

type Src<R> = Counting<Chain<Cursor<Vec<u8>>, R>>;

enum Inner<R: BufRead> {
    None(Src<R>),
    Gzip(Box<GzDecoder<Src<R>>>),
    Zstd(zstd::stream::read::Decoder<'static, Src<R>>),
}

/// A bounded decoder of one layer blob. Errors from `read` that come from the decoder are
/// `Corrupt`/`Limit`; errors of the underlying source surface as `Corrupt` too, so the caller
/// should prefer its own record of a source failure.
pub struct Decoder<R: BufRead> {
    inner: Inner<R>,
    codec: Codec,
    out: u64,
    limits: Limits,
}

impl<R: BufRead> Decoder<R> {
    /// Check the magic bytes against `media_type` and set up the decoder.
    pub fn new(media_type: &str, mut src: R, limits: &Limits) -> Result<Self> {
        let codec = codec_for(media_type)?;
        let head = peek(&mut src, PEEK).map_err(|e| corrupt(format!("reading layer: {e}")))?;
        check_magic(media_type, codec, &head)?;
        if codec == Codec::Zstd {
            check_zstd_window(&head, limits.zstd_window_log_max)?;
        }
        let src = Counting {
            inner: Cursor::new(head).chain(src),
            consumed: 0,
        };
        let inner = match codec {
            Codec::None => Inner::None(src),
            Codec::Gzip => Inner::Gzip(Box::new(GzDecoder::new(src))),
            Codec::Zstd => {
                let mut dec = zstd::stream::read::Decoder::with_buffer(src)
                    .map_err(|e| corrupt(format!("zstd: {e}")))?;
                dec.window_log_max(limits.zstd_window_log_max)
                    .map_err(|e| corrupt(format!("zstd: {e}")))?;
                Inner::Zstd(dec)
            }
        };
        Ok(Self {
            inner,
            codec,
            out: 0,
            limits: *limits,
        })
    }

    fn consumed(&self) -> u64 {
        match &self.inner {
            Inner::None(s) => s.consumed,
            Inner::Gzip(d) => d.get_ref().consumed,
            Inner::Zstd(d) => d.get_ref().consumed,
        }
    }

    /// Uncompressed bytes produced so far.
    pub fn produced(&self) -> u64 {
        self.out
    }

    /// Read decompressed bytes; `Ok(0)` only at the clean end of the stream.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        let res = loop {
            let r = match &mut self.inner {
                Inner::None(s) => s.read(buf),
                Inner::Gzip(d) => d.read(buf),
                Inner::Zstd(d) => d.read(buf),
            };
            match r {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        };
        let n = match res {
            Ok(n) => n,
            Err(e) => return Err(self.decode_error(&e)),
        };
        self.out += n as u64;
        self.check_limits()?;
        Ok(n)
    }

    #[inline]
    fn check_limits(&self) -> Result<()> {
        let l = &self.limits;
        if self.out > l.max_layer_bytes {
            return Err(limit(
                "uncompressed layer size",
                l.max_layer_bytes,
                self.out,
            ));
        }
        if self.out > l.ratio_grace_bytes && self.codec != Codec::None {
            let consumed = self.consumed().max(1);
            if self.out > consumed.saturating_mul(l.max_ratio) {
                return Err(limit(
                    "decompression ratio",
                    l.max_ratio,
                    self.out / consumed,
                ));
            }
        }
        Ok(())
    }

    #[cold]
    fn decode_error(&self, e: &io::Error) -> Error {
        let what = match self.codec {
            Codec::None => "reading layer",
            Codec::Gzip => "gzip",
            Codec::Zstd => "zstd",
        };
        if e.kind() == io::ErrorKind::UnexpectedEof {
            return corrupt(format!(
                "{what}: stream truncated after {} compressed bytes",
                self.consumed()
            ));
        }
        corrupt(format!("{what}: {e}"))
    }

    /// After `read` returned 0: make sure nothing follows the compressed stream, and return
    /// the source (positioned at its end for compressed layers).
    pub fn finish(self) -> Result<R> {
        let codec = self.codec;
        let mut src = match self.inner {
            Inner::None(s) => s,
            Inner::Gzip(d) => (*d).into_inner(),
            Inner::Zstd(d) => d.finish(),
        };
        if codec != Codec::None {
            let rest = src
                .fill_buf()
                .map_err(|e| corrupt(format!("reading layer: {e}")))?;
            if !rest.is_empty() {
                return Err(corrupt(format!(
                    "{} bytes of trailing data after the end of the compressed stream",
                    rest.len()
                )));
            }
        }
        let (_, src) = src.inner.into_inner();
        Ok(src)
    }
}

/// Read up to `n` bytes from the start of `src` (fewer only at EOF).
fn peek<R: Read>(src: &mut R, n: usize) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(n);
    src.take(n as u64).read_to_end(&mut head)?;
    Ok(head)
}

/// Bytes an uncompressed layer's start must be checked over (the longest magic).
pub(crate) const PLAIN_HEAD: usize = 4;

/// The magic check of an uncompressed layer whose bytes bypass `Decoder` (the pipeline passes
/// them through without a copy): `head` is the blob's first `PLAIN_HEAD` bytes (fewer only if
/// the blob is shorter).
pub(crate) fn check_plain_head(media_type: &str, head: &[u8]) -> Result<()> {
    check_magic(media_type, Codec::None, head)
}

/// The uncompressed layer size limit, as `Decoder` enforces it.
pub(crate) fn check_plain_size(limits: &Limits, size: u64) -> Result<()> {
    if size > limits.max_layer_bytes {
        return Err(limit(
            "uncompressed layer size",
            limits.max_layer_bytes,
            size,
        ));
    }
    Ok(())
}

fn check_magic(media_type: &str, codec: Codec, head: &[u8]) -> Result<()> {
    let found = if head.starts_with(GZIP_MAGIC) {
        Some(Codec::Gzip)
    } else if head.starts_with(ZSTD_MAGIC) {
        Some(Codec::Zstd)
    } else {
        None
    };
    match (codec, found) {
        (Codec::None, None) => Ok(()),
        (Codec::Gzip, Some(Codec::Gzip)) | (Codec::Zstd, Some(Codec::Zstd)) => Ok(()),
        _ => Err(magic_mismatch(media_type, codec, found, head)),
    }
}

#[cold]
fn magic_mismatch(media_type: &str, codec: Codec, found: Option<Codec>, head: &[u8]) -> Error {
    let name = |c: Codec| match c {
        Codec::None => "uncompressed tar",
        Codec::Gzip => "gzip",
        Codec::Zstd => "zstd",
    };
    let hex: String = head.iter().take(4).map(|b| format!("{b:02x}")).collect();
    let seen = match found {
        Some(c) => format!("the data is {} (starts with {hex})", name(c)),
        None if head.is_empty() => "the blob is empty".to_owned(),
        None => format!("the data starts with {hex}, not the {} magic", name(codec)),
    };
    corrupt(format!(
        "media type {media_type} says {} but {seen}",
        name(codec)
    ))
}

/// Refuse a first zstd frame whose window exceeds `2^window_log_max` before allocating it
/// (zstd format RFC 8878 §3.1.1.1.2). Later frames are checked by libzstd itself.
fn check_zstd_window(head: &[u8], window_log_max: u32) -> Result<()> {
    let Some(window) = zstd_window_size(head) else {
        return Ok(()); // too short to tell: libzstd reports the truncation
    };
    let max = 1u64 << window_log_max.min(63);
    if window > max {
        return Err(limit("zstd window bytes", max, window));
    }
    Ok(())
}

fn zstd_window_size(head: &[u8]) -> Option<u64> {
    let fhd = *head.get(4)?;
    let single_segment = fhd & 0x20 != 0;
    if !single_segment {
        let wd = *head.get(5)?;
        let log = 10 + u32::from(wd >> 3);
        let base = 1u64 << log;
        return Some(base + (base / 8) * u64::from(wd & 7));
    }
    // Single segment: the window is the frame content size.
    let did_len = [0usize, 1, 2, 4][usize::from(fhd & 3)];
    let fcs_len = [1usize, 2, 4, 8][usize::from(fhd >> 6)];
    let at = 5 + did_len;
    let bytes = head.get(at..at + fcs_len)?;
    let mut v = 0u64;
    for (i, b) in bytes.iter().enumerate() {
        v |= u64::from(*b) << (8 * i);
    }
    if fcs_len == 2 {
        v += 256;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const TGZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    const TZST: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    const TAR: &str = "application/vnd.oci.image.layer.v1.tar";

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn decode_all(mt: &str, blob: &[u8], limits: &Limits) -> Result<Vec<u8>> {
        let mut d = Decoder::new(mt, blob, limits)?;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = d.read(&mut buf)?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        d.finish()?;
        Ok(out)
    }

    #[test]
    fn media_types_map_to_codecs() {
        assert_eq!(codec_for(TGZ).unwrap(), Codec::Gzip);
        assert_eq!(
            codec_for("application/vnd.docker.image.rootfs.diff.tar.gzip").unwrap(),
            Codec::Gzip
        );
        assert!(matches!(
            codec_for("application/vnd.oci.image.layer.v1.tar+bzip2"),
            Err(Error::UnsupportedMediaType(_))
        ));
    }

    #[test]
    fn gzip_multi_member_decodes_whole() {
        let mut blob = gz(b"hello ");
        blob.extend(gz(b"world"));
        assert_eq!(
            decode_all(TGZ, &blob, &Limits::default()).unwrap(),
            b"hello world"
        );
    }

    #[test]
    fn zstd_decodes_and_rejects_trailing_garbage() {
        let mut blob = zstd::encode_all(&b"data"[..], 3).unwrap();
        assert_eq!(
            decode_all(TZST, &blob, &Limits::default()).unwrap(),
            b"data"
        );
        blob.extend_from_slice(b"junk");
        assert!(matches!(
            decode_all(TZST, &blob, &Limits::default()),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn gzip_trailing_garbage_and_truncation_are_corrupt() {
        let mut blob = gz(&[7u8; 10000]);
        let cut = &blob[..blob.len() - 5];
        assert!(matches!(
            decode_all(TGZ, cut, &Limits::default()),
            Err(Error::Corrupt { .. })
        ));
        blob.extend_from_slice(b"junk");
        assert!(matches!(
            decode_all(TGZ, &blob, &Limits::default()),
            Err(Error::Corrupt { .. })
        ));
    }

    /// A source that hands out at most `step` bytes per `fill_buf`, to split members,
    /// headers and trailers at every possible place.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.fill_buf()?.len().min(buf.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.consume(n);
            Ok(n)
        }
    }

    impl BufRead for Trickle<'_> {
        fn fill_buf(&mut self) -> io::Result<&[u8]> {
            Ok(&self.data[..self.step.min(self.data.len())])
        }
        fn consume(&mut self, amt: usize) {
            self.data = &self.data[amt..];
        }
    }

    fn decode_trickle(blob: &[u8], step: usize, out_step: usize) -> Result<Vec<u8>> {
        let src = Trickle { data: blob, step };
        let mut d = Decoder::new(TGZ, src, &Limits::default())?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; out_step];
        loop {
            let n = d.read(&mut buf)?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        d.finish()?;
        Ok(out)
    }

    fn mixed_payload(n: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_u32;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                // Runs of text-like bytes and stretches of noise: matches and literals.
                if (i / 4096) % 2 == 0 {
                    b"layer tar bytes "[i % 16]
                } else {
                    x as u8
                }
            })
            .collect()
    }

    #[test]
    fn gzip_members_split_anywhere_decode_whole() {
        let a = mixed_payload(200_000);
        let b = b"second member".to_vec();
        let mut blob = gz(&a);
        blob.extend(gz(&b));
        blob.extend(gz(b"")); // an empty member is still a member
        let stored = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::none());
            e.write_all(&a[..70_000]).unwrap();
            e.finish().unwrap()
        };
        blob.extend(&stored);
        let mut want = a.clone();
        want.extend(&b);
        want.extend(&a[..70_000]);
        for (step, out_step) in [
            (1, 7),
            (3, 1),
            (10, 4096),
            (4096, 65536),
            (1 << 20, 256 << 10),
        ] {
            let got = decode_trickle(&blob, step, out_step).unwrap();
            assert!(got == want, "step {step}/{out_step}: {} bytes", got.len());
        }
    }

    #[test]
    fn gzip_header_fields_are_skipped() {
        let mut e = flate2::GzBuilder::new()
            .filename("layer.tar")
            .comment("made by a test")
            .extra(vec![1, 2, 3, 4])
            .write(Vec::new(), flate2::Compression::default());
        e.write_all(b"payload").unwrap();
        let blob = e.finish().unwrap();
        for step in [4096, 30, 13, 8, 5, 3, 2, 1] {
            assert_eq!(
                decode_trickle(&blob, step, 3).unwrap(),
                b"payload",
                "step {step}"
            );
        }
    }

    #[test]
    fn gzip_bad_distance_or_symbol_is_corrupt_from_any_source() {
        // Found by the decompress fuzz target (fuzz/regressions/decompress/): igzip fails
        // with avail_in larger than the input it was handed.
        let lookback: &[u8] = b"\x1f\x8b\x08\x1e\x00\x00\x00\x00\x00\xff\x06\x00AB\x02\x00xyname.tar\x00\
            a comment\x00\x03\xf5+H\xac\xcc\xc9OL\x00\xf3\x00\xfb+\x01\x00\x15j,B\x9a\x07\x00\x00\x00";
        let symbol: &[u8] = b"\x1f\x8b\x08\x08\x28\xb5\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\
            \x00\x22\xff\xff\xff\xff\x2f\x29\x00\x00\x3f\x00\x00\x00\x00\x00\x24";
        assert_eq!((lookback.len(), symbol.len()), (62, 33));
        for blob in [lookback, symbol] {
            let err = decode_all(TGZ, blob, &Limits::default()).unwrap_err();
            assert!(matches!(err, Error::Corrupt { .. }), "{err}");
            for step in [1, 3, 7, 4096] {
                let err = decode_trickle(blob, step, 100).unwrap_err();
                assert!(matches!(err, Error::Corrupt { .. }), "{err}");
            }
        }
    }

    #[test]
    fn gzip_header_crc_is_checked() {
        let data = b"payload";
        let mut member = vec![0x1f, 0x8b, 8, 2 | 8, 0, 0, 0, 0, 0, 255];
        member.extend_from_slice(b"name\0");
        let mut crc = flate2::Crc::new();
        crc.update(&member);
        member.extend_from_slice(&(crc.sum() as u16).to_le_bytes());
        let mut e = flate2::write::DeflateEncoder::new(member, flate2::Compression::default());
        e.write_all(data).unwrap();
        let mut member = e.finish().unwrap();
        let mut crc = flate2::Crc::new();
        crc.update(data);
        member.extend_from_slice(&crc.sum().to_le_bytes());
        member.extend_from_slice(&(data.len() as u32).to_le_bytes());
        assert_eq!(decode_trickle(&member, 1, 100).unwrap(), data);
        member[15] ^= 1; // the header CRC
        let err = decode_trickle(&member, 4096, 100).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }

    #[test]
    fn gzip_bad_crc_length_and_truncation_are_corrupt_at_any_split() {
        let data = mixed_payload(50_000);
        let blob = gz(&data);
        let n = blob.len();
        let mut bad_crc = blob.clone();
        bad_crc[n - 8] ^= 1;
        let mut bad_len = blob.clone();
        bad_len[n - 1] ^= 1;
        let mut garbage = blob.clone();
        garbage.extend(gz(b"x"));
        garbage.extend_from_slice(&[0, 0, 0, 0]);
        for step in [1, 5, 4096] {
            for bad in [&bad_crc, &bad_len, &blob[..n - 1], &blob[..n / 2], &garbage] {
                let err = decode_trickle(bad, step, 1000).unwrap_err();
                assert!(matches!(err, Error::Corrupt { .. }), "{err}");
            }
        }
        let err = decode_trickle(&blob[..n - 3], 4096, 1000).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn magic_must_match_media_type() {
        let blob = gz(b"x");
        let err = decode_all(TAR, &blob, &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("the data is gzip"), "{err}");
        assert!(matches!(
            decode_all(TZST, &blob, &Limits::default()),
            Err(Error::Corrupt { .. })
        ));
        assert!(matches!(
            decode_all(TGZ, b"", &Limits::default()),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn ratio_and_size_limits_apply() {
        let blob = gz(&vec![0u8; 4 << 20]);
        let limits = Limits {
            ratio_grace_bytes: 1 << 20,
            max_ratio: 10,
            ..Limits::default()
        };
        let err = decode_all(TGZ, &blob, &limits).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Limit {
                    limit: "decompression ratio",
                    ..
                }
            ),
            "{err}"
        );
        let limits = Limits {
            max_layer_bytes: 1000,
            ..Limits::default()
        };
        assert!(matches!(
            decode_all(TGZ, &blob, &limits),
            Err(Error::Limit { .. })
        ));
    }

    #[test]
    fn zstd_window_over_limit_is_refused() {
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.window_log(24).unwrap();
        enc.write_all(&vec![1u8; 1 << 16]).unwrap();
        let blob = enc.finish().unwrap();
        let limits = Limits {
            zstd_window_log_max: 20,
            ..Limits::default()
        };
        let err = decode_all(TZST, &blob, &limits).unwrap_err();
        assert!(matches!(err, Error::Limit { .. }), "{err}");
        assert!(decode_all(TZST, &blob, &Limits::default()).is_ok());
    }
}
