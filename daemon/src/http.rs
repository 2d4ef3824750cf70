//! The health and metrics endpoint: a small HTTP/1.1 server on a tokio `TcpListener`.
//!
//! - `GET /metrics`: Prometheus text format ([`crate::metrics::exposition`]).
//! - `GET /healthz`: 200 while every DSP worker makes progress, 503 naming the stuck ones.
//! - `GET /readyz`: 200 when connected to the broker and subscribed, learned state restored, not stopping and
//!   (if `http.input_stall_secs` is set) input arriving; 503 naming what is missing.
//!
//! Hand-rolled instead of a framework to keep the binary small: the endpoint serves a few
//! scrapes a minute. It stays robust without one: a request head is read with a deadline
//! ([`REQUEST_TIMEOUT`]) and a size limit ([`MAX_HEAD`], 431 beyond), at most
//! [`MAX_CONNECTIONS`] are served at once (more are closed at once), every response carries
//! `Content-Length` and `Connection: close`, unknown paths get 404 and methods other than GET
//! and HEAD 405 with `Allow`. Request parsing and routing are pure functions, tested without
//! sockets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::metrics::{exposition, now_ms, Metrics};

/// Largest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its request head, and then to take the response.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; a further one is closed without a response.
pub const MAX_CONNECTIONS: usize = 16;

/// What the endpoints report on, and the limits of health and readiness.
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    /// `/healthz` fails when a worker has not beaten for this long.
    pub worker_stall: Duration,
    /// `/readyz` fails when no input arrived for this long; `None` = never.
    pub input_stall: Option<Duration>,
}

/// Binds the listener (so a taken port fails the start, with the address in the error).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Accepts and serves connections until the task is dropped or aborted.
pub async fn serve(listener: TcpListener, state: Arc<HttpState>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "http: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "http: too many connections, closed");
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &state).await {
                tracing::debug!(%peer, error = %e, "http: connection ended with an error");
            }
            drop(permit);
        });
    }
}

async fn handle(mut stream: TcpStream, state: &HttpState) -> std::io::Result<()> {
    let head = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
        Ok(r) => r?,
        Err(_) => Head::TimedOut,
    };
    let response = match head {
        Head::Complete(bytes) => match parse_request(&bytes) {
            Ok(req) => route(&req, state),
            Err(status) => Response::text(status, status.reason()),
        },
        Head::TooLarge => Response::text(Status::HeaderTooLarge, "request head too large"),
        Head::TimedOut => {
            Response::text(Status::RequestTimeout, "request head not received in time")
        }
        Head::Closed => return Ok(()),
    };
    let bytes = response.to_bytes();
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await?;
        // Take what the client may still send (a body we ignore) before closing, so the close
        // is not a reset that could discard our response on its side.
        let mut sink = [0u8; 1024];
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => left = left.saturating_sub(n),
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await
    .unwrap_or(Ok(()))
}

enum Head {
    Complete(Vec<u8>),
    TooLarge,
    TimedOut,
    Closed,
}

/// Reads until the blank line that ends a request head, at most [`MAX_HEAD`] bytes.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf) {
            buf.truncate(end);
            return Ok(Head::Complete(buf));
        }
        if buf.len() >= MAX_HEAD {
            return Ok(Head::TooLarge);
        }
    }
}

/// The length of the head (up to and including the blank line), if it is complete.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    BadRequest,
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    HeaderTooLarge,
    ServiceUnavailable,
    VersionNotSupported,
}

impl Status {
    fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::BadRequest => 400,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::RequestTimeout => 408,
            Status::HeaderTooLarge => 431,
            Status::ServiceUnavailable => 503,
            Status::VersionNotSupported => 505,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::BadRequest => "Bad Request",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::RequestTimeout => "Request Timeout",
            Status::HeaderTooLarge => "Request Header Fields Too Large",
            Status::ServiceUnavailable => "Service Unavailable",
            Status::VersionNotSupported => "HTTP Version Not Supported",
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without the query string.
    pub path: String,
}

/// Parses the request line of a complete head; headers are not needed and not interpreted.
pub fn parse_request(head: &[u8]) -> Result<Request, Status> {
    let line_end = head
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(Status::BadRequest)?;
    let line = std::str::from_utf8(&head[..line_end])
        .map_err(|_| Status::BadRequest)?
        .trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Status::BadRequest);
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Status::BadRequest);
    }
    if !version.starts_with("HTTP/") {
        return Err(Status::BadRequest);
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(Status::VersionNotSupported);
    }
    if !target.starts_with('/') {
        return Err(Status::BadRequest);
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    Ok(Request {
        method: method.to_string(),
        path: path.to_string(),
    })
}

#[derive(Debug)]
pub struct Response {
    pub status: Status,
    pub content_type: &'static str,
    pub body: String,
    /// HEAD: headers as for GET, no body.
    pub head_only: bool,
}

impl Response {
    fn text(status: Status, body: &str) -> Self {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{body}\n"),
            head_only: false,
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
            self.status.code(),
            self.status.reason(),
            self.content_type,
            self.body.len()
        );
        if self.status == Status::MethodNotAllowed {
            out.push_str("Allow: GET, HEAD\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if !self.head_only {
            bytes.extend_from_slice(self.body.as_bytes());
        }
        bytes
    }
}

/// The response to a parsed request.
pub fn route(req: &Request, state: &HttpState) -> Response {
    let known = matches!(req.path.as_str(), "/" | "/metrics" | "/healthz" | "/readyz");
    if !known {
        return Response::text(
            Status::NotFound,
            "not found; try /metrics, /healthz or /readyz",
        );
    }
    if req.method != "GET" && req.method != "HEAD" {
        return Response::text(Status::MethodNotAllowed, "only GET and HEAD");
    }
    let health = &state.metrics.health;
    let mut response = match req.path.as_str() {
        "/metrics" => Response {
            status: Status::Ok,
            content_type: exposition::CONTENT_TYPE,
            body: exposition::render(&state.metrics, now_ms()),
            head_only: false,
        },
        "/healthz" => verdict(health.liveness(state.worker_stall)),
        "/readyz" => verdict(health.readiness(state.input_stall)),
        _ => Response::text(
            Status::Ok,
            "sparsewatch: /metrics (Prometheus), /healthz (alive), /readyz (ready)",
        ),
    };
    response.head_only = req.method == "HEAD";
    response
}

fn verdict(problems: Vec<String>) -> Response {
    if problems.is_empty() {
        Response::text(Status::Ok, "ok")
    } else {
        Response::text(Status::ServiceUnavailable, &problems.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> HttpState {
        HttpState {
            metrics: Arc::new(Metrics::default()),
            worker_stall: Duration::from_secs(30),
            input_stall: None,
        }
    }

    fn get(path: &str) -> Request {
        Request {
            method: "GET".into(),
            path: path.into(),
        }
    }

    #[test]
    fn request_lines_parse_or_name_the_error() {
        let ok = parse_request(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(ok, get("/metrics"));
        assert_eq!(
            parse_request(b"HEAD / HTTP/1.0\n\n").unwrap().method,
            "HEAD"
        );
        for bad in [
            &b"\r\n\r\n"[..],
            b"GET\r\n\r\n",
            b"GET /metrics\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"get /metrics HTTP/1.1\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics FTP/1.1\r\n\r\n",
            b"GET /m\xff HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1 extra\r\n\r\n",
        ] {
            assert_eq!(parse_request(bad), Err(Status::BadRequest), "{bad:?}");
        }
        assert_eq!(
            parse_request(b"GET / HTTP/2.0\r\n\r\n"),
            Err(Status::VersionNotSupported)
        );
    }

    #[test]
    fn the_head_ends_at_the_first_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nbody"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
    }

    #[test]
    fn routes_paths_and_methods() {
        let s = state();
        assert_eq!(route(&get("/nope"), &s).status, Status::NotFound);
        let post = Request {
            method: "POST".into(),
            path: "/metrics".into(),
        };
        let r = route(&post, &s);
        assert_eq!(r.status, Status::MethodNotAllowed);
        assert!(String::from_utf8(r.to_bytes())
            .unwrap()
            .contains("Allow: GET, HEAD\r\n"));
        let m = route(&get("/metrics"), &s);
        assert_eq!(m.status, Status::Ok);
        assert!(m.body.contains("sparsewatch_messages_total 0\n"));
        // Not connected yet: not ready, but alive.
        let r = route(&get("/readyz"), &s);
        assert_eq!(r.status, Status::ServiceUnavailable);
        assert!(r.body.contains("not connected"), "{}", r.body);
        assert_eq!(route(&get("/healthz"), &s).status, Status::Ok);
        s.metrics.health.connected();
        let r = route(&get("/readyz"), &s);
        assert!(r.body.contains("not subscribed"), "{}", r.body);
        s.metrics
            .health
            .subscribed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(route(&get("/readyz"), &s).status, Status::Ok);
    }

    #[test]
    fn head_gets_the_length_of_get_without_the_body() {
        let s = state();
        let head = Request {
            method: "HEAD".into(),
            path: "/healthz".into(),
        };
        let text = String::from_utf8(route(&head, &s).to_bytes()).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Content-Length: 3\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
    }

    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(request).await.unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    }

    /// Over a real socket: a scrape, an unknown path, a head larger than the limit, and a
    /// client that sends half a request and goes away (the server keeps serving).
    #[tokio::test]
    async fn serves_over_tcp_and_survives_bad_clients() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, Arc::new(state())));

        let r = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{head}"
        );
        assert!(body.contains("# TYPE sparsewatch_messages_total counter"));

        let r = exchange(addr, b"GET /x HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 404 "), "{r}");

        let mut big = b"GET /metrics HTTP/1.1\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD + 10));
        let r = exchange(addr, &big).await;
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");

        let mut half = TcpStream::connect(addr).await.unwrap();
        half.write_all(b"GET /metr").await.unwrap();
        drop(half);

        let r = exchange(addr, b"GET /healthz HTTP/1.0\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        server.abort();
    }
}
