//! cargo-fuzz target `tar_reader`: see `fuzz_support::check_tar_reader` for the property checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_support::check_tar_reader(data));
