//! A tiny HTTP origin on a loopback address that serves canned bytes: the source for the URL
//! input form, weight downloads and the fetcher's tests. Connections are counted, so that a
//! canary origin can prove nothing reached it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub struct Origin {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    /// The start of each request received (its request line and headers), in order.
    heads: Arc<Mutex<Vec<String>>>,
}

impl Origin {
    /// Answers every request with 200 and `body`, with a Content-Type header when one is given.
    pub fn ok(ip: &str, body: impl Into<Vec<u8>>, content_type: Option<&str>) -> Origin {
        let body = body.into();
        let content_type = content_type.map_or(String::new(), |t| format!("Content-Type: {t}\r\n"));
        let mut response = format!(
            "HTTP/1.1 200 OK\r\n{content_type}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        response.extend_from_slice(&body);
        Origin::answer(ip, move |_| response.clone())
    }

    /// `answer` gets the request path and returns the whole raw response.
    pub fn answer(ip: &str, answer: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static) -> Origin {
        Origin::stream(ip, move |path, s| {
            let _ = s.write_all(&answer(path));
        })
    }

    /// `serve` gets the request path and the connection, and writes the answer itself (for
    /// answers that arrive slowly).
    pub fn stream(
        ip: &str,
        serve: impl Fn(&str, &mut TcpStream) + Send + Sync + 'static,
    ) -> Origin {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let thread_hits = hits.clone();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let thread_heads = heads.clone();
        let serve = Arc::new(serve);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                thread_hits.fetch_add(1, Ordering::SeqCst);
                let serve = serve.clone();
                let heads = thread_heads.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    let n = s.read(&mut buf).unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]);
                    heads.lock().unwrap().push(head.to_string());
                    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                    serve(&path, &mut s);
                });
            }
        });
        Origin { addr, hits, heads }
    }

    /// The start of each request received so far (request line and headers).
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// Connections accepted so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}
