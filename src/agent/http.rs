//! A small HTTP/1.1 server for the agent's status pages, on `std::net`.
//!
//! It answers GET and HEAD, one request per connection (every response
//! says `Connection: close`), and hands each request's path to a route the
//! caller gives. What a client sends is bounded before anything is done
//! with it: the request line and headers are read to at most
//! [`MAX_HEAD_BYTES`] within [`HEAD_TIMEOUT`], at most
//! [`MAX_CONNECTIONS`] connections are served at once, and nothing a
//! client sends can stop the server; a route that panics costs its
//! request a 500, nothing more.
//!
//! Architecture invariant: the server knows nothing about what it serves;
//! paths mean something only to the route.

use std::fmt::{self, Write as _};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The most a request line and its headers may take, in bytes.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

/// How long a client has to send its request line and headers.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// How long writing a response may block.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// How many connections are served at once; more are answered 503.
pub const MAX_CONNECTIONS: usize = 32;

/// How long the accept loop sleeps when no connection is waiting, which is
/// also how long [`Server::stop`] may wait for it.
const ACCEPT_POLL: Duration = Duration::from_millis(20);

/// What a route answers for a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code, 200 to 599 (anything else is sent as a 500).
    pub status: u16,
    /// The media type of the body, for the `Content-Type` header.
    pub content_type: &'static str,
    /// The body; a HEAD request gets its length but not the body.
    pub body: Vec<u8>,
}

impl Response {
    /// A plain-text response the server makes itself.
    fn text(status: u16, body: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
        }
    }
}

/// What the server asks for each request: the response for a path (the
/// request target without its query, as sent, not percent-decoded), or
/// `None` for a path it does not know (a 404).
pub type Route = Arc<dyn Fn(&str) -> Option<Response> + Send + Sync>;

/// An HTTP server running on a thread of its own, until [`Server::stop`]
/// or until it is dropped.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The bounds a server keeps to; fixed but for tests.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_head: usize,
    head_timeout: Duration,
    write_timeout: Duration,
    max_connections: usize,
    /// How long to keep reading (and discarding) what a client still sends
    /// after its response, so that closing does not reset the connection
    /// before the client has read the response.
    linger: Duration,
}

const LIMITS: Limits = Limits {
    max_head: MAX_HEAD_BYTES,
    head_timeout: HEAD_TIMEOUT,
    write_timeout: WRITE_TIMEOUT,
    max_connections: MAX_CONNECTIONS,
    linger: Duration::from_secs(1),
};

impl Server {
    /// Binds `addr` (port 0 allowed) and serves on a thread of its own: each
    /// request's path (without query string) goes to `route`, which returns
    /// `None` for unknown paths (404).
    ///
    /// Fails only when the address cannot be bound or the thread cannot be
    /// started.
    pub fn start(addr: SocketAddr, route: Route) -> io::Result<Server> {
        Server::start_with(addr, route, LIMITS)
    }

    fn start_with(addr: SocketAddr, route: Route, limits: Limits) -> io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        // Non-blocking, so that the loop sees a stop request while no
        // client connects.
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("oplog-http".into())
            .spawn(move || accept_loop(&listener, &route, limits, &stopping))?;
        Ok(Server {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address the server listens on (with the port chosen when it was
    /// started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and joins the thread (also on Drop).
    ///
    /// Connections already accepted finish on their own threads, within
    /// the server's timeouts.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            // The loop does not panic; should it, there is nothing left to
            // stop.
            let _ = thread.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shut_down();
    }
}

fn accept_loop(listener: &TcpListener, route: &Route, limits: Limits, stop: &AtomicBool) {
    let active = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => dispatch(stream, route, limits, &active),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Nothing waiting, or a failure that passes (a connection reset
            // before it was accepted, no file descriptor left): look again
            // shortly.
            Err(_) => thread::sleep(ACCEPT_POLL),
        }
    }
}

/// Hands a connection to a thread of its own, or answers 503 when too many
/// are being served.
fn dispatch(stream: TcpStream, route: &Route, limits: Limits, active: &Arc<AtomicUsize>) {
    let Some(slot) = Slot::take(active, limits.max_connections) else {
        refuse(stream);
        return;
    };
    let route = Arc::clone(route);
    // Should the thread not start, the closure is dropped with the stream
    // and the slot: the connection is closed unanswered.
    let _ = thread::Builder::new()
        .name("oplog-http-conn".into())
        .spawn(move || {
            let _slot = slot;
            handle(stream, &route, limits);
        });
}

/// One of the connections served at once; given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(active: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        active
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Slot(Arc::clone(active)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Answers 503 on the accept thread, without waiting for anything: the
/// response fits in an empty socket buffer.
fn refuse(mut stream: TcpStream) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let response = Response::text(503, "too many connections, try again\n");
    if write_response(&mut stream, &response, false).is_ok() {
        let _ = stream.shutdown(Shutdown::Write);
        // Take what the client already sent, so that closing does not reset
        // the connection under the response; never wait for more.
        let _ = stream.set_nonblocking(true);
        let _ = stream.read(&mut [0; 4096]);
    }
}

/// Serves one connection: reads the request, answers, closes.
fn handle(mut stream: TcpStream, route: &Route, limits: Limits) {
    // Accepted sockets inherit the listener's non-blocking mode on some
    // platforms.
    if stream.set_nonblocking(false).is_err()
        || stream
            .set_write_timeout(Some(limits.write_timeout))
            .is_err()
    {
        return;
    }
    let _ = stream.set_nodelay(true);
    let (response, head_only) = match read_head(&mut stream, &limits) {
        Ok(head) => answer(&head, route),
        Err(HeadError::Closed) => return,
        Err(HeadError::Bad(response)) => (response, false),
    };
    if write_response(&mut stream, &response, head_only).is_ok() {
        linger(&mut stream, limits.linger);
    }
}

/// Why no request head was read.
enum HeadError {
    /// The client sent nothing, went away, or the socket failed: there is
    /// no one to answer.
    Closed,
    /// The client is answered with this error.
    Bad(Response),
}

/// Reads the request line and headers, up to the empty line that ends them,
/// within the limits. A malformed request line is answered as soon as it is
/// complete.
fn read_head(stream: &mut TcpStream, limits: &Limits) -> Result<Vec<u8>, HeadError> {
    let deadline = Instant::now() + limits.head_timeout;
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let mut line_checked = false;
    loop {
        let room = limits.max_head.saturating_sub(head.len());
        if room == 0 {
            return Err(HeadError::Bad(if head.contains(&b'\n') {
                Response::text(431, "request header fields too large\n")
            } else {
                Response::text(414, "request line too long\n")
            }));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Err(timed_out(&head));
        }
        let want = room.min(chunk.len());
        let n = match stream.read(&mut chunk[..want]) {
            Ok(0) if head.is_empty() => return Err(HeadError::Closed),
            Ok(0) => return Err(HeadError::Bad(Response::text(400, "incomplete request\n"))),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(timed_out(&head))
            }
            Err(_) => return Err(HeadError::Closed),
        };
        // The end may straddle two reads: look from a little before.
        let from = head.len().saturating_sub(2);
        head.extend_from_slice(&chunk[..n]);
        if !line_checked {
            if let Some(end) = head.iter().position(|&b| b == b'\n') {
                request_line(&head[..end]).map_err(|status| HeadError::Bad(error(status)))?;
                line_checked = true;
            }
        }
        if let Some(end) = head_end(&head, from) {
            head.truncate(end);
            return Ok(head);
        }
    }
}

fn timed_out(head: &[u8]) -> HeadError {
    if head.is_empty() {
        HeadError::Closed
    } else {
        HeadError::Bad(Response::text(408, "request timed out\n"))
    }
}

/// Where the head ends (just past the empty line), looking for the line
/// feed before the empty line from `from` on. A line ends with CRLF or, as
/// recipients may accept, with LF alone.
fn head_end(head: &[u8], from: usize) -> Option<usize> {
    (from..head.len()).find_map(|i| {
        if head[i] != b'\n' {
            return None;
        }
        match head.get(i + 1..i + 3) {
            Some(b"\r\n") => Some(i + 3),
            _ if head.get(i + 1) == Some(&b'\n') => Some(i + 2),
            _ => None,
        }
    })
}

/// A request line's method and target, or the status that rejects it
/// (400, or 505 for an HTTP version other than 1.x).
fn request_line(line: &[u8]) -> Result<(&str, &str), u16> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if !line.iter().all(|&b| b == b' ' || b.is_ascii_graphic()) {
        return Err(400);
    }
    // Only visible ASCII and spaces from here on.
    let line = std::str::from_utf8(line).map_err(|_| 400u16)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(400);
    };
    if !is_token(method) || target.is_empty() {
        return Err(400);
    }
    match version.as_bytes() {
        b"HTTP/1.1" | b"HTTP/1.0" => Ok((method, target)),
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            Err(505)
        }
        _ => Err(400),
    }
}

/// Whether `s` is an HTTP token (a method or a header name).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The path of a request target without query or fragment: origin form
/// (`/path?query`) or absolute form (`http://host/path`); `None` for
/// anything else.
fn target_path(target: &str) -> Option<&str> {
    let path = if target.starts_with('/') {
        target
    } else {
        let scheme = target.find("://")?;
        if !["http", "https"]
            .iter()
            .any(|s| s.eq_ignore_ascii_case(&target[..scheme]))
        {
            return None;
        }
        let rest = &target[scheme + 3..];
        // An absolute target without a path asks for the root.
        rest.find(['/', '?', '#']).map_or("/", |at| &rest[at..])
    };
    let path = &path[..path.find(['?', '#']).unwrap_or(path.len())];
    Some(if path.is_empty() { "/" } else { path })
}

/// Checks the header lines (after the request line): each a token, a
/// colon and a value, without line folding, NUL or stray CR.
fn headers_valid(lines: &[&[u8]]) -> bool {
    lines.iter().all(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return false;
        };
        let name = std::str::from_utf8(&line[..colon]).unwrap_or("");
        is_token(name) && !line.iter().any(|&b| b == b'\0' || b == b'\r')
    })
}

/// The response to a complete request head, and whether it is for HEAD
/// (headers without body).
fn answer(head: &[u8], route: &Route) -> (Response, bool) {
    let mut lines: Vec<&[u8]> = head.split(|&b| b == b'\n').collect();
    // The head ends with its empty line: two empty pieces after the split.
    while lines.last().is_some_and(|l| l.is_empty() || *l == b"\r") {
        lines.pop();
    }
    let Some((first, headers)) = lines.split_first() else {
        return (error(400), false);
    };
    let (method, target) = match request_line(first) {
        Ok(parts) => parts,
        Err(status) => return (error(status), false),
    };
    if !headers_valid(headers) {
        return (error(400), false);
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return (error(405), false),
    };
    let Some(path) = target_path(target) else {
        return (error(400), head_only);
    };
    let response = match panic::catch_unwind(AssertUnwindSafe(|| route(path))) {
        Ok(Some(response)) if (200..=599).contains(&response.status) => response,
        Ok(Some(_)) | Err(_) => error(500),
        Ok(None) => error(404),
    };
    (response, head_only)
}

/// The server's own response for an error status.
fn error(status: u16) -> Response {
    let text = match reason(status) {
        "" => "error".to_string(),
        reason => reason.to_lowercase(),
    };
    Response::text(status, &format!("{text}\n"))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        414 => "URI Too Long",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Writes the status line, the headers and (unless `head_only`) the body.
fn write_response(stream: &mut TcpStream, response: &Response, head_only: bool) -> io::Result<()> {
    // A media type with a line break would end the headers early.
    let content_type = if response
        .content_type
        .bytes()
        .all(|b| b == b' ' || b.is_ascii_graphic())
    {
        response.content_type
    } else {
        "application/octet-stream"
    };
    let mut out = String::with_capacity(256);
    let _ = write!(
        out,
        concat!(
            "HTTP/1.1 {} {}\r\nDate: {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n",
        ),
        response.status,
        reason(response.status),
        HttpDate(SystemTime::now()),
        content_type,
        response.body.len(),
    );
    match response.status {
        405 => out.push_str("Allow: GET, HEAD\r\n"),
        503 => out.push_str("Retry-After: 1\r\n"),
        _ => {}
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(&response.body);
    }
    stream.write_all(&bytes)?;
    stream.flush()
}

/// Ends the connection gracefully: says nothing more will come, then reads
/// and discards what the client still sends (a body, a second request)
/// until it closes, for at most `limit` and 64 KiB.
fn linger(stream: &mut TcpStream, limit: Duration) {
    if stream.shutdown(Shutdown::Write).is_err() {
        return;
    }
    let deadline = Instant::now() + limit;
    let mut budget: usize = 64 * 1024;
    let mut scratch = [0u8; 4096];
    while budget > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut scratch) {
            Ok(0) | Err(_) => return,
            Ok(n) => budget = budget.saturating_sub(n),
        }
    }
}

/// A time as HTTP dates are written: `Sun, 06 Nov 1994 08:49:37 GMT`.
struct HttpDate(SystemTime);

impl fmt::Display for HttpDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        // A clock before 1970 is wrong anyway; it shows as 1970.
        let secs = self.0.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let (days, secs) = (secs / 86_400, secs % 86_400);
        // Howard Hinnant's civil_from_days, for days after 1970-01-01.
        let z = days + 719_468;
        let (era, doe) = (z / 146_097, z % 146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        // From March-based to January-based, counting from 0.
        let month = (mp + 2) % 12;
        let year = yoe + era * 400 + u64::from(month < 2);
        let weekday = usize::try_from(days % 7).map_or("", |i| WEEKDAYS[i]);
        let month = usize::try_from(month).map_or("", |i| MONTHS[i]);
        write!(
            f,
            "{weekday}, {day:02} {month} {year:04} {:02}:{:02}:{:02} GMT",
            secs / 3600,
            secs % 3600 / 60,
            secs % 60
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response as a client reads it.
    #[derive(Debug)]
    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    fn parse_reply(bytes: &[u8]) -> Reply {
        let end = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no end of head in {:?}", String::from_utf8_lossy(bytes)));
        let head = std::str::from_utf8(&bytes[..end]).unwrap();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
        let status = status_line[9..12].parse().unwrap();
        let headers = lines
            .map(|l| {
                let (n, v) = l.split_once(": ").unwrap();
                (n.to_string(), v.to_string())
            })
            .collect();
        Reply {
            status,
            headers,
            body: bytes[end + 4..].to_vec(),
        }
    }

    fn connect(addr: SocketAddr) -> TcpStream {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
    }

    fn read_reply(mut stream: TcpStream) -> Reply {
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).unwrap();
        let reply = parse_reply(&bytes);
        // Every response says the same about itself.
        assert_eq!(reply.header("Connection"), Some("close"));
        assert_eq!(reply.header("Cache-Control"), Some("no-store"));
        assert!(reply.header("Content-Type").is_some());
        assert!(reply.header("Date").is_some_and(|d| d.ends_with(" GMT")));
        let length: usize = reply.header("Content-Length").unwrap().parse().unwrap();
        if !reply.body.is_empty() {
            assert_eq!(length, reply.body.len());
        }
        reply
    }

    fn exchange(addr: SocketAddr, request: &[u8]) -> Reply {
        let mut stream = connect(addr);
        stream.write_all(request).unwrap();
        read_reply(stream)
    }

    fn ok(content_type: &'static str, body: &str) -> Response {
        Response {
            status: 200,
            content_type,
            body: body.as_bytes().to_vec(),
        }
    }

    fn route() -> Route {
        Arc::new(|path: &str| match path {
            "/" => Some(ok("text/plain; charset=utf-8", "hello\n")),
            "/status.json" => Some(ok("application/json", "{}")),
            "/weird" => Some(Response {
                status: 42,
                ..ok("text/plain", "")
            }),
            "/panic" => panic!("a route that fails"),
            _ => None,
        })
    }

    fn server_with(limits: Limits) -> Server {
        Server::start_with("127.0.0.1:0".parse().unwrap(), route(), limits).unwrap()
    }

    fn server() -> Server {
        server_with(LIMITS)
    }

    #[test]
    fn get_goes_to_the_route_and_unknown_paths_are_404() {
        let server = server();
        let addr = server.local_addr();
        let reply = exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(
            (reply.status, reply.body.as_slice()),
            (200, &b"hello\n"[..])
        );
        assert_eq!(
            reply.header("Content-Type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(reply.header("Content-Length"), Some("6"));
        for request in [
            &b"GET /status.json?pretty=1 HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"GET /status.json#top HTTP/1.0\r\n\r\n",
            b"GET http://agent:9000/status.json?x HTTP/1.1\r\nHost: agent\r\n\r\n",
            // Lines may end with a line feed alone.
            b"GET /status.json HTTP/1.1\nHost: x\n\n",
        ] {
            let reply = exchange(addr, request);
            assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(request));
            assert_eq!(reply.header("Content-Type"), Some("application/json"));
            assert_eq!(reply.body, b"{}");
        }
        let reply = exchange(addr, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(
            (reply.status, reply.body.as_slice()),
            (404, &b"not found\n"[..])
        );
        server.stop();
    }

    #[test]
    fn head_gets_the_headers_without_the_body() {
        let server = server();
        let reply = exchange(server.local_addr(), b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("Content-Length"), Some("6"));
        assert!(reply.body.is_empty());
        let reply = exchange(server.local_addr(), b"HEAD /nope HTTP/1.1\r\n\r\n");
        assert_eq!(reply.status, 404);
        assert!(reply.body.is_empty());
    }

    #[test]
    fn other_methods_are_405() {
        let server = server();
        for request in [
            &b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\na=1"[..],
            b"DELETE /status.json HTTP/1.1\r\n\r\n",
            b"get / HTTP/1.1\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\n\r\n",
        ] {
            let reply = exchange(server.local_addr(), request);
            assert_eq!(reply.status, 405, "{}", String::from_utf8_lossy(request));
            assert_eq!(reply.header("Allow"), Some("GET, HEAD"));
        }
    }

    #[test]
    fn malformed_requests_are_400_and_the_server_keeps_serving() {
        let server = server();
        let addr = server.local_addr();
        for request in [
            &b"\x00\x01\x02garbage\r\n\r\n"[..],
            b"\xff\xfe\xfd\n\n",
            b"GET /\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1 extra\r\n\r\n",
            b"GET nopath HTTP/1.1\r\n\r\n",
            b"GET ftp://host/ HTTP/1.1\r\n\r\n",
            b"GET / FTP/1.0\r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
            b"GET /\xc3\xa9 HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\rX\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\0y\r\n\r\n",
            b"\r\n\r\n",
        ] {
            let reply = exchange(addr, request);
            assert_eq!(reply.status, 400, "{}", String::from_utf8_lossy(request));
        }
        // A request line that is malformed is answered before the headers
        // end; a client that stops half-way is answered when it does.
        let mut stream = connect(addr);
        stream.write_all(b"\x00garbage\r\nHost: x\r\n").unwrap();
        assert_eq!(read_reply(stream).status, 400);
        let mut stream = connect(addr);
        stream.write_all(b"GET / HTTP/1.1\r\nHost: x").unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_reply(stream).status, 400);
        assert_eq!(exchange(addr, b"GET / HTTP/2.0\r\n\r\n").status, 505);
        assert_eq!(exchange(addr, b"GET / HTTP/1.1\r\n\r\n").status, 200);
    }

    #[test]
    fn oversized_heads_are_refused() {
        let server = server();
        let addr = server.local_addr();
        let mut request = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
        for i in 0..200 {
            request.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "y".repeat(40)).as_bytes());
        }
        request.extend_from_slice(b"\r\n");
        assert!(request.len() > MAX_HEAD_BYTES);
        assert_eq!(exchange(addr, &request).status, 431);
        let request = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(exchange(addr, request.as_bytes()).status, 414);
        assert_eq!(exchange(addr, b"GET / HTTP/1.1\r\n\r\n").status, 200);
    }

    #[test]
    fn slow_clients_time_out() {
        let server = server_with(Limits {
            head_timeout: Duration::from_millis(200),
            ..LIMITS
        });
        let mut stream = connect(server.local_addr());
        stream.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        assert_eq!(read_reply(stream).status, 408);
        // A client that sends nothing is closed without an answer.
        let mut stream = connect(server.local_addr());
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).unwrap();
        assert!(bytes.is_empty());
    }

    #[test]
    fn connections_past_the_cap_are_503() {
        let server = server_with(Limits {
            max_connections: 1,
            head_timeout: Duration::from_secs(5),
            ..LIMITS
        });
        let addr = server.local_addr();
        let mut first = connect(addr);
        first.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        // Connections are accepted in order: the first holds the only slot.
        let reply = read_reply(connect(addr));
        assert_eq!(reply.status, 503);
        assert_eq!(reply.header("Retry-After"), Some("1"));
        first.write_all(b"\r\n").unwrap();
        assert_eq!(read_reply(first).status, 200);
        // The slot comes back once the first connection's thread is done.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let status = exchange(addr, b"GET / HTTP/1.1\r\n\r\n").status;
            if status == 200 {
                break;
            }
            assert_eq!(status, 503);
            assert!(Instant::now() < deadline, "the slot never came back");
            thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_failing_route_is_a_500() {
        let server = server();
        let addr = server.local_addr();
        assert_eq!(exchange(addr, b"GET /panic HTTP/1.1\r\n\r\n").status, 500);
        assert_eq!(exchange(addr, b"GET /weird HTTP/1.1\r\n\r\n").status, 500);
        assert_eq!(exchange(addr, b"GET / HTTP/1.1\r\n\r\n").status, 200);
    }

    #[test]
    fn stop_returns_promptly_and_frees_the_port() {
        let server = server();
        let addr = server.local_addr();
        thread::sleep(Duration::from_millis(100));
        let started = Instant::now();
        server.stop();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert!(TcpStream::connect(addr).is_err());

        let addr = {
            let dropped = server_with(LIMITS);
            dropped.local_addr()
        };
        assert!(
            TcpStream::connect(addr).is_err(),
            "dropping stops the server too"
        );
    }

    #[test]
    fn dates_are_written_as_http_wants_them() {
        let at = |secs| HttpDate(UNIX_EPOCH + Duration::from_secs(secs)).to_string();
        assert_eq!(at(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(at(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(at(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(at(1_772_362_800), "Sun, 01 Mar 2026 11:00:00 GMT");
    }

    #[test]
    fn targets_become_paths() {
        for (target, path) in [
            ("/", Some("/")),
            ("/metrics?x=1", Some("/metrics")),
            ("/a#b", Some("/a")),
            ("HTTP://host", Some("/")),
            ("https://host:1/x/y?z", Some("/x/y")),
            ("http://host?q", Some("/")),
            ("*", None),
            ("host:443", None),
            ("file:///etc/passwd", None),
        ] {
            assert_eq!(target_path(target), path, "{target}");
        }
    }
}
