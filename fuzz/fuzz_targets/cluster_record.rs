//! A gossip value and key, decoded: see `vigil_cluster::check::record`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vigil_cluster::check::record(data));
