//! JSON read in one pass without building anything: the grammar as serde_json checks a
//! value it skips (strings: no control characters, only the escapes JSON has, four hex
//! digits after `\u`; numbers: digits on both sides of a point, no leading zeros;
//! literals; nesting), so that a fast path built on it never accepts what serde_json
//! refuses. Each function takes the bytes and a position and returns the position past
//! what it read, or `None` for anything it does not accept (whoever calls it then asks
//! serde_json, which decides). Used by the signaling messages' one-pass reading
//! ([`crate::ws::signaling`]).
//!
//! `strict` is set where serde_json's full parse (not its skip) may refuse what was
//! read: a `\uD…` escape (a surrogate, refused unpaired), an exponent or a number of
//! more than [`NUMBER_DIGITS_EXACT_MAX`] digits (beyond `f64`); see
//! [`super::check_strict`].

use super::NUMBER_DIGITS_EXACT_MAX;

/// Containers open at once that [`value`] follows (a bit each in a `u128`). Callers
/// have bounded the whole message to [`crate::json::JSON_DEPTH_MAX`] (64) first; a
/// deeper value is handed to serde rather than tracked.
const NESTING_TRACKED_MAX: u32 = 128;

/// Past JSON whitespace from `i`.
pub(crate) fn ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// The index past the string starting with the quote at `i`, checked as serde_json
/// checks a string it skips; `strict` set when it has a `\uD…` escape (a surrogate,
/// which the full parse refuses unpaired).
pub(crate) fn string(b: &[u8], i: usize, strict: &mut bool) -> Option<usize> {
    let mut j = i + 1;
    loop {
        let k = special(b, j);
        match b.get(k)? {
            b'"' => return Some(k + 1),
            b'\\' => {}
            // A control character, which a JSON string may not hold.
            _ => return None,
        }
        match b.get(k + 1)? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => j = k + 2,
            b'u' => {
                let hex = b.get(k + 2..k + 6)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                *strict |= matches!(hex[0], b'd' | b'D');
                j = k + 6;
            }
            _ => return None,
        }
    }
}

/// Bytes [`special`] looks at a word at a time before it hands the rest of a string to
/// `memchr`: most strings (keys, ids, short values) end within them, and for those a
/// call and its set-up cost more than the search (callgrind: ~100 instructions a key).
const SHORT_STRING_MAX: usize = 64;

/// The index of the first byte from `from` that is a quote, a backslash or a control
/// character (what stops a JSON string), or `b.len()`.
pub(crate) fn special(b: &[u8], from: usize) -> usize {
    const ONES: u64 = u64::MAX / 255;
    const HIGH: u64 = ONES << 7;
    let mut i = from;
    // Eight bytes at a time (the test serde_json makes): a byte's high bit is set in
    // the mask where it is below 0x20 or equal to the quote or the backslash, and the
    // lowest set bit is exact (a borrow only spreads upwards, past the first match).
    while let Some(word) = b.get(i..i + 8) {
        let w = u64::from_le_bytes(word.try_into().unwrap_or_default());
        let quote = w ^ (ONES * u64::from(b'"'));
        let backslash = w ^ (ONES * u64::from(b'\\'));
        let found = (w.wrapping_sub(ONES * 0x20)
            | (quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash))
            & !w
            & HIGH;
        if found != 0 {
            return i + (found.trailing_zeros() / 8) as usize;
        }
        i += 8;
        if i - from >= SHORT_STRING_MAX {
            return special_long(b, i);
        }
    }
    while let Some(&c) = b.get(i) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            return i;
        }
        i += 1;
    }
    i
}

/// [`special`] past its first bytes: `memchr` finds the quote or the backslash a vector
/// at a time, and the bytes before it are checked for controls the same way.
fn special_long(b: &[u8], from: usize) -> usize {
    let rest = &b[from..];
    let end = memchr::memchr2(b'"', b'\\', rest).unwrap_or(rest.len());
    // Without an early exit, so that it runs a vector at a time; controls are rare.
    if rest[..end].iter().fold(false, |seen, &c| seen | (c < 0x20)) {
        return from + rest.iter().position(|&c| c < 0x20).unwrap_or(end);
    }
    from + end
}

/// The index past the number starting at `i` (JSON's grammar: digits on both sides of a
/// point; a leading `0` is the whole integer part, so in `01` the number ends before the
/// `1`, which every caller then refuses as not what may follow a value); `strict` set
/// when it has an exponent or more than [`NUMBER_DIGITS_EXACT_MAX`] digits in all (a
/// long fraction sets it needlessly: the walk passes it).
pub(crate) fn number(b: &[u8], mut i: usize, strict: &mut bool) -> Option<usize> {
    let digits = |b: &[u8], i: usize| b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    let int = match b.get(i)? {
        b'0' => 1,
        b'1'..=b'9' => digits(b, i),
        _ => return None,
    };
    i += int;
    let mut frac = 0;
    if b.get(i) == Some(&b'.') {
        frac = digits(b, i + 1);
        if frac == 0 {
            return None;
        }
        i += 1 + frac;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        *strict = true;
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        let exp = digits(b, i);
        if exp == 0 {
            return None;
        }
        i += exp;
    }
    *strict |= int + frac > NUMBER_DIGITS_EXACT_MAX;
    Some(i)
}

/// Past `key :` of an object member at `i` (the key any string), at the member's value.
fn member_key(b: &[u8], i: usize, strict: &mut bool) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let i = ws(b, string(b, i, strict)?);
    (b.get(i) == Some(&b':')).then(|| ws(b, i + 1))
}

/// The index past the JSON value starting at `i` (no whitespace before it), checked as
/// serde_json checks a value it skips; `strict` as [`string`] and [`number`] set it.
/// Iterative: one bit per open container (1 for an object).
pub(crate) fn value(b: &[u8], mut i: usize, strict: &mut bool) -> Option<usize> {
    let mut open: u128 = 0;
    let mut depth: u32 = 0;
    loop {
        // At a value.
        match *b.get(i)? {
            b'"' => i = string(b, i, strict)?,
            c @ (b'{' | b'[') => {
                i = ws(b, i + 1);
                let close = if c == b'{' { b'}' } else { b']' };
                if b.get(i) == Some(&close) {
                    i += 1;
                } else {
                    if depth == NESTING_TRACKED_MAX {
                        return None;
                    }
                    open = open << 1 | u128::from(c == b'{');
                    depth += 1;
                    if c == b'{' {
                        i = member_key(b, i, strict)?;
                    }
                    continue;
                }
            }
            b't' => i = literal(b, i, b"true")?,
            b'f' => i = literal(b, i, b"false")?,
            b'n' => i = literal(b, i, b"null")?,
            b'-' | b'0'..=b'9' => i = number(b, i, strict)?,
            _ => return None,
        }
        // After a value: close what ends here, then on to the next one.
        loop {
            if depth == 0 {
                return Some(i);
            }
            i = ws(b, i);
            let object = open & 1 == 1;
            match (b.get(i)?, object) {
                (b',', _) => {
                    i = ws(b, i + 1);
                    if object {
                        i = member_key(b, i, strict)?;
                    }
                    break;
                }
                (b'}', true) | (b']', false) => {
                    i += 1;
                    open >>= 1;
                    depth -= 1;
                }
                _ => return None,
            }
        }
    }
}

/// The index past `word` at `i`.
fn literal(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    b[i..].starts_with(word).then_some(i + word.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `special` finds the first quote, backslash or control at every place in strings
    /// of every length around its word size and its hand-over to `memchr`, past
    /// non-ASCII text, as a byte-by-byte search does.
    #[test]
    fn special_finds_the_first_stop() {
        let naive = |b: &[u8], from: usize| {
            from + b[from..]
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
                .unwrap_or(b.len() - from)
        };
        let filler = "aé€\u{7f}zZ ~".as_bytes();
        for len in 0..(3 * SHORT_STRING_MAX + 20) {
            let base: Vec<u8> = filler.iter().copied().cycle().take(len).collect();
            for from in [0, 1, 7] {
                if from > len {
                    continue;
                }
                assert_eq!(special(&base, from), naive(&base, from), "{len} {from}");
                for at in from..len {
                    for stop in [b'"', b'\\', 0x00, 0x1f, b'\n'] {
                        let mut b = base.clone();
                        b[at] = stop;
                        // A second stop later does not move the first.
                        if at + 3 < len {
                            b[at + 3] = b'"';
                        }
                        assert_eq!(
                            special(&b, from),
                            naive(&b, from),
                            "{len} {from} {at} {stop}"
                        );
                    }
                }
            }
        }
    }
}
