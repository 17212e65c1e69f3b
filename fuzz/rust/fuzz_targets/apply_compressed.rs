//! cargo-fuzz target `apply_compressed`: see `fuzz_support::check_apply_compressed` for the property checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_support::check_apply_compressed(data));
