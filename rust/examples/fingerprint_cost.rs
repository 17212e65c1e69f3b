//! Benchmark: what the applier's xxh3-128 fingerprints cost (issue 16), on and off in one
//! process, interleaved. Driven by `benches/deep_check.py --fingerprints`; by hand:
//!
//!     cargo run --release -p fastdist-core --example fingerprint_cost -- DEST RUNS TAR...
//!
//! Each TAR (an uncompressed layer) is read into memory once and applied with `apply_tar`
//! (`Mode::Layer`, owners kept as in a pull by root) into a fresh directory under DEST, with
//! fingerprints on and off, the order alternating per run, after one untimed warm-up of each.
//! The directory is removed after each apply, untimed. One line per apply on stdout:
//! `TAR<TAB>on|off<TAB>WALL<TAB>CPU`: wall seconds, and CPU seconds of the process (every
//! thread of the apply, user + system: `CLOCK_PROCESS_CPUTIME_ID`), which a loaded machine
//! disturbs far less than the wall time.

use std::error::Error;
use std::fs;
use std::path::PathBuf;
use std::time::Instant;

use fastdist_core::apply::{apply_tar, bench_set_fingerprints, ApplyOptions, Mode};
use fastdist_core::limits::Limits;
use rustix::time::{clock_gettime, ClockId};

fn cpu_seconds() -> f64 {
    let t = clock_gettime(ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dest, runs, tars @ ..] = args.as_slice() else {
        return Err("usage: fingerprint_cost DEST RUNS TAR...".into());
    };
    let dest = PathBuf::from(dest);
    let runs: usize = runs.parse()?;
    let opts = ApplyOptions {
        mode: Mode::Layer,
        limits: Limits::default(),
        preserve_owner: true,
    };
    for tar in tars {
        let data = fs::read(tar)?;
        for run in 0..=runs {
            let order = if run % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for on in order {
                let dir = dest.join(format!("apply-{run}-{on}"));
                fs::create_dir(&dir)?;
                bench_set_fingerprints(on);
                let cpu = cpu_seconds();
                let t = Instant::now();
                apply_tar(&data[..], &dir, &opts)?;
                let secs = t.elapsed().as_secs_f64();
                let cpu = cpu_seconds() - cpu;
                bench_set_fingerprints(true);
                fs::remove_dir_all(&dir)?;
                if run > 0 {
                    let label = if on { "on" } else { "off" };
                    println!("{tar}\t{label}\t{secs:.6}\t{cpu:.6}");
                }
            }
        }
    }
    Ok(())
}
