//! Every filesystem write of the Rust core goes through `safepath` (design.md §7): no other
//! source file of the core or of the bindings (rust/py) creates, opens, links, removes, renames
//! or changes the metadata of a file by itself. The audit reads the sources (code before the
//! `#[cfg(test)]` module, comments dropped) and fails on any such call; the scanner is checked to
//! catch each form first.

use std::fs;
use std::path::Path;

/// Calls that write (or open, which is where no-follow must be decided) by name or fd.
const CALLS: &[&str] = &[
    "open",
    "openat",
    "openat2",
    "mkdirat",
    "symlinkat",
    "linkat",
    "mknodat",
    "unlinkat",
    "renameat",
    "renameat_with",
    "fchown",
    "chownat",
    "fchmod",
    "chmodat",
    "futimens",
    "utimensat",
    "fsetxattr",
    "lsetxattr",
    "setxattr",
    "fremovexattr",
    "lremovexattr",
    "ftruncate",
    "fallocate",
    "create_dir",
    "create_dir_all",
    "remove_file",
    "remove_dir",
    "remove_dir_all",
    "rename",
    "copy",
    "hard_link",
    "set_permissions",
    "set_len",
    "write",
];

/// Paths that reach those calls (a bare `write(` on a `File` the crate already holds is fine).
const PREFIXES: &[&str] = &["rustix::fs::", "fs::", "std::fs::", "File::", "libc::"];

/// Other forms that never belong outside safepath.
const TOKENS: &[&str] = &[
    "OpenOptions",
    "File::create",
    "File::open",
    "OFlags::CREATE",
    "OFlags::WRONLY",
    "OFlags::RDWR",
    "OFlags::APPEND",
    "OFlags::TRUNC",
    "use rustix::fs::{mkdirat",
];

fn code_of(src: &str) -> String {
    let body = match src.find("#[cfg(test)]") {
        Some(i) => &src[..i],
        None => src,
    };
    body.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn violations(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for t in TOKENS {
        if code.contains(t) {
            out.push((*t).to_owned());
        }
    }
    for call in CALLS {
        for prefix in PREFIXES {
            let pat = format!("{prefix}{call}(");
            let mut from = 0;
            while let Some(i) = code[from..].find(&pat) {
                let at = from + i;
                let before = &code[..at];
                // `safepath::fs::…` does not exist; `rustix::fs::` ends in `fs::` too: report
                // each occurrence once, by its longest prefix.
                let shadowed = PREFIXES.iter().any(|p| {
                    p.len() > prefix.len()
                        && p.ends_with(prefix)
                        && before.ends_with(&p[..p.len() - prefix.len()])
                });
                if !shadowed {
                    out.push(pat.clone());
                }
                from = at + pat.len();
            }
        }
        // Imported bare: `use rustix::fs::{…, mkdirat}` then `mkdirat(dir, …)`.
        for line in code.lines() {
            let l = line.trim_start();
            if l.starts_with("use ") && l.contains("fs::") && l.contains(call) {
                let words = l.split(|c: char| !(c.is_alphanumeric() || c == '_'));
                if words.into_iter().any(|w| w == *call) {
                    out.push(format!("imported {call}"));
                }
            }
        }
    }
    out
}

#[test]
fn the_scanner_catches_every_form() {
    for bad in [
        "let f = File::create(p)?;",
        "std::fs::write(p, b)?;",
        "fs::remove_file(p)?;",
        "rustix::fs::mkdirat(d, n, m)?;",
        "rustix::fs::openat(d, n, f, m)?;",
        "let o = OpenOptions::new();",
        "use rustix::fs::{fchmod, Mode};",
        "let f = OFlags::WRONLY;",
    ] {
        assert!(!violations(&code_of(bad)).is_empty(), "not caught: {bad}");
    }
    for fine in [
        "safepath::mkdir(d, n, 0o700)?;",
        "// rustix::fs::mkdirat in a comment",
        "file.write_all(&data)?;",
        "let st = rustix::fs::statat(d, n, AtFlags::SYMLINK_NOFOLLOW)?;",
        "#[cfg(test)]\nmod tests { fn t() { std::fs::write(p, b).unwrap(); } }",
    ] {
        assert_eq!(violations(&code_of(fine)), Vec::<String>::new(), "{fine}");
    }
}

#[test]
fn every_filesystem_write_goes_through_safepath() {
    // The core's sources and the bindings crate's (rust/py), which must not write either.
    let core = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    let mut files = 0;
    for src in [core.join("src"), core.join("py").join("src")] {
        for entry in fs::read_dir(&src).expect("src") {
            let path = entry.expect("entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !name.ends_with(".rs") || path == core.join("src").join("safepath.rs") {
                continue;
            }
            files += 1;
            let code = code_of(&fs::read_to_string(&path).expect("read"));
            for v in violations(&code) {
                found.push(format!("{}: {v}", path.display()));
            }
        }
    }
    assert!(files >= 10, "sources not found under {}", core.display());
    assert!(
        found.is_empty(),
        "filesystem writes outside safepath.rs:\n{}",
        found.join("\n")
    );
}
