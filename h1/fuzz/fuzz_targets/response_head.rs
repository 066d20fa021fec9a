//! A response to a GET or a HEAD, parsed whole, split at a point the input
//! picks, and byte by byte: the same head, body and leftover, or the same
//! error; an accepted response encoded again parses to itself.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&[flags, a, b], message)) = data.split_first_chunk::<3>() else { return };
    let method = if flags & 1 == 0 { http::Method::GET } else { http::Method::HEAD };
    let _ = vigil_h1::check::response(&method, message, usize::from(u16::from_le_bytes([a, b])));
});
