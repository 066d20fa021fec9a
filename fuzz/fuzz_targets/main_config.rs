//! See `vigil_fuzz::main_config` for what this target checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vigil_fuzz::main_config(data));
