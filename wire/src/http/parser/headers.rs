//! A request's header fields in one buffer (one allocation per request, whatever the
//! number of fields): `name\0value\0` for each field in arrival order, names
//! lower-cased, values as sent (lossy UTF-8). NUL is a safe separator: httparse
//! rejects it in names (tokens) and values (control characters other than HTAB), and
//! lossy decoding never produces it.
//!
//! Where the first [`INDEXED_FIELDS_MAX`] fields end is kept beside the text, so walking
//! them finds each at once: a request is looked up a dozen times (its framing, `Host`,
//! `Connection`, `Expect`, its credentials, its content type), and scanning for every
//! separator each time was 3–4% of a heartbeat's CPU (perf).

/// Fields whose ends are kept (inline, no allocation): what clients send in practice
/// (wrk 3, curl 4, Python's clients 5–9, a browser ~12). Fields past them are found by
/// scanning. The index is part of every request: 12 fields of two `u16` offsets are 48
/// bytes.
const INDEXED_FIELDS_MAX: usize = 12;

/// Header fields in arrival order; see the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    text: String,
    /// Fields (at most `headers_count_max`, which the header size bounds).
    len: u32,
    /// For each of the first `indexed` fields: where its name's NUL and its value's NUL
    /// are in `text`. Offsets past `u16` (a head over 64 KiB, beyond the default 16 KiB
    /// limit) end the index: the fields from there are scanned.
    ends: [(u16, u16); INDEXED_FIELDS_MAX],
    indexed: u8,
    /// [`name_bit`] of every field's name, or-ed: a field whose bit is not set is not
    /// there.
    names: u64,
    /// The bits of [`names`](Self::names) that more than one field set: a name whose
    /// bit is not among them is carried by at most one field.
    repeated: u64,
    /// For each of the first `indexed` fields, the position of its name's bit: a lookup
    /// compares names only where the bit matches (nearly always the one field asked
    /// for), not at every field.
    bits: [u8; INDEXED_FIELDS_MAX],
}

/// Notes where a field ends in the index (`ends`, `indexed`), while there is room and
/// the offsets fit; past that, nothing (the field is found by the scan, as every later
/// one: once an offset does not fit, none after it does).
fn index(
    ends: &mut [(u16, u16); INDEXED_FIELDS_MAX],
    indexed: &mut u8,
    name_end: usize,
    value_end: usize,
) {
    let i = usize::from(*indexed);
    if i < INDEXED_FIELDS_MAX {
        if let (Ok(n), Ok(v)) = (u16::try_from(name_end), u16::try_from(value_end)) {
            ends[i] = (n, v);
            *indexed += 1;
        }
    }
}

/// One of 64 bits for a field name, from its length and its first and last bytes
/// (ASCII case-insensitive): distinct for the names requests are asked about.
fn name_bit(name: &[u8]) -> u64 {
    1u64 << name_bit_pos(name)
}

/// The position of [`name_bit`].
fn name_bit_pos(name: &[u8]) -> u8 {
    let first = name.first().map_or(0, u8::to_ascii_lowercase) as usize;
    let last = name.last().map_or(0, u8::to_ascii_lowercase) as usize;
    ((name.len() + first + 3 * last) % 64) as u8
}

impl Headers {
    /// Copies the fields httparse found. Values are copied as they are and the head is
    /// checked as UTF-8 once, as a whole (nearly every head is); a head that is not is
    /// built again with its values decoded lossily.
    pub(super) fn from_parsed(parsed: &[httparse::Header<'_>]) -> Headers {
        Self::build(parsed, false)
            .or_else(|| Self::build(parsed, true))
            .unwrap_or_default()
    }

    /// The fields in one buffer with their index and name mask; `None` when the text is
    /// not UTF-8 (never with `lossy`).
    fn build(parsed: &[httparse::Header<'_>], lossy: bool) -> Option<Headers> {
        let size: usize = parsed
            .iter()
            .map(|h| h.name.len() + h.value.len() + 2)
            .sum();
        let mut bytes: Vec<u8> = Vec::with_capacity(size);
        let mut ends = [(0u16, 0u16); INDEXED_FIELDS_MAX];
        let mut indexed = 0;
        let mut names = 0u64;
        let mut repeated = 0u64;
        let mut bits = [0u8; INDEXED_FIELDS_MAX];
        for h in parsed {
            let pos = name_bit_pos(h.name.as_bytes());
            let bit = 1u64 << pos;
            repeated |= names & bit;
            names |= bit;
            if let Some(b) = bits.get_mut(usize::from(indexed)) {
                *b = pos;
            }
            let start = bytes.len();
            bytes.extend_from_slice(h.name.as_bytes());
            bytes[start..].make_ascii_lowercase();
            let name_end = bytes.len();
            bytes.push(0);
            if lossy {
                bytes.extend_from_slice(String::from_utf8_lossy(h.value).as_bytes());
            } else {
                bytes.extend_from_slice(h.value);
            }
            let value_end = bytes.len();
            bytes.push(0);
            index(&mut ends, &mut indexed, name_end, value_end);
        }
        Some(Headers {
            text: String::from_utf8(bytes).ok()?,
            len: u32::try_from(parsed.len()).unwrap_or(u32::MAX),
            ends,
            indexed,
            names,
            repeated,
            bits,
        })
    }

    /// The value of the first field called `name` (ASCII case-insensitively).
    pub fn first(&self, name: &str) -> Option<&str> {
        self.named(name).next()
    }

    /// Whether a field may be called `name` (ASCII case-insensitively): `false` means
    /// none is, without a walk (most lookups are of fields a request does not carry).
    pub fn may_have(&self, name: &str) -> bool {
        self.names & name_bit(name.as_bytes()) != 0
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `(name, value)` of each field, in arrival order.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            headers: self,
            next: 0,
            rest: &self.text,
        }
    }

    /// The `i`-th field.
    pub fn get(&self, i: usize) -> Option<(&str, &str)> {
        if i < usize::from(self.indexed) {
            return Some(self.indexed_field(i));
        }
        self.iter().nth(i)
    }

    /// `(name, value)` of the fields whose name (lower-case bytes) `wanted` accepts, in
    /// arrival order. Within the index a field that is not wanted costs a length and a
    /// byte comparison, no `str` (the lookups of every request: its framing, `Host`,
    /// `Connection`, `Expect`, its credentials, its content type).
    pub fn matching<P: Fn(&[u8]) -> bool>(&self, wanted: P) -> Matching<'_, P> {
        Matching {
            headers: self,
            wanted,
            next: 0,
            start: 0,
            rest: None,
        }
    }

    /// The values of the fields called `name` (compared ASCII case-insensitively), in
    /// arrival order.
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.named(name)
    }

    /// [`Headers::values`]: among the indexed fields only those whose name has
    /// `name`'s bit are compared; past the index, the scan; none at all when the bit
    /// is not set, and no more after the first when no other field set it.
    fn named<'a, 'n>(&'a self, name: &'n str) -> Named<'a, 'n> {
        let pos = name_bit_pos(name.as_bytes());
        let bit = 1u64 << pos;
        Named {
            headers: self,
            name: name.as_bytes(),
            pos,
            next: 0,
            left: if self.names & bit == 0 {
                0
            } else if self.repeated & bit == 0 {
                1
            } else {
                usize::MAX
            },
            rest: None,
        }
    }

    /// The `i`-th field, one of the first `indexed`.
    fn indexed_field(&self, i: usize) -> (&str, &str) {
        let start = if i == 0 {
            0
        } else {
            self.ends[i - 1].1 as usize + 1
        };
        let (name_end, value_end) = (self.ends[i].0 as usize, self.ends[i].1 as usize);
        (
            &self.text[start..name_end],
            &self.text[name_end + 1..value_end],
        )
    }
}

/// Iterator over [`Headers`].
pub struct Iter<'a> {
    headers: &'a Headers,
    /// Index of the next field.
    next: usize,
    /// The text from the next field on (used past the indexed fields).
    rest: &'a str,
}

impl<'a> Iter<'a> {
    /// The text up to the next NUL, and the rest after it. Fields are short: a plain
    /// byte loop beats setting up a searcher for each one.
    fn part(&mut self) -> Option<&'a str> {
        let end = self.rest.bytes().position(|b| b == 0)?;
        let (part, rest) = (&self.rest[..end], &self.rest[end + 1..]);
        self.rest = rest;
        Some(part)
    }
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, &'a str);
    fn next(&mut self) -> Option<Self::Item> {
        let h = self.headers;
        if self.next >= h.len() {
            return None;
        }
        let i = self.next;
        self.next += 1;
        if i < usize::from(h.indexed) {
            let field = h.indexed_field(i);
            if self.next == usize::from(h.indexed) {
                // The scan of the fields past the index starts after this one.
                self.rest = &h.text[h.ends[i].1 as usize + 1..];
            }
            return Some(field);
        }
        Some((self.part()?, self.part()?))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.headers.len() - self.next;
        (left, Some(left))
    }
}

/// Whether a stored (lower-case) field name is `asked`, ASCII case-insensitively.
/// Callers ask in lower case: the plain comparison (one `memcmp`) settles nearly every
/// lookup, where the case-insensitive one goes byte by byte.
fn same_name(stored: &[u8], asked: &[u8]) -> bool {
    stored.len() == asked.len() && (stored == asked || stored.eq_ignore_ascii_case(asked))
}

/// Iterator of [`Headers::values`] (see [`Headers::named`]).
struct Named<'a, 'n> {
    headers: &'a Headers,
    name: &'n [u8],
    /// The position of `name`'s bit.
    pos: u8,
    /// Next indexed field.
    next: usize,
    /// Fields that may still be called `name`: 0 (none), 1 (the bit is not repeated),
    /// or unknown.
    left: usize,
    /// Past the index: the scan of the remaining fields.
    rest: Option<std::iter::Skip<Iter<'a>>>,
}

impl<'a> Iterator for Named<'a, '_> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        if self.left == 0 {
            return None;
        }
        let h = self.headers;
        let indexed = usize::from(h.indexed);
        while self.next < indexed {
            let i = self.next;
            self.next += 1;
            if h.bits[i] != self.pos {
                continue;
            }
            let (n, v) = h.indexed_field(i);
            if same_name(n.as_bytes(), self.name) {
                self.left -= 1;
                return Some(v);
            }
        }
        if indexed == h.len() {
            self.left = 0;
            return None;
        }
        let name = self.name;
        let rest = self.rest.get_or_insert_with(|| h.iter().skip(indexed));
        let found = rest.find(|(n, _)| same_name(n.as_bytes(), name));
        match found {
            Some((_, v)) => {
                self.left -= 1;
                Some(v)
            }
            None => {
                self.left = 0;
                None
            }
        }
    }
}

/// Iterator of [`Headers::matching`].
pub struct Matching<'a, P> {
    headers: &'a Headers,
    wanted: P,
    /// Next indexed field, and where its name starts.
    next: usize,
    start: usize,
    /// Past the index: the scan of the remaining fields.
    rest: Option<std::iter::Skip<Iter<'a>>>,
}

impl<'a, P: Fn(&[u8]) -> bool> Iterator for Matching<'a, P> {
    type Item = (&'a str, &'a str);
    fn next(&mut self) -> Option<Self::Item> {
        let h = self.headers;
        let bytes = h.text.as_bytes();
        while self.next < usize::from(h.indexed) {
            let (name_end, value_end) = h.ends[self.next];
            let (name_end, value_end) = (name_end as usize, value_end as usize);
            let start = self.start;
            self.next += 1;
            self.start = value_end + 1;
            if bytes.get(start..name_end).is_some_and(|n| (self.wanted)(n)) {
                return Some(h.indexed_field(self.next - 1));
            }
        }
        if usize::from(h.indexed) == h.len() {
            return None;
        }
        let rest = self
            .rest
            .get_or_insert_with(|| h.iter().skip(usize::from(h.indexed)));
        rest.find(|(n, _)| (self.wanted)(n.as_bytes()))
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = (&'a str, &'a str);
    type IntoIter = Iter<'a>;
    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_in_order_with_lowercase_names() {
        let parsed = [
            httparse::Header {
                name: "Host",
                value: b"a",
            },
            httparse::Header {
                name: "X-Empty",
                value: b"",
            },
            httparse::Header {
                name: "x-bin",
                value: b"caf\xe9 \x80",
            },
        ];
        let h = Headers::from_parsed(&parsed);
        assert_eq!(h.len(), 3);
        let v: Vec<_> = h.iter().collect();
        assert_eq!(
            v,
            [
                ("host", "a"),
                ("x-empty", ""),
                ("x-bin", "caf\u{fffd} \u{fffd}")
            ]
        );
        assert_eq!(h.get(1), Some(("x-empty", "")));
        assert_eq!(h.get(3), None);
        assert!(Headers::default().iter().next().is_none());
    }

    /// A head past 64 KiB (over the default limit, possible with a larger one): the
    /// index ends where an offset no longer fits, and the scan finds the rest.
    #[test]
    fn fields_past_64_kib_are_scanned() {
        let big = vec![b'x'; 70_000];
        let parsed = [
            httparse::Header {
                name: "A",
                value: b"1",
            },
            httparse::Header {
                name: "Big",
                value: &big,
            },
            httparse::Header {
                name: "C",
                value: b"3",
            },
            httparse::Header {
                name: "a",
                value: b"4",
            },
        ];
        let h = Headers::from_parsed(&parsed);
        assert_eq!(h.indexed, 1);
        assert_eq!(h.len(), 4);
        assert_eq!(h.get(1).map(|(n, v)| (n, v.len())), Some(("big", 70_000)));
        assert_eq!(h.values("a").collect::<Vec<_>>(), ["1", "4"]);
        assert_eq!(h.values("c").collect::<Vec<_>>(), ["3"]);
        assert_eq!(
            h.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            ["a", "big", "c", "a"]
        );
    }

    /// The names requests are asked about have bits of their own, so that asking for
    /// one a request lacks costs no walk; case does not matter.
    #[test]
    fn common_names_have_distinct_bits() {
        let names = [
            "host",
            "connection",
            "content-length",
            "transfer-encoding",
            "expect",
            "content-type",
            "authorization",
            "x-api-key",
            "x-device-token",
            "upgrade",
            "user-agent",
            "accept",
            "accept-encoding",
            "sec-websocket-key",
            "sec-websocket-version",
            "origin",
            "cookie",
            "x-forwarded-for",
        ];
        for (i, a) in names.iter().enumerate() {
            assert_eq!(
                name_bit(a.as_bytes()),
                name_bit(a.to_uppercase().as_bytes())
            );
            for b in &names[i + 1..] {
                assert_ne!(name_bit(a.as_bytes()), name_bit(b.as_bytes()), "{a} {b}");
            }
        }
        let parsed = [httparse::Header {
            name: "Content-Type",
            value: b"x",
        }];
        let h = Headers::from_parsed(&parsed);
        assert!(h.may_have("content-type") && !h.may_have("authorization"));
        assert_eq!(h.values("CONTENT-TYPE").collect::<Vec<_>>(), ["x"]);
        assert_eq!(h.values("authorization").count(), 0);
    }

    /// `first` and `values` (which compare names only where the name's bit matches, and
    /// stop after one field when no other set its bit) give what a plain scan of every
    /// field gives: random heads of 0–30 fields from a small set of names (so names
    /// repeat, bits collide: `ab`/`ba`-like pairs share a bit, and fields run past the
    /// index), in random case, asked about every name of the set and some absent ones.
    #[test]
    fn lookups_agree_with_a_plain_scan() {
        // Names chosen to collide: equal length, first and last bytes swapped give the
        // same bit when `first + 3 * last` agrees modulo 64 — found by search below.
        let mut pool: Vec<String> = [
            "host",
            "content-type",
            "content-length",
            "expect",
            "x-a",
            "x-b",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let want_pos = name_bit_pos(b"host");
        pool.extend(
            (0..2000)
                .map(|i| format!("k{i}"))
                .filter(|n| name_bit_pos(n.as_bytes()) == want_pos)
                .take(3),
        );
        assert!(pool.len() >= 8, "colliding names found: {pool:?}");
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for round in 0..3000 {
            let count = next(31);
            let fields: Vec<(String, Vec<u8>)> = (0..count)
                .map(|i| {
                    let name = &pool[next(pool.len())];
                    let name = if next(2) == 0 {
                        name.to_ascii_uppercase()
                    } else {
                        name.clone()
                    };
                    (name, format!("{round}-{i}").into_bytes())
                })
                .collect();
            let parsed: Vec<httparse::Header<'_>> = fields
                .iter()
                .map(|(name, value)| httparse::Header { name, value })
                .collect();
            let h = Headers::from_parsed(&parsed);
            for asked in pool
                .iter()
                .map(String::as_str)
                .chain(["absent", "HOST", "k"])
            {
                let want: Vec<String> = fields
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(asked))
                    .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                    .collect();
                let got: Vec<&str> = h.values(asked).collect();
                assert_eq!(got, want, "round {round}, {asked}, {fields:?}");
                assert_eq!(h.first(asked), want.first().map(String::as_str));
            }
        }
    }

    /// Past the indexed fields the scan takes over where the index ends, in order;
    /// `get` and `iter` agree on every field.
    #[test]
    fn fields_past_the_index_are_found_in_order() {
        for n in [0, 1, 15, 16, 17, 40] {
            let names: Vec<String> = (0..n).map(|i| format!("X-F{i}")).collect();
            let values: Vec<Vec<u8>> = (0..n)
                .map(|i| {
                    let mut v = format!("v{i}").into_bytes();
                    if i % 7 == 3 {
                        v.push(0xff); // lossy: grows by two bytes
                    }
                    if i % 5 == 0 {
                        v.clear();
                    }
                    v
                })
                .collect();
            let parsed: Vec<httparse::Header<'_>> = names
                .iter()
                .zip(&values)
                .map(|(name, value)| httparse::Header { name, value })
                .collect();
            let h = Headers::from_parsed(&parsed);
            let want: Vec<(String, String)> = names
                .iter()
                .zip(&values)
                .map(|(n, v)| {
                    (
                        n.to_ascii_lowercase(),
                        String::from_utf8_lossy(v).into_owned(),
                    )
                })
                .collect();
            let got: Vec<(String, String)> = h
                .iter()
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .collect();
            assert_eq!(got, want, "{n} fields");
            assert_eq!(h.iter().count(), n);
            for (i, w) in want.iter().enumerate() {
                let (gn, gv) = h.get(i).unwrap();
                assert_eq!((gn, gv), (w.0.as_str(), w.1.as_str()), "field {i} of {n}");
            }
            assert_eq!(h.get(n), None);
            // `matching` and `values` find what a walk finds, in order.
            for k in [0, 3, 15, 16, 39] {
                let name = format!("x-f{k}");
                let walk: Vec<&str> = h
                    .iter()
                    .filter(|(f, _)| *f == name)
                    .map(|(_, v)| v)
                    .collect();
                assert_eq!(h.values(&name.to_uppercase()).collect::<Vec<_>>(), walk);
                let some: Vec<(&str, &str)> = h.matching(|f| f.ends_with(b"1")).collect();
                let want: Vec<(&str, &str)> = h.iter().filter(|(f, _)| f.ends_with('1')).collect();
                assert_eq!(some, want, "{n} fields");
            }
        }
    }
}
