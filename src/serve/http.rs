//! The little of HTTP/1.1 the server needs: one request per connection (every response closes
//! it), bodies sized by Content-Length, JSON answers and server-sent events for streams.

use std::io::{BufRead, Read, Write};

/// Largest request head (request line and headers).
const MAX_HEAD: usize = 64 * 1024;

/// A parsed request.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The path without its query string.
    pub path: String,
    /// The Authorization header's value, if sent.
    pub authorization: Option<String>,
    pub body: Vec<u8>,
}

/// A request refused before it reached a handler: the status and a one-line reason.
#[derive(Debug, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    pub message: String,
}

impl Reject {
    pub fn new(status: u16, message: impl Into<String>) -> Reject {
        Reject { status, message: message.into() }
    }
}

/// Reads one request. `Ok(None)`: the client closed the connection before sending one.
pub fn read_request(r: &mut impl BufRead, max_body: usize) -> Result<Option<Request>, Reject> {
    let bad = |m: &str| Reject::new(400, m);
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = r.by_ref().take((MAX_HEAD + 1 - head.len()) as u64).read_until(b'\n', &mut line);
        let n = n.map_err(|e| bad(&format!("could not read the request: {e}")))?;
        if n == 0 {
            if head.is_empty() {
                return Ok(None);
            }
            return Err(bad("the request ended inside its headers"));
        }
        head.extend_from_slice(&line);
        if head.len() > MAX_HEAD {
            return Err(Reject::new(431, "the request's headers exceed 64 KiB"));
        }
        if line == b"\r\n" || line == b"\n" {
            if head.len() == line.len() {
                head.clear(); // blank lines before a request line are allowed
                continue;
            }
            break;
        }
    }
    let head = String::from_utf8(head).map_err(|_| bad("the request's headers are not UTF-8"))?;
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad("the request line is not `METHOD /path HTTP/1.1`"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(Reject::new(505, "only HTTP/1.x is served"));
    }
    let mut content_length = None;
    let mut authorization = None;
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(bad("a header line has no `:`"));
        };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        if name == "content-length" {
            content_length = Some(value.parse::<usize>().map_err(|_| bad("Content-Length is not a number"))?);
        } else if name == "authorization" {
            authorization = Some(value.to_string());
        } else if name == "transfer-encoding" && !value.eq_ignore_ascii_case("identity") {
            return Err(Reject::new(411, "chunked request bodies are not supported; send a Content-Length"));
        }
    }
    let length = content_length.unwrap_or(0);
    if length > max_body {
        return Err(Reject::new(413, format!("the request body exceeds {max_body} bytes")));
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body).map_err(|_| bad("the request body is shorter than its Content-Length"))?;
    let path = target.split('?').next().unwrap_or_default().to_string();
    Ok(Some(Request { method: method.to_string(), path, authorization, body }))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Writes a whole JSON response and ends the exchange.
pub fn write_json(w: &mut impl Write, status: u16, body: &serde_json::Value) -> std::io::Result<()> {
    let body = body.to_string();
    write!(
        w,
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        reason(status),
        body.len()
    )?;
    w.flush()
}

/// An OpenAI-style error body: `{"error": {"message", "type", "code"}}`.
pub fn error_body(status: u16, message: &str) -> serde_json::Value {
    let kind = if status >= 500 { "server_error" } else { "invalid_request_error" };
    serde_json::json!({ "error": { "message": message, "type": kind, "code": status } })
}

/// A response of server-sent events, each `data: <json>` line flushed as it is written; the
/// body ends when the connection closes.
pub struct EventStream<W: Write> {
    w: W,
}

impl<W: Write> EventStream<W> {
    pub fn start(mut w: W) -> std::io::Result<EventStream<W>> {
        write!(
            w,
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n"
        )?;
        w.flush()?;
        Ok(EventStream { w })
    }

    pub fn send(&mut self, data: &str) -> std::io::Result<()> {
        write!(self.w, "data: {data}\n\n")?;
        self.w.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<Option<Request>, Reject> {
        read_request(&mut std::io::Cursor::new(raw.as_bytes().to_vec()), 1024)
    }

    #[test]
    fn reads_a_post_with_its_body() {
        let r = parse(
            "POST /v1/completions?x=1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer k\r\ncontent-length: 7\r\n\r\n{\"a\":1}trailing",
        )
        .unwrap()
        .unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/v1/completions"));
        assert_eq!(r.authorization.as_deref(), Some("Bearer k"));
        assert_eq!(r.body, b"{\"a\":1}");
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert_eq!(parse("").unwrap().map(|r| r.path), None);
        assert_eq!(parse("GARBAGE\r\n\r\n").unwrap_err().status, 400);
        assert_eq!(parse("GET / HTTP/2\r\n\r\n").unwrap_err().status, 505);
        assert_eq!(parse("POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n").unwrap_err().status, 400);
        assert_eq!(parse("POST / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n").unwrap_err().status, 413);
        assert_eq!(parse("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap_err().status, 411);
        assert_eq!(parse("POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\nshort").unwrap_err().status, 400);
        assert_eq!(parse("GET / HTTP/1.1\r\nHost").unwrap_err().status, 400);
    }
}
