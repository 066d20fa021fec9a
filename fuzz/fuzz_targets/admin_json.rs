//! See `vigil_fuzz::admin_json` for what this target checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vigil_fuzz::admin_json(data));
