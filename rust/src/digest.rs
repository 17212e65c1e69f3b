//! Strict digest parsing and streaming sha256 that checks size and digest at EOF.
//!
//! A digest is `sha256:` followed by 64 lowercase hex digits (image-spec `descriptor.md#digests`).
//! Other well-formed algorithms (`sha512:…`) are refused as unsupported, anything else is
//! invalid. Hashing uses the `sha2` crate, which on x86_64 detects SHA-NI at run time
//! (cpufeatures) and uses the intrinsics; its `asm` feature only swaps the non-SHA-NI fallback.

use std::io::{self, Read};
use std::path::Path;

use sha2::Digest as _;

use crate::error::{Error, Result};

const SHA256_PREFIX: &str = "sha256:";

/// Read buffer of `sha256_file`: large enough that syscalls vanish next to hashing.
const FILE_BUF: usize = 1 << 20;

/// Validate `digest` (`sha256:` + 64 lowercase hex) and return its hex part.
pub fn parse_digest(digest: &str) -> Result<&str> {
    if let Some(hex) = digest.strip_prefix(SHA256_PREFIX) {
        if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Ok(hex);
        }
        return Err(invalid(digest));
    }
    if is_well_formed(digest) {
        return Err(unsupported(digest));
    }
    Err(invalid(digest))
}

#[cold]
fn invalid(digest: &str) -> Error {
    Error::InvalidDigest(digest.to_owned())
}

#[cold]
fn unsupported(digest: &str) -> Error {
    Error::UnsupportedAlgorithm(digest.to_owned())
}

/// The image-spec digest grammar: `algorithm ":" encoded`, algorithm components `[a-z0-9]+`
/// joined by `[+._-]`, encoded `[a-zA-Z0-9=_-]+`.
fn is_well_formed(digest: &str) -> bool {
    let Some((algorithm, encoded)) = digest.split_once(':') else {
        return false;
    };
    let components_ok = algorithm.split(['+', '.', '_', '-']).all(|c| {
        !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    });
    let encoded_ok = !encoded.is_empty()
        && encoded
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-'));
    components_ok && encoded_ok
}

/// Streaming sha256 with a byte count.
#[derive(Clone, Default)]
pub struct Sha256 {
    hasher: sha2::Sha256,
    size: u64,
}

impl Sha256 {
    pub fn new() -> Self {
        Self::default()
    }

    #[inline]
    pub fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.size += data.len() as u64;
    }

    /// Bytes hashed so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// `sha256:<hex>` of everything so far (does not reset).
    pub fn digest(&self) -> String {
        format_sha256(&self.hasher.clone().finalize())
    }
}

/// `sha256:` + lowercase hex of a raw 32-byte hash.
pub(crate) fn format_sha256(raw: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(SHA256_PREFIX.len() + 2 * raw.len());
    s.push_str(SHA256_PREFIX);
    for b in raw {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s
}

/// Check a computed (digest, size) against expectations: size first (a truncated download is
/// better reported as short than as a different hash), then the digest.
pub fn verify(
    what: &'static str,
    actual_digest: &str,
    actual_size: u64,
    expected_digest: Option<&str>,
    expected_size: Option<u64>,
) -> Result<()> {
    if let Some(expected) = expected_size {
        if expected != actual_size {
            return Err(size_mismatch(expected, actual_size));
        }
    }
    if let Some(expected) = expected_digest {
        if expected != actual_digest {
            return Err(digest_mismatch(what, expected, actual_digest));
        }
    }
    Ok(())
}

#[cold]
pub(crate) fn size_mismatch(expected: u64, actual: u64) -> Error {
    Error::SizeMismatch { expected, actual }
}

#[cold]
fn digest_mismatch(what: &'static str, expected: &str, actual: &str) -> Error {
    Error::DigestMismatch {
        what,
        expected: expected.to_owned(),
        actual: actual.to_owned(),
    }
}

/// Hash a whole file; returns (`sha256:<hex>`, size).
pub fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let shown = || path.display().to_string();
    let mut file = crate::safepath::open_read(path).map_err(|e| Error::io("open", shown(), e))?;
    let mut buf = vec![0u8; FILE_BUF];
    let mut sha = Sha256::new();
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => sha.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read", shown(), e)),
        }
    }
    Ok((sha.digest(), sha.size()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parse_accepts_lowercase_sha256_only() {
        assert_eq!(parse_digest(EMPTY).ok(), Some(&EMPTY[7..]));
        let upper = EMPTY.to_uppercase().replace("SHA256", "sha256");
        assert!(matches!(parse_digest(&upper), Err(Error::InvalidDigest(_))));
        assert!(matches!(
            parse_digest("sha256:abc"),
            Err(Error::InvalidDigest(_))
        ));
        assert!(matches!(parse_digest(""), Err(Error::InvalidDigest(_))));
        assert!(matches!(
            parse_digest("sha512:abcd"),
            Err(Error::UnsupportedAlgorithm(_))
        ));
        assert!(matches!(
            parse_digest("multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8"),
            Err(Error::UnsupportedAlgorithm(_))
        ));
        assert!(matches!(
            parse_digest("SHA512:abcd"),
            Err(Error::InvalidDigest(_))
        ));
        assert!(matches!(
            parse_digest("sha512:"),
            Err(Error::InvalidDigest(_))
        ));
    }

    #[test]
    fn verify_checks_size_before_digest() {
        assert!(matches!(
            verify("digest", EMPTY, 3, Some("sha256:00"), Some(4)),
            Err(Error::SizeMismatch {
                expected: 4,
                actual: 3
            })
        ));
        assert!(verify("digest", EMPTY, 0, Some(EMPTY), Some(0)).is_ok());
        assert!(verify("digest", EMPTY, 0, None, None).is_ok());
    }

    #[test]
    fn verify_reports_which_digest_mismatched() {
        let mut sha = Sha256::new();
        sha.update(b"x");
        let err = verify("diff_id", &sha.digest(), sha.size(), Some(EMPTY), None).err();
        assert!(matches!(
            err,
            Some(Error::DigestMismatch {
                what: "diff_id",
                ..
            })
        ));
    }
}
