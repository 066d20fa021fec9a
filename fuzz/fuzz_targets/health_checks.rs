//! See `vigil_fuzz::health_checks` for what this target checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vigil_fuzz::health_checks(data));
