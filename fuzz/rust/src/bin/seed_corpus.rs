//! Write the seed corpora: `seed_corpus <dir>` fills `<dir>/<target>/` for every target.

use std::fs;
use std::path::PathBuf;

use fuzz_support::tarbuild::seed_tars;
use fuzz_support::{gzip, zstd_compress};

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus".into()));
    let put = |target: &str, name: &str, bytes: &[u8]| -> std::io::Result<()> {
        let d = dir.join(target);
        fs::create_dir_all(&d)?;
        fs::write(d.join(name), bytes)
    };
    for (name, tar) in seed_tars() {
        put("apply_layer", name, &tar)?;
        put("tar_reader", name, &tar)?;
        // decompress: selector byte (0 none, 1 gzip, 2 zstd; high bits pick the read size).
        put(
            "decompress",
            &format!("{name}.tar"),
            &[[0x40].as_slice(), &tar].concat(),
        )?;
        put(
            "decompress",
            &format!("{name}.gz"),
            &[[0x41].as_slice(), &gzip(&tar)].concat(),
        )?;
        put(
            "decompress",
            &format!("{name}.zst"),
            &[[0x42].as_slice(), &zstd_compress(&tar)].concat(),
        )?;
        // apply_compressed: selector (3 gzip by the harness, 4 zstd by the harness, 1 raw
        // gzip; 0x80 = Flatten over the lower layer) and chunk size byte.
        put(
            "apply_compressed",
            &format!("{name}.hgz"),
            &[[0x83, 7].as_slice(), &tar].concat(),
        )?;
        put(
            "apply_compressed",
            &format!("{name}.hzst"),
            &[[0x04, 200].as_slice(), &tar].concat(),
        )?;
        put(
            "apply_compressed",
            &format!("{name}.gz"),
            &[[0x01, 3].as_slice(), &gzip(&tar)].concat(),
        )?;
    }
    // Multi-member gzip and a gzip header with every optional field (FEXTRA, FNAME, FCOMMENT,
    // FHCRC), the parts of the stream a hand-written header parser gets wrong.
    let two = [gzip(b"first member "), gzip(b"second member")].concat();
    put(
        "decompress",
        "multi_member.gz",
        &[[0x41].as_slice(), &two].concat(),
    )?;
    put(
        "decompress",
        "all_flags.gz",
        &[[0x01].as_slice(), &gzip_all_flags(b"payload")].concat(),
    )?;
    Ok(())
}

/// A gzip member with FEXTRA, FNAME, FCOMMENT and FHCRC set.
fn gzip_all_flags(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::GzBuilder::new()
        .extra(b"AB\x02\x00xy".to_vec())
        .filename("name.tar")
        .comment("a comment")
        .write(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut enc, data).expect("gzip into memory");
    let mut out = enc.finish().expect("gzip into memory");
    // flate2 does not write FHCRC: set the flag and insert the CRC16 of the header.
    let hlen = header_len(&out);
    out[3] |= 0x02;
    let crc = crc32(&out[..hlen]) & 0xffff;
    out.splice(hlen..hlen, (crc as u16).to_le_bytes());
    out
}

fn header_len(gz: &[u8]) -> usize {
    let mut p = 10;
    let flg = gz[3];
    if flg & 0x04 != 0 {
        p += 2 + usize::from(u16::from_le_bytes([gz[p], gz[p + 1]]));
    }
    for bit in [0x08, 0x10] {
        if flg & bit != 0 {
            p += gz[p..].iter().position(|&b| b == 0).map_or(0, |i| i + 1);
        }
    }
    p
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
