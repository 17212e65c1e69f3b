//! Inputs the cargo-fuzz targets (`fuzz/rust/`) found, pinned by behaviour. The raw inputs are
//! also under `fuzz/regressions/<target>/`, replayed by `make fuzz-replay`.

use std::io::Write;

use fastdist_core::decompress::Decoder;
use fastdist_core::error::Error;
use fastdist_core::limits::Limits;
use fastdist_core::pipeline::{hash_blob, LayerSpec};

const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// `decompress` crash-43231687…: a gzip member with every optional header field whose deflate
/// data holds a distance reaching before the start of the output. ISA-L answers
/// `ISAL_INVALID_LOOKBACK` (and, for `BAD_SYMBOL_GZIP`, `ISAL_INVALID_SYMBOL`) and leaves
/// `avail_in` larger than the input it was given; the igzip reader computed
/// `in_len - avail_in` and consumed that many bytes before looking at the error: an overflow
/// panic in debug builds, and in release a `consume` of ~2^64 bytes, which a strict `BufRead`
/// (`&[u8]`) refuses with a panic. All 41 crashes of a 4-minute run were these two. Fixed in
/// d3fcbec (the error is returned before the source is touched).
const BAD_LOOKBACK_GZIP: [u8; 62] = [
    0x1f, 0x8b, 0x08, 0x1e, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0x06, 0x00, 0x41, 0x42, 0x02, 0x00,
    0x78, 0x79, 0x6e, 0x61, 0x6d, 0x65, 0x2e, 0x74, 0x61, 0x72, 0x00, 0x61, 0x20, 0x63, 0x6f, 0x6d,
    0x6d, 0x65, 0x6e, 0x74, 0x00, 0x03, 0xf5, 0x2b, 0x48, 0xac, 0xcc, 0xc9, 0x4f, 0x4c, 0x00, 0xf3,
    0x00, 0xfb, 0x2b, 0x01, 0x00, 0x15, 0x6a, 0x2c, 0x42, 0x9a, 0x07, 0x00, 0x00, 0x00,
];

/// `decompress` crash-4667bc9b…: FNAME set, then deflate data with an invalid symbol.
const BAD_SYMBOL_GZIP: [u8; 33] = [
    0x1f, 0x8b, 0x08, 0x08, 0x28, 0xb5, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0x00, 0x22, 0xff, 0xff, 0xff, 0xff, 0x2f, 0x29, 0x00, 0x00, 0x3f, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x24,
];

const BAD_GZIP: [&[u8]; 2] = [&BAD_LOOKBACK_GZIP, &BAD_SYMBOL_GZIP];

fn decode_all(mut dec: Decoder<&[u8]>) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match dec.read(&mut buf)? {
            0 => break,
            n => out.extend_from_slice(&buf[..n]),
        }
    }
    dec.finish()?;
    Ok(out)
}

#[test]
fn bad_deflate_data_is_corrupt_from_a_slice_source() {
    for blob in BAD_GZIP {
        let dec = Decoder::new(GZIP, blob, &Limits::default()).expect("the header is well formed");
        let r = decode_all(dec);
        assert!(
            matches!(r, Err(Error::Corrupt { .. })),
            "expected Corrupt, got {r:?}"
        );
    }
}

#[test]
fn bad_deflate_data_is_corrupt_through_the_pipeline() {
    for bytes in BAD_GZIP {
        let dir = tempfile::tempdir().expect("tempdir");
        let blob = dir.path().join("blob");
        std::fs::File::create(&blob)
            .and_then(|mut f| f.write_all(bytes))
            .expect("write blob");
        let spec = LayerSpec {
            media_type: GZIP.to_owned(),
            expected_digest: None,
            expected_size: None,
            expected_diff_id: None,
            limits: Limits::default(),
        };
        let r = hash_blob(&blob, &spec);
        assert!(
            matches!(r, Err(Error::Corrupt { .. })),
            "expected Corrupt, got {r:?}"
        );
    }
}
