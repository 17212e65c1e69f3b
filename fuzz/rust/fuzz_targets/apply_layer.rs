//! cargo-fuzz target `apply_layer`: see `fuzz_support::check_apply` for the property checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_support::check_apply(data));
