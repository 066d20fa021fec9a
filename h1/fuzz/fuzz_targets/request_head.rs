//! A request, parsed whole, split at a point the input picks, and byte by
//! byte: the same head, body and leftover, or the same error; an accepted
//! request encoded again parses to itself.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (at, message) = match data.split_first_chunk::<2>() {
        Some((at, rest)) => (usize::from(u16::from_le_bytes(*at)), rest),
        None => (0, data),
    };
    let _ = vigil_h1::check::request(message, at);
});
