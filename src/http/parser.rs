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

use std::fmt;

/// Longest chunk-size line we accept (hex digits plus chunk extensions), in bytes.
/// Extensions are ignored, so anything longer is abuse; exceeding it gives 400.
const CHUNK_LINE_MAX: usize = 4096;

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
}

/// A complete, de-framed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The method token as sent.
    pub method_raw: String,
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
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// Whether the connection stays open after the response (HTTP/1.1: unless
    /// `Connection: close`; HTTP/1.0: only with `Connection: keep-alive`).
    pub keep_alive: bool,
}

impl Request {
    /// Value of the first header field with this name (compared case-insensitively).
    pub fn header(&self, name_lowercase: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name_lowercase))
            .map(|(_, v)| v.as_str())
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
                let media_type = value.split(';').next().unwrap_or("");
                media_type.trim().eq_ignore_ascii_case("application/json")
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

fn header_has_token(headers: &[(String, String)], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.split(','))
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

/// `application/x-www-form-urlencoded` style decoding of one query component.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex_value);
                let lo = bytes.get(i + 2).copied().and_then(hex_value);
                match (hi, lo) {
                    (Some(hi), Some(lo)) => {
                        out.push(hi << 4 | lo);
                        i += 3;
                    }
                    _ => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
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

/// Incremental state of a chunked body.
#[derive(Debug)]
enum Chunk {
    /// Reading the hex digits of a chunk size.
    Size { value: u64, line_len: usize },
    /// After the digits: optional whitespace, then `;` chunk extensions, up to CR.
    SizeTail {
        value: u64,
        in_ext: bool,
        line_len: usize,
    },
    /// Saw the CR ending the size line; need LF.
    SizeLf { value: u64 },
    /// Inside chunk data.
    Data { remaining: u64 },
    /// Chunk data done; need CR.
    DataCr,
    /// Chunk data done, saw CR; need LF.
    DataLf,
    /// At the start of a trailer line (or of the final blank line).
    TrailerStart,
    /// Inside a trailer field line.
    TrailerLine,
    /// Saw the CR ending a trailer field line; need LF.
    TrailerLf,
    /// Saw the CR of the final blank line; need LF.
    FinalLf,
}

#[derive(Debug)]
enum Body {
    Fixed { remaining: usize },
    Chunked { state: Chunk, trailer_len: usize },
}

#[derive(Debug)]
enum State {
    /// Waiting for a complete request head. `scanned`: bytes after `pos` already
    /// searched for a line feed.
    Head { scanned: usize },
    /// Head parsed, reading the body.
    Body { req: Request, body: Body },
    /// After an error: everything is ignored.
    Dead,
}

/// Outcome of one body step.
enum BodyStep {
    NeedMore,
    Done,
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
            state: State::Head { scanned: 0 },
        }
    }

    /// Append received bytes. Ignored once the parser has yielded an error.
    pub fn feed(&mut self, bytes: &[u8]) {
        if !matches!(self.state, State::Dead) {
            self.buf.extend_from_slice(bytes);
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
                            let state =
                                std::mem::replace(&mut self.state, State::Head { scanned: 0 });
                            self.consume(used);
                            return match state {
                                State::Body { req, .. } => Some(Event::Request(req)),
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

    /// The bytes after the last yielded request, e.g. WebSocket frames that followed
    /// an upgrade request. Call it right after the upgrade request was yielded; the
    /// parser is left empty and waiting for a new request head.
    pub fn take_remaining(&mut self) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.drain(..self.pos.min(buf.len()));
        self.pos = 0;
        if !matches!(self.state, State::Dead) {
            self.state = State::Head { scanned: 0 };
        }
        buf
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
        let State::Head { scanned } = &mut self.state else {
            return Ok(None);
        };
        // RFC 9112 §2.2: ignore empty lines received before the request line.
        if *scanned == 0 {
            let data = self.buf.get(self.pos..).unwrap_or(&[]);
            let skip = data
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            if skip > 0 {
                self.consume(skip);
            }
        }
        let State::Head { scanned } = &mut self.state else {
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
        let mut stack_headers = [httparse::EMPTY_HEADER; 65];
        let mut heap_headers;
        let headers: &mut [httparse::Header<'_>] = if slots <= stack_headers.len() {
            &mut stack_headers[..slots]
        } else {
            heap_headers = vec![httparse::EMPTY_HEADER; slots];
            &mut heap_headers
        };
        let mut parsed = httparse::Request::new(headers);
        let head_len = match parsed.parse(window) {
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

        let method_raw = parsed.method.unwrap_or("").to_owned();
        let target = parsed.path.unwrap_or("");
        let version_minor = parsed.version.unwrap_or(1);
        let (path, query) = split_target(target);
        let headers: Vec<(String, String)> = parsed
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let keep_alive = if version_minor == 0 {
            header_has_token(&headers, "connection", "keep-alive")
                && !header_has_token(&headers, "connection", "close")
        } else {
            !header_has_token(&headers, "connection", "close")
        };
        let framing = body_framing(&headers, version_minor, &self.limits).map_err(Some)?;
        let expects_continue = version_minor >= 1
            && headers
                .iter()
                .any(|(n, v)| n == "expect" && v.trim().eq_ignore_ascii_case("100-continue"));

        let req = Request {
            method: Method::from_token(&method_raw),
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
                self.state = State::Head { scanned: 0 };
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
        self.state = State::Body { req, body };
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
    headers: &[(String, String)],
    version_minor: u8,
    limits: &Limits,
) -> Result<Framing, HttpError> {
    let mut content_length: Option<u64> = None;
    let mut has_te = false;
    let mut te_codings: Vec<&str> = Vec::new();
    for (name, value) in headers {
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

fn chunk_error(what: &str) -> HttpError {
    HttpError::bad_request(format!("bad chunked encoding: {what}"))
}

/// Advance the chunked decoder over `input`. Returns the bytes used and whether the
/// body is complete.
fn step_chunked(
    state: &mut Chunk,
    trailer_len: &mut usize,
    input: &[u8],
    body: &mut Vec<u8>,
    limits: &Limits,
) -> Result<(usize, BodyStep), HttpError> {
    let mut i = 0;
    while i < input.len() {
        if let Chunk::Data { remaining } = state {
            let n = usize::try_from(*remaining)
                .unwrap_or(usize::MAX)
                .min(input.len() - i);
            body.extend_from_slice(&input[i..i + n]);
            i += n;
            *remaining -= n as u64;
            if *remaining == 0 {
                *state = Chunk::DataCr;
            }
            continue;
        }
        let b = input[i];
        i += 1;
        *state = match std::mem::replace(state, Chunk::DataCr) {
            Chunk::Size { value, line_len } => {
                if line_len >= CHUNK_LINE_MAX {
                    return Err(chunk_error("chunk size line too long"));
                }
                if let Some(d) = hex_value(b) {
                    let value = value
                        .checked_mul(16)
                        .and_then(|v| v.checked_add(u64::from(d)));
                    let room = limits.body_size_max.saturating_sub(body.len()) as u64;
                    match value {
                        Some(v) if v <= room => Chunk::Size {
                            value: v,
                            line_len: line_len + 1,
                        },
                        _ => return Err(chunked_too_large(limits.body_size_max)),
                    }
                } else if line_len == 0 {
                    return Err(chunk_error("missing chunk size"));
                } else {
                    match b {
                        b' ' | b'\t' | b';' => Chunk::SizeTail {
                            value,
                            in_ext: b == b';',
                            line_len: line_len + 1,
                        },
                        b'\r' => Chunk::SizeLf { value },
                        b'\n' => return Err(chunk_error("chunk size line must end with CRLF")),
                        _ => return Err(chunk_error("invalid chunk size")),
                    }
                }
            }
            Chunk::SizeTail {
                value,
                in_ext,
                line_len,
            } => {
                if line_len >= CHUNK_LINE_MAX {
                    return Err(chunk_error("chunk size line too long"));
                }
                match b {
                    b'\r' => Chunk::SizeLf { value },
                    b'\n' => return Err(chunk_error("chunk size line must end with CRLF")),
                    b' ' | b'\t' | b';' => Chunk::SizeTail {
                        value,
                        in_ext: in_ext || b == b';',
                        line_len: line_len + 1,
                    },
                    _ if in_ext && b >= 0x20 && b != 0x7f => Chunk::SizeTail {
                        value,
                        in_ext,
                        line_len: line_len + 1,
                    },
                    _ if in_ext => return Err(chunk_error("invalid byte in chunk extension")),
                    _ => return Err(chunk_error("invalid chunk size")),
                }
            }
            Chunk::SizeLf { value } => {
                if b != b'\n' {
                    return Err(chunk_error("chunk size line must end with CRLF"));
                }
                if value == 0 {
                    Chunk::TrailerStart
                } else {
                    Chunk::Data { remaining: value }
                }
            }
            // Handled in bulk above; step back and let the loop do that.
            data @ Chunk::Data { .. } => {
                i -= 1;
                data
            }
            Chunk::DataCr => {
                if b != b'\r' {
                    return Err(chunk_error("chunk data not followed by CRLF"));
                }
                Chunk::DataLf
            }
            Chunk::DataLf => {
                if b != b'\n' {
                    return Err(chunk_error("chunk data not followed by CRLF"));
                }
                Chunk::Size {
                    value: 0,
                    line_len: 0,
                }
            }
            Chunk::TrailerStart => match b {
                b'\r' => Chunk::FinalLf,
                b' ' | b'\t' => return Err(chunk_error("folded trailer line")),
                _ => trailer_byte(b, trailer_len, limits)?,
            },
            Chunk::TrailerLine => match b {
                b'\r' => Chunk::TrailerLf,
                _ => trailer_byte(b, trailer_len, limits)?,
            },
            Chunk::TrailerLf => {
                if b != b'\n' {
                    return Err(chunk_error("trailer line must end with CRLF"));
                }
                Chunk::TrailerStart
            }
            Chunk::FinalLf => {
                if b != b'\n' {
                    return Err(chunk_error("last chunk must end with CRLF"));
                }
                return Ok((i, BodyStep::Done));
            }
        };
    }
    Ok((i, BodyStep::NeedMore))
}

fn trailer_byte(b: u8, trailer_len: &mut usize, limits: &Limits) -> Result<Chunk, HttpError> {
    if b == b'\n' {
        return Err(chunk_error("trailer line must end with CRLF"));
    }
    if (b < 0x20 && b != b'\t') || b == 0x7f {
        return Err(chunk_error("invalid byte in trailer section"));
    }
    *trailer_len += 1;
    if *trailer_len > limits.header_size_max {
        return Err(HttpError::new(
            431,
            format!(
                "trailer section exceeds the limit of {} bytes",
                limits.header_size_max
            ),
        ));
    }
    Ok(Chunk::TrailerLine)
}

fn chunked_too_large(max: usize) -> HttpError {
    HttpError::new(
        413,
        format!("request body too large: chunked body exceeds the limit of {max} bytes"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parser() -> Parser {
        Parser::new(Limits::default())
    }

    /// Feed everything at once and collect events until `None`.
    fn events(p: &mut Parser, bytes: &[u8]) -> Vec<Event> {
        p.feed(bytes);
        drain(p)
    }

    fn drain(p: &mut Parser) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(ev) = p.poll() {
            out.push(ev);
        }
        out
    }

    /// Feed byte by byte, polling after each byte.
    fn events_bytewise(p: &mut Parser, bytes: &[u8]) -> Vec<Event> {
        let mut out = Vec::new();
        for b in bytes {
            p.feed(std::slice::from_ref(b));
            out.extend(drain(p));
        }
        out
    }

    fn one_request(bytes: &[u8]) -> Request {
        let mut p = parser();
        let evs = events(&mut p, bytes);
        match evs.as_slice() {
            [Event::Request(r)] => r.clone(),
            other => panic!("expected one request, got {other:?}"),
        }
    }

    fn one_error(bytes: &[u8]) -> HttpError {
        one_error_with(parser(), bytes)
    }

    fn one_error_with(mut p: Parser, bytes: &[u8]) -> HttpError {
        let evs = events(&mut p, bytes);
        match evs.as_slice() {
            [Event::Error(e)] => {
                assert!(p.poll().is_none());
                e.clone()
            }
            other => panic!("expected one error, got {other:?}"),
        }
    }

    #[test]
    fn simple_get() {
        let r =
            one_request(b"GET /v1/agents?limit=5&x HTTP/1.1\r\nHost: a\r\nX-Thing: Va lue\r\n\r\n");
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.method_raw, "GET");
        assert_eq!(r.path, "/v1/agents");
        assert_eq!(r.query.as_deref(), Some("limit=5&x"));
        assert_eq!(r.version_minor, 1);
        assert_eq!(r.header("host"), Some("a"));
        assert_eq!(r.header("x-thing"), Some("Va lue"));
        assert_eq!(r.headers[1].0, "x-thing");
        assert!(r.body.is_empty());
        assert!(r.keep_alive);
    }

    #[test]
    fn methods() {
        for (raw, m) in [
            ("GET", Method::Get),
            ("HEAD", Method::Head),
            ("POST", Method::Post),
            ("PUT", Method::Put),
            ("DELETE", Method::Delete),
            ("PATCH", Method::Patch),
            ("OPTIONS", Method::Options),
            ("BREW", Method::Other),
            ("get", Method::Other),
        ] {
            let r = one_request(format!("{raw} / HTTP/1.1\r\n\r\n").as_bytes());
            assert_eq!(r.method, m);
            assert_eq!(r.method_raw, raw);
        }
    }

    #[test]
    fn targets() {
        let r = one_request(b"GET http://example.com:80/a/b?c=d HTTP/1.1\r\n\r\n");
        assert_eq!(r.path, "/a/b");
        assert_eq!(r.query.as_deref(), Some("c=d"));
        let r = one_request(b"GET http://example.com HTTP/1.1\r\n\r\n");
        assert_eq!(r.path, "/");
        assert_eq!(r.query, None);
        let r = one_request(b"OPTIONS * HTTP/1.1\r\n\r\n");
        assert_eq!(r.path, "*");
        let r = one_request(b"GET /x? HTTP/1.1\r\n\r\n");
        assert_eq!(r.path, "/x");
        assert_eq!(r.query.as_deref(), Some(""));
    }

    #[test]
    fn pipelined_requests_in_one_feed() {
        let mut p = parser();
        let evs = events(
            &mut p,
            b"GET /a HTTP/1.1\r\n\r\n\
              POST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\
              POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
              GET /d HTTP/1.1\r\nConnection: close\r\n\r\n\
              GET /e HT",
        );
        let reqs: Vec<&Request> = evs
            .iter()
            .map(|e| match e {
                Event::Request(r) => r,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(reqs.len(), 4);
        assert_eq!(reqs[0].path, "/a");
        assert_eq!(reqs[1].path, "/b");
        assert_eq!(reqs[1].body, b"hello");
        assert_eq!(reqs[2].path, "/c");
        assert_eq!(reqs[2].body, b"abc");
        assert_eq!(reqs[3].path, "/d");
        assert!(!reqs[3].keep_alive);
        assert!(!p.is_idle());
        assert_eq!(p.buffered_len(), 9);
        let evs = events(&mut p, b"TP/1.1\r\n\r\n");
        assert!(matches!(&evs[..], [Event::Request(r)] if r.path == "/e"));
        assert!(p.is_idle());
        assert_eq!(p.buffered_len(), 0);
    }

    #[test]
    fn byte_by_byte_content_length() {
        let mut p = parser();
        let body = vec![b'x'; 1000];
        let mut msg =
            b"POST /m HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                .to_vec();
        msg.extend_from_slice(&body);
        msg.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n");
        let evs = events_bytewise(&mut p, &msg);
        assert_eq!(evs.len(), 2, "{evs:?}");
        match &evs[0] {
            Event::Request(r) => {
                assert_eq!(r.body, body);
                assert!(r.content_type_is_json());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&evs[1], Event::Request(r) if r.path == "/next"));
        assert!(p.is_idle());
    }

    #[test]
    fn byte_by_byte_chunked() {
        let mut p = parser();
        let msg = b"POST /c HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n\
                    5;name=val;other=\"q\"\r\nhello\r\n\
                    1A  \r\nabcdefghijklmnopqrstuvwxyz\r\n\
                    000 ; ext\r\nX-Trailer: yes\r\nOther: 1\r\n\r\n\
                    GET /after HTTP/1.1\r\n\r\n";
        let evs = events_bytewise(&mut p, msg);
        assert_eq!(evs.len(), 2, "{evs:?}");
        match &evs[0] {
            Event::Request(r) => {
                assert_eq!(r.body, b"helloabcdefghijklmnopqrstuvwxyz");
                assert_eq!(r.header("x-trailer"), None);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&evs[1], Event::Request(r) if r.path == "/after"));
        // Same thing in one go.
        let mut p = parser();
        assert_eq!(events(&mut p, msg), evs);
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        let msg: &[u8] =
            b"POST /c?a=1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n\
                    4\r\nwiki\r\n5;e\r\npedia\r\n0\r\nT: v\r\n\r\n\
                    PUT /p HTTP/1.0\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nabc";
        let mut whole = parser();
        let expected: Vec<Event> = events(&mut whole, msg)
            .into_iter()
            .filter(|e| *e != Event::SendContinue)
            .collect();
        assert_eq!(expected.len(), 2);
        for split in 0..=msg.len() {
            let mut p = parser();
            let mut evs = events(&mut p, &msg[..split]);
            evs.extend(events(&mut p, &msg[split..]));
            evs.retain(|e| *e != Event::SendContinue);
            assert_eq!(evs, expected, "split at {split}");
        }
    }

    #[test]
    fn large_body_byte_by_byte_is_linear() {
        // 2 MiB fed one byte at a time; quadratic behaviour would take minutes.
        let limits = Limits::default();
        let mut p = Parser::new(limits);
        let n = limits.body_size_max;
        p.feed(format!("POST / HTTP/1.1\r\ncontent-length: {n}\r\n\r\n").as_bytes());
        assert!(p.poll().is_none());
        for _ in 0..n - 1 {
            p.feed(b"z");
            assert!(p.poll().is_none());
        }
        p.feed(b"z");
        match p.poll() {
            Some(Event::Request(r)) => assert_eq!(r.body.len(), n),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn header_section_byte_by_byte() {
        let mut msg = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..60 {
            msg.extend_from_slice(format!("x-h{i}: {}\r\n", "v".repeat(200)).as_bytes());
        }
        msg.extend_from_slice(b"\r\n");
        assert!(msg.len() < 16 * 1024);
        let mut p = parser();
        let evs = events_bytewise(&mut p, &msg);
        assert!(matches!(&evs[..], [Event::Request(r)] if r.headers.len() == 60));
    }

    #[test]
    fn oversize_header_section_is_431() {
        let mut msg = b"GET / HTTP/1.1\r\nx-big: ".to_vec();
        msg.extend(std::iter::repeat_n(b'a', 17 * 1024));
        // Without the terminator: refused as soon as the limit is passed.
        let e = one_error(&msg);
        assert_eq!(e.status, 431);
        // With the terminator in the same feed.
        msg.extend_from_slice(b"\r\n\r\n");
        assert_eq!(one_error(&msg).status, 431);
        // Byte by byte.
        let mut p = parser();
        let evs = events_bytewise(&mut p, &msg);
        assert!(matches!(&evs[..], [Event::Error(e)] if e.status == 431));
    }

    #[test]
    fn extreme_limits_do_not_panic() {
        let msg: &[u8] =
            b"POST / HTTP/1.1\r\nA: b\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        for limits in [
            Limits {
                header_size_max: 0,
                headers_count_max: 0,
                body_size_max: 0,
            },
            Limits {
                header_size_max: usize::MAX,
                headers_count_max: usize::MAX,
                body_size_max: usize::MAX,
            },
        ] {
            let mut p = Parser::new(limits);
            assert!(p.poll().is_none());
            let _ = events(&mut p, msg);
            let mut p = Parser::new(limits);
            let _ = events_bytewise(&mut p, msg);
        }
        let mut p = Parser::new(Limits {
            body_size_max: usize::MAX,
            ..Limits::default()
        });
        let evs = events(&mut p, msg);
        assert!(matches!(&evs[..], [Event::Request(r)] if r.body == b"abc"));
        let evs = events(
            &mut p,
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n",
        );
        assert!(matches!(&evs[..], [Event::Error(e)] if e.status == 413));
    }

    #[test]
    fn header_section_exactly_at_limit() {
        let limits = Limits {
            header_size_max: 64,
            ..Limits::default()
        };
        let head = |len: usize| {
            let base = b"GET / HTTP/1.1\r\nx: \r\n\r\n".len();
            format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(len - base))
        };
        let mut p = Parser::new(limits);
        assert!(matches!(
            &events(&mut p, head(64).as_bytes())[..],
            [Event::Request(_)]
        ));
        let mut p = Parser::new(limits);
        assert!(matches!(
            &events_bytewise(&mut p, head(64).as_bytes())[..],
            [Event::Request(_)]
        ));
        assert_eq!(
            one_error_with(Parser::new(limits), head(65).as_bytes()).status,
            431
        );
    }

    #[test]
    fn too_many_headers_is_431() {
        let mut msg = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..64 {
            msg.extend_from_slice(format!("h{i}: v\r\n").as_bytes());
        }
        let mut ok = msg.clone();
        ok.extend_from_slice(b"\r\n");
        assert_eq!(one_request(&ok).headers.len(), 64);
        msg.extend_from_slice(b"h64: v\r\n\r\n");
        let e = one_error(&msg);
        assert_eq!(e.status, 431);
        assert!(e.reason.contains("too many header fields"), "{}", e.reason);
        // Far too many.
        let mut msg = b"GET / HTTP/1.1\r\n".to_vec();
        for _ in 0..500 {
            msg.extend_from_slice(b"a: b\r\n");
        }
        assert_eq!(one_error(&msg).status, 431);
        let mut p = parser();
        let evs = events_bytewise(&mut p, &msg);
        assert!(matches!(&evs[..], [Event::Error(e)] if e.status == 431));
    }

    #[test]
    fn body_exactly_at_limit_ok() {
        let n = Limits::default().body_size_max;
        let mut msg = format!("POST / HTTP/1.1\r\nContent-Length: {n}\r\n\r\n").into_bytes();
        msg.extend(std::iter::repeat_n(b'q', n));
        assert_eq!(one_request(&msg).body.len(), n);
        // Chunked, in two chunks adding up to exactly the limit.
        let mut msg = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        msg.extend_from_slice(format!("{:x}\r\n", n - 10).as_bytes());
        msg.extend(std::iter::repeat_n(b'q', n - 10));
        msg.extend_from_slice(b"\r\na\r\n0123456789\r\n0\r\n\r\n");
        assert_eq!(one_request(&msg).body.len(), n);
    }

    #[test]
    fn body_one_over_limit_by_content_length_is_413() {
        let n = Limits::default().body_size_max + 1;
        let msg = format!("POST / HTTP/1.1\r\nContent-Length: {n}\r\n\r\n");
        let e = one_error(msg.as_bytes());
        assert_eq!(e.status, 413);
        assert!(e.reason.contains("2097153"), "{}", e.reason);
        // Absurd lengths too (overflowing u64).
        let e = one_error(b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999999\r\n\r\n");
        assert_eq!(e.status, 413);
    }

    #[test]
    fn body_one_over_limit_by_chunked_is_413() {
        let n = Limits::default().body_size_max;
        // One chunk declaring limit + 1: refused on the size line, before any data.
        let msg = format!(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
            n + 1
        );
        assert_eq!(one_error(msg.as_bytes()).status, 413);
        // Running total: limit bytes, then one more chunk of 1 byte.
        let mut msg = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        msg.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        msg.extend(std::iter::repeat_n(b'q', n));
        msg.extend_from_slice(b"\r\n1\r\n");
        let e = one_error(&msg);
        assert_eq!(e.status, 413);
        assert!(e.reason.contains("chunked"), "{}", e.reason);
        // Huge hex sizes do not overflow.
        let e = one_error(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffffffff\r\n",
        );
        assert_eq!(e.status, 413);
    }

    #[test]
    fn expect_continue_sequence() {
        let mut p = parser();
        let evs = events(
            &mut p,
            b"POST /x HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 4\r\n\r\n",
        );
        assert_eq!(evs, vec![Event::SendContinue]);
        assert!(!p.is_idle());
        assert!(events(&mut p, b"ab").is_empty());
        let evs = events(&mut p, b"cd");
        assert!(matches!(&evs[..], [Event::Request(r)] if r.body == b"abcd"));

        // Chunked with Expect.
        let mut p = parser();
        let evs = events(
            &mut p,
            b"POST /x HTTP/1.1\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert_eq!(evs, vec![Event::SendContinue]);
        let evs = events(&mut p, b"2\r\nok\r\n0\r\n\r\n");
        assert!(matches!(&evs[..], [Event::Request(r)] if r.body == b"ok"));
    }

    #[test]
    fn expect_continue_not_sent_when_body_already_arrived() {
        let mut p = parser();
        let evs = events(
            &mut p,
            b"POST /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\na",
        );
        assert!(evs.is_empty(), "{evs:?}");
        let evs = events(&mut p, b"bcd");
        assert!(matches!(&evs[..], [Event::Request(r)] if r.body == b"abcd"));
        // Whole body in the same feed.
        let mut p = parser();
        let evs = events(
            &mut p,
            b"POST /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\nabcd",
        );
        assert!(matches!(&evs[..], [Event::Request(_)]));
    }

    #[test]
    fn expect_continue_without_body_or_on_http10() {
        let mut p = parser();
        let evs = events(&mut p, b"POST /x HTTP/1.1\r\nExpect: 100-continue\r\n\r\n");
        assert!(matches!(&evs[..], [Event::Request(_)]));
        let mut p = parser();
        let evs = events(
            &mut p,
            b"POST /x HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
        );
        assert!(evs.is_empty(), "{evs:?}");
    }

    #[test]
    fn expect_continue_too_large_is_413_without_continue() {
        let n = Limits::default().body_size_max + 1;
        let msg =
            format!("POST /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {n}\r\n\r\n");
        let mut p = parser();
        let evs = events(&mut p, msg.as_bytes());
        assert!(
            matches!(&evs[..], [Event::Error(e)] if e.status == 413),
            "{evs:?}"
        );
    }

    #[test]
    fn bad_request_lines_are_400() {
        for msg in [
            &b"GET\r\n\r\n"[..],
            b"GET / HTTP/1.1 extra\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET / FOO/1.1\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"G@T / HTTP/1.1\r\n\r\n",
            b"GET /a b HTTP/1.1\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
            b"GET / HTTP/1.1\r\n: empty\r\n\r\n",
            b"GET / HTTP/1.1\r\nname : v\r\n\r\n",
            b"GET / HTTP/1.1\r\nx: a\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nx: a\rb\r\n\r\n",
        ] {
            let e = one_error(msg);
            assert_eq!(e.status, 400, "{:?}", String::from_utf8_lossy(msg));
            assert!(e.reason.starts_with("malformed"), "{}", e.reason);
        }
    }

    #[test]
    fn garbage_is_rejected_on_first_bytes() {
        let mut p = parser();
        let evs = events(&mut p, b"\x16\x03\x01");
        assert!(matches!(&evs[..], [Event::Error(e)] if e.status == 400));
    }

    #[test]
    fn smuggling_defences_are_400() {
        let e = one_error(
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert_eq!(e.status, 400);
        assert!(e.reason.contains("smuggling"), "{}", e.reason);
        assert!(e.reason.contains("Content-Length and Transfer-Encoding"));
        for te in [
            "gzip",
            "gzip, chunked",
            "chunked, chunked",
            "identity",
            "chunked;q=1",
            "",
        ] {
            let msg = format!("POST / HTTP/1.1\r\nTransfer-Encoding: {te}\r\n\r\n");
            let e = one_error(msg.as_bytes());
            assert_eq!(e.status, 400, "{te}");
            assert!(e.reason.contains("smuggling"), "{}", e.reason);
        }
        // Two TE fields are a list too.
        let e = one_error(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert_eq!(e.status, 400);
        // TE in HTTP/1.0.
        let e = one_error(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(e.status, 400);
    }

    #[test]
    fn content_length_validation() {
        for cl in ["abc", "-1", "+5", "5 5", "0x10", "", "1.0"] {
            let msg = format!("POST / HTTP/1.1\r\nContent-Length: {cl}\r\n\r\n");
            let e = one_error(msg.as_bytes());
            assert_eq!(e.status, 400, "{cl:?}");
            assert!(e.reason.contains("Content-Length"), "{}", e.reason);
        }
        let e = one_error(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n");
        assert_eq!(e.status, 400);
        assert!(e.reason.contains("conflicting"));
        let e = one_error(b"POST / HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\nabcd");
        assert_eq!(e.status, 400);
        // Identical duplicates are fine (RFC 9112 §6.3).
        let r =
            one_request(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3, 3\r\n\r\nabc");
        assert_eq!(r.body, b"abc");
        let r = one_request(b"POST / HTTP/1.1\r\nContent-Length: 0003\r\n\r\nabc");
        assert_eq!(r.body, b"abc");
    }

    #[test]
    fn bad_chunk_framing_is_400() {
        for body in [
            &b"x\r\n"[..],
            b"\r\n",
            b";ext\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloX\r\n",
            b"5\r\nhello\rX",
            b"5\r\nhello\n0\r\n\r\n",
            b"5 x\r\n",
            b"5;e\x01\r\n",
            b"0\r\n\r\r",
            b"0\r\nT: v\n\r\n",
            b"0\r\nT: v\rx",
            b"0\r\n folded\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"-5\r\n",
        ] {
            let mut msg = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            msg.extend_from_slice(body);
            let e = one_error(&msg);
            assert_eq!(e.status, 400, "{:?}", String::from_utf8_lossy(body));
            assert!(e.reason.starts_with("bad chunked encoding"), "{}", e.reason);
        }
        // Over-long chunk extension.
        let mut msg = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;".to_vec();
        msg.extend(std::iter::repeat_n(b'e', CHUNK_LINE_MAX));
        assert_eq!(one_error(&msg).status, 400);
        // Over-long trailer section.
        let mut msg = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nt: ".to_vec();
        msg.extend(std::iter::repeat_n(b'e', 17 * 1024));
        assert_eq!(one_error(&msg).status, 431);
    }

    #[test]
    fn keep_alive_rules() {
        let ka = |msg: &[u8]| one_request(msg).keep_alive;
        assert!(ka(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.1\r\nConnection: Upgrade, CLOSE\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(!ka(
            b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"
        ));
        assert!(!ka(b"GET / HTTP/1.0\r\nConnection: closed\r\n\r\n"));
        assert_eq!(one_request(b"GET / HTTP/1.0\r\n\r\n").version_minor, 0);
    }

    #[test]
    fn query_param_decoding() {
        let r = one_request(
            b"GET /s?q=hello+world&name=J%C3%BCrgen&empty=&flag&bad=%zz%4&pct=100%25&a%20b=1&q=second HTTP/1.1\r\n\r\n",
        );
        assert_eq!(r.query_param("q").as_deref(), Some("hello world"));
        assert_eq!(r.query_param("name").as_deref(), Some("Jürgen"));
        assert_eq!(r.query_param("empty").as_deref(), Some(""));
        assert_eq!(r.query_param("flag").as_deref(), Some(""));
        assert_eq!(r.query_param("bad").as_deref(), Some("%zz%4"));
        assert_eq!(r.query_param("pct").as_deref(), Some("100%"));
        assert_eq!(r.query_param("a b").as_deref(), Some("1"));
        assert_eq!(r.query_param("missing"), None);
        let r = one_request(b"GET /s?x=%FF%FE HTTP/1.1\r\n\r\n");
        assert_eq!(r.query_param("x").as_deref(), Some("\u{FFFD}\u{FFFD}"));
        let r = one_request(b"GET /s HTTP/1.1\r\n\r\n");
        assert_eq!(r.query_param("x"), None);
    }

    #[test]
    fn content_type_json() {
        let ct = |v: &str| {
            one_request(format!("POST / HTTP/1.1\r\nContent-Type: {v}\r\n\r\n").as_bytes())
                .content_type_is_json()
        };
        assert!(ct("application/json"));
        assert!(ct("Application/JSON; charset=utf-8"));
        assert!(ct("application/json ;charset=utf-8"));
        assert!(!ct("application/jsonx"));
        assert!(!ct("text/plain"));
        assert!(!ct("application/ld+json"));
        assert!(!one_request(b"POST / HTTP/1.1\r\n\r\n").content_type_is_json());
    }

    #[test]
    fn upgrade_and_take_remaining() {
        let mut p = parser();
        p.feed(
            b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n\
              \x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58",
        );
        match p.poll() {
            Some(Event::Request(r)) => assert!(r.is_upgrade_websocket()),
            other => panic!("{other:?}"),
        }
        assert_eq!(p.buffered_len(), 11);
        let rest = p.take_remaining();
        assert_eq!(rest, b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58");
        assert_eq!(p.buffered_len(), 0);
        assert!(p.take_remaining().is_empty());

        assert!(
            !one_request(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n").is_upgrade_websocket()
        );
        assert!(
            !one_request(b"GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n")
                .is_upgrade_websocket()
        );
        assert!(one_request(b"GET / HTTP/1.1\r\nConnection: close\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
            .is_upgrade_websocket());
    }

    #[test]
    fn idle_and_leading_empty_lines() {
        let mut p = parser();
        assert!(p.is_idle());
        assert!(events(&mut p, b"\r\n\r\n").is_empty());
        assert!(p.is_idle());
        assert!(events(&mut p, b"G").is_empty());
        assert!(!p.is_idle());
        let evs = events(&mut p, b"ET / HTTP/1.1\r\n\r\n");
        assert!(matches!(&evs[..], [Event::Request(_)]));
        assert!(p.is_idle());
        // Stray CRLF after a request.
        let evs = events(&mut p, b"\r\nGET /2 HTTP/1.1\r\n\r\n\r\n");
        assert!(matches!(&evs[..], [Event::Request(r)] if r.path == "/2"));
        assert!(p.is_idle());
    }

    #[test]
    fn dead_after_error() {
        let mut p = parser();
        let evs = events(&mut p, b"BAD REQUEST LINE\r\n\r\nGET / HTTP/1.1\r\n\r\n");
        assert_eq!(evs.len(), 1);
        assert!(matches!(&evs[0], Event::Error(e) if e.status == 400));
        assert!(events(&mut p, b"GET / HTTP/1.1\r\n\r\n").is_empty());
        assert!(p.poll().is_none());
        assert_eq!(p.buffered_len(), 0);
    }

    #[test]
    fn header_values_lossy_and_names_lowercased() {
        let r = one_request(b"GET / HTTP/1.1\r\nX-Bin: a\xffb\r\nAUTHORIZATION: Bearer T\r\n\r\n");
        assert_eq!(r.header("x-bin"), Some("a\u{FFFD}b"));
        assert_eq!(
            r.headers[1],
            ("authorization".to_owned(), "Bearer T".to_owned())
        );
        assert_eq!(r.header("Authorization"), Some("Bearer T"));
    }

    #[test]
    fn compaction_with_many_pipelined_requests() {
        let mut p = parser();
        let one = b"POST /p HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789";
        let mut all = Vec::new();
        for _ in 0..2000 {
            all.extend_from_slice(one);
        }
        // Feed in odd-sized pieces, polling in between.
        let mut count = 0;
        for piece in all.chunks(777) {
            for ev in events(&mut p, piece) {
                match ev {
                    Event::Request(r) => {
                        assert_eq!(r.body, b"0123456789");
                        count += 1;
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!(count, 2000);
        assert!(p.is_idle());
    }

    /// Deterministic xorshift64* generator.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Feed `input` in random fragments, checking the event stream's invariants.
    fn run_fuzz_case(rng: &mut Rng, limits: Limits, input: &[u8]) -> Vec<Event> {
        let mut p = Parser::new(limits);
        let mut evs = Vec::new();
        let mut i = 0;
        while i < input.len() {
            let n = 1 + rng.below(64.min(input.len() - i));
            p.feed(&input[i..i + n]);
            i += n;
            while let Some(ev) = p.poll() {
                evs.push(ev);
            }
            let _ = p.buffered_len();
            let _ = p.is_idle();
        }
        // After an error nothing else comes out.
        if let Some(pos) = evs.iter().position(|e| matches!(e, Event::Error(_))) {
            assert_eq!(pos, evs.len() - 1, "events after an error: {evs:?}");
            assert!(p.poll().is_none());
        }
        for ev in &evs {
            match ev {
                Event::Request(r) => {
                    assert!(r.body.len() <= limits.body_size_max);
                    assert!(r.headers.len() <= limits.headers_count_max);
                    assert!(r.version_minor <= 1);
                    let _ = r.query_param("a");
                    let _ = r.content_type_is_json();
                    let _ = r.is_upgrade_websocket();
                }
                Event::Error(e) => {
                    assert!([400, 413, 431].contains(&e.status), "{e:?}");
                    assert!(!e.reason.is_empty());
                }
                Event::SendContinue => {}
            }
        }
        let _ = p.take_remaining();
        evs
    }

    #[test]
    fn random_garbage_never_panics() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let small = Limits {
            header_size_max: 256,
            headers_count_max: 4,
            body_size_max: 64,
        };
        for iter in 0..3000 {
            let len = rng.below(600);
            let input: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let limits = if iter % 2 == 0 {
                small
            } else {
                Limits::default()
            };
            run_fuzz_case(&mut rng, limits, &input);
        }
    }

    #[test]
    fn mutated_requests_never_panic() {
        // Valid requests with a few random bytes flipped, inserted or removed: this
        // reaches much deeper into the header and chunked states than pure noise.
        let seeds: [&[u8]; 4] = [
            b"POST /a?b=c%20d HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n5;x=y\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nT: 1\r\n\r\n",
            b"PUT /p HTTP/1.0\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\nhello world!GET / HTTP/1.1\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x80abcd",
            b"\r\nDELETE http://h/x HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
        ];
        let alphabet = b"\r\n:; \t0123456789abcdefABCDEF-,%+?&=\x00\xff";
        let small = Limits {
            header_size_max: 128,
            headers_count_max: 3,
            body_size_max: 20,
        };
        let mut rng = Rng(0xD1B5_4A32_D192_ED03);
        for iter in 0..4000 {
            let mut input = seeds[iter % seeds.len()].to_vec();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(input.len() + 1);
                let byte = if rng.below(2) == 0 {
                    alphabet[rng.below(alphabet.len())]
                } else {
                    rng.next() as u8
                };
                match rng.below(3) {
                    0 if at < input.len() => input[at] = byte,
                    1 if at < input.len() => {
                        input.remove(at);
                    }
                    _ => input.insert(at, byte),
                }
            }
            let limits = if iter % 3 == 0 {
                small
            } else {
                Limits::default()
            };
            let evs = run_fuzz_case(&mut rng, limits, &input);
            // The same input in one piece must give the same requests and error. The
            // one allowed difference: a malformed head in a partial line is noticed at
            // once in one piece, but only at the next line feed when fragmented.
            let mut p = Parser::new(limits);
            let mut whole = events(&mut p, &input);
            let mut split = evs;
            whole.retain(|e| *e != Event::SendContinue);
            split.retain(|e| *e != Event::SendContinue);
            if whole != split {
                let late_error = whole.len() == split.len() + 1
                    && whole.starts_with(&split)
                    && matches!(whole.last(), Some(Event::Error(e)) if e.status == 400);
                assert!(
                    late_error,
                    "input {:?}: {whole:?} vs {split:?}",
                    String::from_utf8_lossy(&input)
                );
            }
        }
    }
}
