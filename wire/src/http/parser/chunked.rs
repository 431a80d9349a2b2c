//! The chunked body decoder (RFC 9112 §7.1): a byte-at-a-time state machine that
//! moves chunk data into the body in bulk and sees every byte exactly once.

use super::{hex_value, HttpError, Limits};

/// Longest chunk-size line we accept (hex digits plus chunk extensions), in bytes.
/// Extensions are ignored, so anything longer is abuse; exceeding it gives 400.
pub(super) const CHUNK_LINE_MAX: usize = 4096;

/// Incremental state of a chunked body.
#[derive(Debug)]
pub(super) enum Chunk {
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

/// Outcome of one body step.
pub(super) enum BodyStep {
    NeedMore,
    Done,
}

fn chunk_error(what: &str) -> HttpError {
    HttpError::bad_request(format!("bad chunked encoding: {what}"))
}

/// Advance the chunked decoder over `input`. Returns the bytes used and whether the
/// body is complete.
pub(super) fn step_chunked(
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
