//! The fuzz properties without libFuzzer: every seed, every saved regression input
//! (`fuzz/regressions/<target>/`) and, when present, the local corpus (`fuzz/corpus/<target>/`)
//! through the same `check_*` functions the targets run. `cargo test --release` in this crate
//! (`make fuzz-replay` runs it with the Python targets' replay).

use std::fs;
use std::path::{Path, PathBuf};

use fuzz_support::tarbuild::seed_tars;
use fuzz_support::{check_apply, check_apply_compressed, check_decompress, check_tar_reader};

type Check = fn(&[u8]);

const TARGETS: [(&str, Check); 4] = [
    ("apply_layer", check_apply),
    ("tar_reader", check_tar_reader),
    ("decompress", check_decompress),
    ("apply_compressed", check_apply_compressed),
];

/// Replay the files of `dir`; `open`: only the `open-*` ones (inputs of bugs not fixed yet),
/// else all the others.
fn replay_dir(dir: &Path, check: Check, open: bool) -> usize {
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    let mut n = 0;
    for ent in rd.flatten() {
        let p = ent.path();
        let is_open = ent.file_name().to_string_lossy().starts_with("open-");
        if p.is_file() && is_open == open {
            let data = fs::read(&p).expect("read input");
            eprintln!("replaying {}", p.display());
            check(&data);
            n += 1;
        }
    }
    n
}

#[test]
fn seeds_hold_every_property() {
    for (name, tar) in seed_tars() {
        eprintln!("seed {name}");
        check_apply(&tar);
        check_tar_reader(&tar);
        for sel in 0..3u8 {
            let blob = match sel {
                0 => tar.clone(),
                1 => fuzz_support::gzip(&tar),
                _ => fuzz_support::zstd_compress(&tar),
            };
            check_decompress(&[[sel].as_slice(), &blob].concat());
        }
        for sel in [0u8, 3, 4, 0x83, 0x84] {
            check_apply_compressed(&[[sel, 5].as_slice(), &tar].concat());
        }
    }
}

#[test]
fn saved_regressions_and_corpus_hold_every_property() {
    let tree = fuzz_tree();
    let mut saved = 0;
    for (target, check) in TARGETS {
        let kept = replay_dir(&tree.join("regressions").join(target), check, false);
        let n = kept + replay_dir(&tree.join("corpus").join(target), check, false);
        eprintln!("{target}: {n} inputs replayed");
        saved += kept;
    }
    // The committed inputs are found (a moved tree must not replay nothing).
    assert!(
        saved >= 4,
        "only {saved} regression inputs under {}",
        tree.display()
    );
}

/// The fuzz tree (`fuzz/`, this crate's parent): regressions and corpora of every target.
fn fuzz_tree() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Inputs of bugs found but not fixed yet (`regressions/<target>/open-*`, named in
/// `fuzz/README.md`): `cargo test -- --ignored` shows whether they still fail. Drop the
/// `open-` prefix with the fix.
#[test]
#[ignore = "replays inputs of open bugs"]
fn open_bugs_hold_every_property() {
    let tree = fuzz_tree();
    for (target, check) in TARGETS {
        replay_dir(&tree.join("regressions").join(target), check, true);
    }
}

#[test]
fn escape_through_a_handle_would_be_detected() {
    // The sentinel check itself must work: write through a handle from outside the applier.
    // Its own arena: the shared one must stay pristine for the other tests.
    let arena = fuzz_support::Arena::new();
    arena.reset(true);
    fs::write(arena.root().join("abs/secret"), b"changed").expect("write through handle");
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        arena.assert_sentinel_intact("self-test")
    }));
    assert!(caught.is_err(), "a changed sentinel file went unnoticed");
}

#[test]
fn hardlink_out_of_an_empty_root_would_be_detected() {
    let arena = fuzz_support::Arena::new();
    arena.reset(false);
    let outside = arena.root().parent().expect("base").join("sentinel/x");
    fs::hard_link(outside, arena.root().join("smuggled")).expect("hardlink");
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        arena.assert_no_sentinel_inode_inside("self-test")
    }));
    assert!(
        caught.is_err(),
        "a sentinel inode inside the root went unnoticed"
    );
}
