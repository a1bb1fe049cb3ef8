//! HTTP/1.1 written by hand over a plain socket, for what an HTTP client library will not send
//! or not read: a body the server refuses before it has all arrived, a body that stalls. (A
//! client library may give up on reading the answer when the server refuses a body before it
//! has all been sent; a whole request written at once always gets its answer read.)
#![allow(dead_code)]

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Connects to `addr` and writes `head` (request line and headers, each ending in CRLF), then
/// `Content-Length: {content_length}` and `Connection: close`, then `body`, which may be shorter
/// than the declared length. Write errors are ignored: the server may refuse and close before
/// everything is written, and its answer is what the tests check.
pub fn send(addr: SocketAddr, head: &str, content_length: usize, body: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut req =
        format!("{head}Content-Length: {content_length}\r\nConnection: close\r\n\r\n").into_bytes();
    req.extend_from_slice(body);
    let _ = s.write_all(&req);
    s
}

/// Reads the whole answer (waiting at most `timeout` for each read) and returns its status (0
/// when there is none) and its JSON body (null when there is none).
pub fn read_answer(mut s: TcpStream, timeout: Duration) -> (u16, Value) {
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// Sends one whole request over a fresh connection and returns the answer's status and JSON
/// body.
pub fn request(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, Value) {
    read_answer(send(addr, head, body.len(), body), Duration::from_secs(60))
}
