//! A request's header fields in one buffer (one allocation per request, whatever the
//! number of fields): `name\0value\0` for each field in arrival order, names
//! lower-cased, values as sent (lossy UTF-8). NUL is a safe separator: httparse
//! rejects it in names (tokens) and values (control characters other than HTAB), and
//! lossy decoding never produces it.

/// Header fields in arrival order; see the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    text: String,
    len: usize,
}

impl Headers {
    /// Copies the fields httparse found.
    pub(super) fn from_parsed(parsed: &[httparse::Header<'_>]) -> Headers {
        let size: usize = parsed
            .iter()
            .map(|h| h.name.len() + h.value.len() + 2)
            .sum();
        let mut text = String::with_capacity(size);
        for h in parsed {
            let start = text.len();
            text.push_str(h.name);
            text[start..].make_ascii_lowercase();
            text.push('\0');
            // Valid UTF-8 (nearly every value) is copied as it is; only the rest pays
            // for the lossy decoder.
            match std::str::from_utf8(h.value) {
                Ok(v) => text.push_str(v),
                Err(_) => text.push_str(&String::from_utf8_lossy(h.value)),
            }
            text.push('\0');
        }
        Headers {
            text,
            len: parsed.len(),
        }
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `(name, value)` of each field, in arrival order.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            rest: &self.text,
            left: self.len,
        }
    }

    /// The `i`-th field.
    pub fn get(&self, i: usize) -> Option<(&str, &str)> {
        self.iter().nth(i)
    }
}

/// Iterator over [`Headers`].
pub struct Iter<'a> {
    rest: &'a str,
    left: usize,
}

impl<'a> Iter<'a> {
    /// The text up to the next NUL, and the rest after it. Fields are short: a plain
    /// byte loop beats setting up a searcher for each one (a lookup walks every field).
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
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        Some((self.part()?, self.part()?))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
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
}
