//! cargo-fuzz target `decompress`: see `fuzz_support::check_decompress` for the property checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_support::check_decompress(data));
