//! Parses a request and the response to it from raw bytes, fed in small
//! pieces as a socket would deliver them, and prints what the codec saw.
//!
//! ```sh
//! cargo run -p vigil-h1 --example parse
//! ```

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use bytes::BytesMut;
use http::Method;
use vigil_h1::{Decoded, Decoder, Response, parse_request, parse_response};

fn main() {
    let request = b"POST /orders HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: chunked\r\n\r\n\
                    4\r\nsome\r\n5\r\n body\r\n0\r\n\r\n";
    let mut buf = BytesMut::new();
    let mut pieces = request.chunks(7);
    let (head, rest) = loop {
        buf.extend_from_slice(pieces.next().unwrap());
        if let Some(parsed) = parse_request(&mut buf, 64 * 1024).unwrap() {
            break parsed;
        }
    };
    println!(
        "{} {} framing={:?} keep_alive={}",
        head.request.method(),
        head.request.uri(),
        head.framing,
        head.keep_alive
    );
    let mut body = BytesMut::from(&rest[..]);
    let mut decoder = Decoder::new(head.framing);
    loop {
        match decoder.decode(&mut body).unwrap() {
            Decoded::Data(data) => println!("  body piece {:?}", String::from_utf8_lossy(&data)),
            Decoded::End => break,
            Decoded::NeedMore => body.extend_from_slice(pieces.next().unwrap()),
        }
    }

    let response = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok";
    let mut buf = BytesMut::from(&response[..]);
    while let Some((parsed, rest)) = parse_response(&mut buf, 64 * 1024, &Method::POST).unwrap() {
        match parsed {
            Response::Interim(h) => println!("interim {}", h.status()),
            Response::Final(h) => {
                println!(
                    "final {} framing={:?} body={:?}",
                    h.response.status(),
                    h.framing,
                    String::from_utf8_lossy(&rest)
                );
                break;
            }
        }
        buf = BytesMut::from(&rest[..]);
    }

    let hostile = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
    let refused = parse_request(&mut BytesMut::from(&hostile[..]), 64 * 1024).unwrap_err();
    println!("refused: {refused} -> {}", refused.status());
}
