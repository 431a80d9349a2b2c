//! Incremental HTTP/1.1 request parser (sans-IO).
//!
//! Bytes go in with [`Parser::feed`] in fragments of any size; [`Parser::poll`] yields
//! [`Event`]s in order. The request line and header section are parsed by `httparse`;
//! bodies (`Content-Length` or `chunked`) are handled by a small state machine that sees
//! every body byte exactly once, so byte-by-byte input is linear in the body size.
//!
//! Header parsing is attempted only when a fragment brings a new line feed, so a header
//! section that arrives byte by byte is re-parsed once per line, not once per byte (and
//! never beyond `header_size_max` bytes).

use std::borrow::Cow;
use std::fmt;
use std::mem::MaybeUninit;

mod chunked;

#[cfg(test)]
use chunked::CHUNK_LINE_MAX;
use chunked::{step_chunked, BodyStep, Chunk};

/// Bytes of empty lines (CR and LF) accepted before a request line. RFC 9112 §2.2 asks
/// servers to ignore at least one empty line there (some clients send a CRLF after a
/// POST body); far more than that is a client feeding us bytes for nothing, so beyond
/// this limit the request is 400 and the connection closed.
pub const LEADING_EMPTY_LINES_SIZE_MAX: usize = 1024;

/// Buffer capacity kept when a connection goes idle; anything larger is released.
const IDLE_BUF_KEEP: usize = 16 * 1024;

/// Consumed bytes at the front of the buffer are only shifted out once there are at
/// least this many (and they make up at least half of the buffer): amortised O(1).
const COMPACT_MIN: usize = 4096;

/// Size limits enforced by the [`Parser`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request line plus header section, terminating blank line included.
    /// Default 16 KiB: generous for real clients (long bearer tokens and cookies fit
    /// with room to spare) while bounding what an idle or hostile connection can make
    /// us buffer before a request is even known. Exceeding it gives
    /// `431 Request Header Fields Too Large` and the connection is closed.
    /// The same bound applies to the trailer section of a chunked body.
    pub header_size_max: usize,
    /// Largest number of header fields. Default 64: real requests carry well under 30;
    /// the bound keeps the per-request header table small. Exceeding it gives
    /// `431 Request Header Fields Too Large` and the connection is closed.
    pub headers_count_max: usize,
    /// Largest request body after de-chunking. Default 2 MiB (2,097,152 bytes), as the
    /// wire contract fixes: bodies are JSON messages held whole in memory. A larger
    /// `Content-Length` gives `413 Content Too Large` at once (before any body byte and
    /// without `100 Continue`); a chunked body gives 413 as soon as its running total
    /// would exceed the limit. The connection is then closed.
    pub body_size_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_size_max: 16 * 1024,
            headers_count_max: 64,
            body_size_max: 2_097_152,
        }
    }
}

/// Request method. Methods are case-sensitive; anything not listed (or not upper-case)
/// is `Other`, see [`Request::method_raw`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Patch,
    Options,
    Other,
}

impl Method {
    fn from_token(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            "OPTIONS" => Method::Options,
            _ => Method::Other,
        }
    }

    /// The token of a known method (`None` for [`Method::Other`]).
    pub fn as_str(self) -> Option<&'static str> {
        Some(match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Patch => "PATCH",
            Method::Options => "OPTIONS",
            Method::Other => return None,
        })
    }
}

/// A complete, de-framed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The method token as sent (a static string for the methods of [`Method`]).
    pub method_raw: Cow<'static, str>,
    /// Path part of the request target, without `?query`, still percent-encoded.
    /// For an absolute-form target (`http://host/p`) the scheme and authority are
    /// dropped; for `OPTIONS *` it is `*`.
    pub path: String,
    /// Raw query string, without the `?` (still percent-encoded). `Some("")` for a
    /// target ending in a bare `?`.
    pub query: Option<String>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version_minor: u8,
    /// Header fields in arrival order; names lower-cased, values as sent (lossy UTF-8).
    /// Trailer fields of a chunked body are not included.
    pub headers: Headers,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// Whether the connection stays open after the response (HTTP/1.1: unless
    /// `Connection: close`; HTTP/1.0: only with `Connection: keep-alive`).
    pub keep_alive: bool,
}

impl Request {
    /// Value of the first header field with this name (compared case-insensitively).
    pub fn header(&self, name_lowercase: &str) -> Option<&str> {
        self.headers.first(name_lowercase)
    }

    /// Whether any header field `name` has `token` in its comma-separated list
    /// (case-insensitive).
    fn header_has_token(&self, name: &str, token: &str) -> bool {
        header_has_token(&self.headers, name, token)
    }

    /// The first query parameter called `name` (compared after decoding), with
    /// `+` decoded to a space and `%XX` escapes decoded (invalid escapes are kept
    /// as-is, invalid UTF-8 is replaced). A parameter without `=` has the value `""`.
    pub fn query_param(&self, name: &str) -> Option<String> {
        let query = self.query.as_deref()?;
        query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .find_map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                if percent_decode(key) == name {
                    Some(percent_decode(value))
                } else {
                    None
                }
            })
    }

    /// Whether the media type of `Content-Type` is `application/json`
    /// (case-insensitive, parameters such as `charset` allowed).
    pub fn content_type_is_json(&self) -> bool {
        match self.header("content-type") {
            Some(value) => {
                let value = value.as_bytes();
                let media_type = &value[..memchr::memchr(b';', value).unwrap_or(value.len())];
                let media_type = media_type.trim_ascii();
                // As sent nearly always: one comparison, not a byte loop.
                media_type == b"application/json"
                    || media_type.eq_ignore_ascii_case(b"application/json")
            }
            None => false,
        }
    }

    /// Whether this asks for a WebSocket upgrade: a `Connection` field holding the
    /// `upgrade` token and an `Upgrade` field holding `websocket` (case-insensitive).
    /// Other handshake checks (method, `Sec-WebSocket-Key`, version) are the caller's.
    pub fn is_upgrade_websocket(&self) -> bool {
        self.header_has_token("connection", "upgrade")
            && self.header_has_token("upgrade", "websocket")
    }
}

fn header_has_token(headers: &Headers, name: &str, token: &str) -> bool {
    headers
        .values(name)
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `application/x-www-form-urlencoded` style decoding of one query component: `+` is a
/// space, `%XX` escapes are decoded (invalid ones kept as-is), invalid UTF-8 replaced.
fn percent_decode(s: &str) -> String {
    let plus_as_space = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus_as_space)
        .decode_utf8_lossy()
        .into_owned()
}

/// A protocol error: the response status and the reason for `{"error": reason}`.
/// After an error the parser is dead; answer with `keep_alive = false` and close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    pub reason: String,
}

impl HttpError {
    fn new(status: u16, reason: impl Into<String>) -> Self {
        HttpError {
            status,
            reason: reason.into(),
        }
    }

    fn bad_request(reason: impl Into<String>) -> Self {
        HttpError::new(400, reason)
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.reason)
    }
}

impl std::error::Error for HttpError {}

/// What [`Parser::poll`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A complete request; requests come out in the order they were sent.
    Request(Request),
    /// The request in progress sent `Expect: 100-continue`: write
    /// `HTTP/1.1 100 Continue\r\n\r\n` now. Its [`Event::Request`] follows.
    SendContinue,
    /// Unrecoverable protocol error: respond (with `connection: close`) and close.
    Error(HttpError),
}

#[derive(Debug)]
enum Body {
    Fixed { remaining: usize },
    Chunked { state: Chunk, trailer_len: usize },
}

#[derive(Debug)]
enum State {
    /// Waiting for a complete request head. `scanned`: bytes after `pos` already
    /// searched for a line feed; `skipped`: empty-line bytes dropped before it.
    Head { scanned: usize, skipped: usize },
    /// Head parsed, reading the body. Boxed: a parser is part of every keep-alive
    /// connection, idle ones included, and a request is ~200 bytes; only a body that
    /// did not come with its head pays for the box.
    Body { req: Box<Request>, body: Body },
    /// After an error: everything is ignored.
    Dead,
}

/// The per-connection request parser. See the module docs.
#[derive(Debug)]
pub struct Parser {
    limits: Limits,
    buf: Vec<u8>,
    /// Consumed prefix of `buf`.
    pos: usize,
    state: State,
}

impl Parser {
    pub fn new(limits: Limits) -> Self {
        Parser {
            limits,
            buf: Vec::new(),
            pos: 0,
            state: State::Head {
                scanned: 0,
                skipped: 0,
            },
        }
    }

    /// Append received bytes. Ignored once the parser has yielded an error.
    pub fn feed(&mut self, bytes: &[u8]) {
        if !matches!(self.state, State::Dead) {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// [`Parser::feed`] for bytes the caller owns: when nothing is buffered (between
    /// requests, the usual case) the parser takes the vector as its buffer, without a
    /// copy or an allocation.
    pub fn feed_vec(&mut self, bytes: Vec<u8>) {
        if self.buf.is_empty() && !matches!(self.state, State::Dead) {
            self.buf = bytes;
            self.pos = 0;
        } else {
            self.feed(&bytes);
        }
    }

    /// The next event, or `None` when more bytes are needed. After an
    /// [`Event::Error`] it always returns `None`.
    pub fn poll(&mut self) -> Option<Event> {
        loop {
            match &mut self.state {
                State::Dead => return None,
                State::Head { .. } => match self.parse_head() {
                    Ok(None) => return None,
                    Ok(Some(event)) => return Some(event),
                    // Body state entered with bytes available: keep going.
                    Err(None) => continue,
                    Err(Some(err)) => return Some(self.fail(err)),
                },
                State::Body { req, body } => {
                    let available = self.buf.get(self.pos..).unwrap_or(&[]);
                    let result = match body {
                        Body::Fixed { remaining } => {
                            let n = (*remaining).min(available.len());
                            req.body.extend_from_slice(&available[..n]);
                            *remaining -= n;
                            let step = if *remaining == 0 {
                                BodyStep::Done
                            } else {
                                BodyStep::NeedMore
                            };
                            Ok((n, step))
                        }
                        Body::Chunked { state, trailer_len } => {
                            step_chunked(state, trailer_len, available, &mut req.body, &self.limits)
                        }
                    };
                    match result {
                        Ok((used, BodyStep::NeedMore)) => {
                            self.consume(used);
                            return None;
                        }
                        Ok((used, BodyStep::Done)) => {
                            let state = std::mem::replace(
                                &mut self.state,
                                State::Head {
                                    scanned: 0,
                                    skipped: 0,
                                },
                            );
                            self.consume(used);
                            return match state {
                                State::Body { req, .. } => Some(Event::Request(*req)),
                                // Unreachable: we matched `State::Body` above.
                                _ => None,
                            };
                        }
                        Err(err) => return Some(self.fail(err)),
                    }
                }
            }
        }
    }

    /// Raw bytes held but not yet consumed (body bytes already moved into a request
    /// in progress are not counted).
    pub fn buffered_len(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// Frees the buffer if nothing is buffered (between requests), so that an idle
    /// connection's parser holds no memory; the next `feed` allocates again.
    pub fn release_idle(&mut self) {
        if self.pos >= self.buf.len() && !matches!(self.state, State::Body { .. }) {
            self.buf = Vec::new();
            self.pos = 0;
        }
    }

    /// The bytes after the last yielded request, e.g. WebSocket frames that followed
    /// an upgrade request. Call it right after the upgrade request was yielded; the
    /// parser is left empty and waiting for a new request head.
    pub fn take_remaining(&mut self) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.drain(..self.pos.min(buf.len()));
        self.pos = 0;
        if !matches!(self.state, State::Dead) {
            self.state = State::Head {
                scanned: 0,
                skipped: 0,
            };
        }
        buf
    }

    /// Whether the head of the request in progress is parsed and its body is being
    /// read (the connection loop applies its body deadline then).
    pub fn is_reading_body(&self) -> bool {
        matches!(self.state, State::Body { .. })
    }

    /// Whether no partial request is buffered: between requests (stray CR/LF between
    /// requests count as nothing), or dead after an error.
    pub fn is_idle(&self) -> bool {
        match self.state {
            State::Dead => true,
            State::Body { .. } => false,
            State::Head { .. } => self
                .buf
                .get(self.pos..)
                .unwrap_or(&[])
                .iter()
                .all(|&b| b == b'\r' || b == b'\n'),
        }
    }

    fn fail(&mut self, err: HttpError) -> Event {
        self.state = State::Dead;
        self.buf = Vec::new();
        self.pos = 0;
        Event::Error(err)
    }

    /// Mark `n` more bytes as consumed, compacting the buffer now and then.
    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.buf.len());
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            // Release a large buffer between requests only (at most once per request),
            // not while a body streams through it.
            if matches!(self.state, State::Head { .. }) && self.buf.capacity() > IDLE_BUF_KEEP {
                self.buf.shrink_to(IDLE_BUF_KEEP);
            }
        } else if self.pos >= COMPACT_MIN && self.pos * 2 >= self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }

    /// Try to parse a request head. `Ok(None)`: need more bytes. `Ok(Some)`: an event
    /// to yield. `Err(None)`: moved to the body state, continue. `Err(Some)`: error.
    fn parse_head(&mut self) -> Result<Option<Event>, Option<HttpError>> {
        let State::Head { scanned, skipped } = &mut self.state else {
            return Ok(None);
        };
        // RFC 9112 §2.2: ignore empty lines received before the request line (a
        // bounded number of bytes of them).
        if *scanned == 0 {
            let data = self.buf.get(self.pos..).unwrap_or(&[]);
            let skip = data
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            *skipped = skipped.saturating_add(skip);
            if *skipped > LEADING_EMPTY_LINES_SIZE_MAX {
                return Err(Some(HttpError::bad_request(format!(
                    "more than {LEADING_EMPTY_LINES_SIZE_MAX} bytes of empty lines before the request line"
                ))));
            }
            if skip > 0 {
                self.consume(skip);
            }
        }
        let State::Head { scanned, .. } = &mut self.state else {
            return Ok(None);
        };
        let data = self.buf.get(self.pos..).unwrap_or(&[]);
        if data.is_empty() {
            return Ok(None);
        }
        let max = self.limits.header_size_max;
        // Only bytes within the header limit matter: a head longer than that is 431.
        let window = &data[..data.len().min(max)];
        let fresh = window.get(*scanned..).unwrap_or(&[]);
        // Parse when a line may have been completed, and once on the first bytes of a
        // request so that garbage (say, a TLS handshake) is rejected at once.
        let worth_parsing = *scanned == 0 || memchr::memchr(b'\n', fresh).is_some();
        *scanned = window.len();
        if !worth_parsing || window.is_empty() {
            if data.len() >= max {
                return Err(Some(head_too_large(max)));
            }
            return Ok(None);
        }

        let count_max = self.limits.headers_count_max;
        // One slot more than allowed, so that one too many is seen as such; but never
        // more slots than header lines fit in the window (the shortest is "a:\n").
        let slots = count_max.min(window.len() / 3 + 1).saturating_add(1);
        // Left uninitialised: httparse writes the slots it fills (filling 65 empty
        // slots first was a tenth of the parse).
        let mut stack_headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; 65];
        let mut heap_headers;
        let headers: &mut [MaybeUninit<httparse::Header<'_>>] = if slots <= stack_headers.len() {
            &mut stack_headers[..slots]
        } else {
            heap_headers = Vec::with_capacity(slots);
            heap_headers.resize_with(slots, MaybeUninit::uninit);
            &mut heap_headers
        };
        let mut parsed = httparse::Request::new(&mut []);
        let head_len = match parsed.parse_with_uninit_headers(window, headers) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if data.len() >= max {
                    return Err(Some(head_too_large(max)));
                }
                return Ok(None);
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Some(too_many_headers(count_max)));
            }
            Err(e) => return Err(Some(map_httparse_error(e))),
        };
        if parsed.headers.len() > count_max {
            return Err(Some(too_many_headers(count_max)));
        }

        let method_token = parsed.method.unwrap_or("");
        let method = Method::from_token(method_token);
        let method_raw = match method.as_str() {
            Some(s) => Cow::Borrowed(s),
            None => Cow::Owned(method_token.to_owned()),
        };
        let target = parsed.path.unwrap_or("");
        let version_minor = parsed.version.unwrap_or(1);
        let (path, query) = split_target(target);
        let headers = Headers::from_parsed(parsed.headers);
        let keep_alive = if version_minor == 0 {
            header_has_token(&headers, "connection", "keep-alive")
                && !header_has_token(&headers, "connection", "close")
        } else {
            !header_has_token(&headers, "connection", "close")
        };
        check_host(&headers, version_minor).map_err(Some)?;
        check_expect(&headers).map_err(Some)?;
        let framing = body_framing(&headers, version_minor, &self.limits).map_err(Some)?;
        let expects_continue = version_minor >= 1
            && headers
                .values("expect")
                .any(|v| v.trim().eq_ignore_ascii_case("100-continue"));

        let req = Request {
            method,
            method_raw,
            path,
            query,
            version_minor,
            headers,
            body: Vec::new(),
            keep_alive,
        };
        self.consume(head_len);

        let body = match framing {
            Framing::None => {
                self.state = State::Head {
                    scanned: 0,
                    skipped: 0,
                };
                return Ok(Some(Event::Request(req)));
            }
            Framing::Length(len) if len > 0 && self.buffered_len() >= len => {
                // The whole body came with the head (nearly every request): taken at
                // once, without the body state (which holds the request boxed).
                let mut req = req;
                req.body = self.buf[self.pos..self.pos + len].to_vec();
                self.consume(len);
                self.state = State::Head {
                    scanned: 0,
                    skipped: 0,
                };
                return Ok(Some(Event::Request(req)));
            }
            Framing::Length(len) => Body::Fixed { remaining: len },
            Framing::Chunked => Body::Chunked {
                state: Chunk::Size {
                    value: 0,
                    line_len: 0,
                },
                trailer_len: 0,
            },
        };
        let mut req = req;
        if let Body::Fixed { remaining } = body {
            // Grows as bytes arrive; don't let a bare header reserve the whole limit.
            req.body.reserve(remaining.min(64 * 1024));
        }
        self.state = State::Body {
            req: Box::new(req),
            body,
        };
        if expects_continue && self.buffered_len() == 0 {
            Ok(Some(Event::SendContinue))
        } else {
            Err(None)
        }
    }
}

fn head_too_large(max: usize) -> HttpError {
    HttpError::new(
        431,
        format!("request header section exceeds the limit of {max} bytes"),
    )
}

fn too_many_headers(max: usize) -> HttpError {
    HttpError::new(
        431,
        format!("too many header fields: more than the limit of {max}"),
    )
}

fn map_httparse_error(e: httparse::Error) -> HttpError {
    let reason = match e {
        httparse::Error::Token => "malformed request line: invalid method or request target",
        httparse::Error::Version => "malformed request line: invalid HTTP version",
        httparse::Error::NewLine => "malformed request: invalid line ending",
        httparse::Error::HeaderName => "malformed header: invalid header name",
        httparse::Error::HeaderValue => "malformed header: invalid header value",
        httparse::Error::Status => "malformed request line",
        httparse::Error::TooManyHeaders => "too many header fields",
    };
    HttpError::bad_request(reason)
}

/// RFC 9112 §3.2: an HTTP/1.1 request has exactly one `Host` field; an HTTP/1.0 one
/// at most one. Anything else is 400.
fn check_host(headers: &Headers, version_minor: u8) -> Result<(), HttpError> {
    match headers.values("host").count() {
        0 if version_minor >= 1 => Err(HttpError::bad_request(
            "missing Host header (required in HTTP/1.1)",
        )),
        0 | 1 => Ok(()),
        _ => Err(HttpError::bad_request("more than one Host header")),
    }
}

/// RFC 9110 §10.1.1: the only expectation we meet is `100-continue`; any other gives
/// `417 Expectation Failed`.
fn check_expect(headers: &Headers) -> Result<(), HttpError> {
    for value in headers.values("expect") {
        if !value.trim().eq_ignore_ascii_case("100-continue") {
            return Err(HttpError::new(
                417,
                format!(
                    "unsupported expectation {:?} (only 100-continue)",
                    value.trim()
                ),
            ));
        }
    }
    Ok(())
}

/// Split a request target into (path, query).
fn split_target(target: &str) -> (String, Option<String>) {
    let mut rest = target;
    // Absolute-form (RFC 9112 §3.2.2): drop scheme and authority.
    for scheme in ["http://", "https://"] {
        if rest.len() >= scheme.len()
            && rest.is_char_boundary(scheme.len())
            && rest[..scheme.len()].eq_ignore_ascii_case(scheme)
        {
            let after = &rest[scheme.len()..];
            rest = match after.find(['/', '?']) {
                Some(i) => &after[i..],
                None => "",
            };
            break;
        }
    }
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (rest, None),
    };
    let path = if path.is_empty() { "/" } else { path };
    (path.to_owned(), query)
}

enum Framing {
    None,
    Length(usize),
    Chunked,
}

/// Decide how the body is framed (RFC 9112 §6), rejecting smuggling-prone requests.
fn body_framing(
    headers: &Headers,
    version_minor: u8,
    limits: &Limits,
) -> Result<Framing, HttpError> {
    let mut content_length: Option<u64> = None;
    let mut has_te = false;
    let mut te_codings: Vec<&str> = Vec::new();
    let (cl, te) = (
        headers.may_have("content-length"),
        headers.may_have("transfer-encoding"),
    );
    let framing = |n: &[u8]| (cl && n == b"content-length") || (te && n == b"transfer-encoding");
    for (name, value) in headers.matching(framing) {
        if name == "content-length" {
            // A list of identical values ("5, 5") is allowed; anything else is not.
            for item in value.split(',') {
                let item = item.trim();
                if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(HttpError::bad_request(format!(
                        "invalid Content-Length: {value:?}"
                    )));
                }
                // All digits: only overflow can fail; such a length is over any limit.
                let n = item.parse::<u64>().unwrap_or(u64::MAX);
                match content_length {
                    Some(prev) if prev != n => {
                        return Err(HttpError::bad_request("conflicting Content-Length values"));
                    }
                    _ => content_length = Some(n),
                }
            }
        } else if name == "transfer-encoding" {
            has_te = true;
            te_codings.extend(value.split(',').map(str::trim));
        }
    }
    if has_te {
        if content_length.is_some() {
            return Err(HttpError::bad_request(
                "both Content-Length and Transfer-Encoding present; rejected as a request smuggling defence",
            ));
        }
        if version_minor == 0 {
            return Err(HttpError::bad_request(
                "Transfer-Encoding in an HTTP/1.0 request; rejected as a request smuggling defence",
            ));
        }
        if te_codings.len() != 1 || !te_codings[0].eq_ignore_ascii_case("chunked") {
            return Err(HttpError::bad_request(
                "unsupported Transfer-Encoding (only a single \"chunked\" is accepted); rejected as a request smuggling defence",
            ));
        }
        return Ok(Framing::Chunked);
    }
    match content_length {
        None | Some(0) => Ok(Framing::None),
        Some(n) => match usize::try_from(n) {
            Ok(n) if n <= limits.body_size_max => Ok(Framing::Length(n)),
            _ => Err(HttpError::new(
                413,
                format!(
                    "request body too large: Content-Length {n} exceeds the limit of {} bytes",
                    limits.body_size_max
                ),
            )),
        },
    }
}

mod headers;
pub use headers::Headers;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_hostile;
#[cfg(test)]
mod tests_random;
