//! A chunked body decoded whole, split at a point the input picks, and
//! byte by byte: the same body or the same error; a decoded body encoded
//! again in pieces the input picks decodes to itself.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&[piece, a, b], body)) = data.split_first_chunk::<3>() else { return };
    let _ = vigil_h1::check::chunked(body, usize::from(u16::from_le_bytes([a, b])), usize::from(piece));
});
