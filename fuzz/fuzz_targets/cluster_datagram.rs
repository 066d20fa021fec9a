//! Datagrams as they arrive, then frames sealed under a known key so that
//! reassembly and chitchat's decoding are reached: see
//! `vigil_cluster::check::datagrams`. Run with `-malloc_limit_mb` (see
//! `xtask/src/fuzz.rs`), which fails any allocation far past what an input
//! of at most 4 KiB could need: one sized by a length or count read from it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vigil_cluster::check::datagrams(data);
});
