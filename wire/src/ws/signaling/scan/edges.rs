//! Edge cases of the one-pass reading against the serde path (from a hostile review):
//! whatever the fast path decides, the serde path decides the same, with the payload
//! the same slice of the message (`RawValue`'s span); nothing panics. Hand-written
//! cases (top level, `target_id`, types, escapes and surrogates in keys, ids and
//! payloads, numbers, structure, nesting around the limits), then every truncation,
//! deletion, insertion and replacement of a token at every place of ten messages, then
//! random runs of those.
use super::super::{interpret_str, interpret_str_parsed, Action};
use super::interpret;
use crate::test_rng::Rng;
use std::panic::{catch_unwind, AssertUnwindSafe};

#[derive(Default)]
struct Stats {
    total: usize,
    decided: usize,
    relays: usize,
    bad: Vec<String>,
}

impl Stats {
    fn check_id(&mut self, text: &str, id: &str) {
        self.total += 1;
        let fast = catch_unwind(AssertUnwindSafe(|| interpret(text, id)));
        let slow = catch_unwind(AssertUnwindSafe(|| interpret_str_parsed(text, id)));
        let whole = catch_unwind(AssertUnwindSafe(|| interpret_str(text, id)));
        match (&fast, &slow, &whole) {
            (Err(_), _, _) | (_, Err(_), _) | (_, _, Err(_)) => {
                self.bad.push(format!("PANIC on {text:?} id {id:?}"));
                return;
            }
            _ => {}
        }
        let (fast, slow, whole) = (fast.unwrap(), slow.unwrap(), whole.unwrap());
        if whole != slow {
            self.bad.push(format!(
                "MISMATCH whole {text:?}: interpret_str={whole:?} parsed={slow:?} fast={fast:?}"
            ));
        }
        if let Some(f) = fast {
            self.decided += 1;
            if matches!(f, Action::Relay { .. }) {
                self.relays += 1;
            }
            // Only when the depth check passes does interpret_str call scan; compare
            // against the serde path regardless (depth-checked inputs only matter).
            if let (Action::Relay { payload: a, .. }, Action::Relay { payload: b, .. }) =
                (&f, &slow)
            {
                if *b != "null" && (a.as_ptr() != b.as_ptr() || a.len() != b.len()) {
                    self.bad
                        .push(format!("SPAN {text:?}: fast={a:?} parsed={b:?}"));
                }
            }
            if !matches!(slow, Action::TooDeep(_)) && f != slow {
                self.bad
                    .push(format!("MISMATCH {text:?}: fast={f:?} parsed={slow:?}"));
            }
        }
    }
    fn check(&mut self, text: &str) {
        self.check_id(text, "a");
    }
    fn report(&self, name: &str) {
        eprintln!(
            "[{name}] {} inputs, {} decided by fast path, {} relays, {} bad",
            self.total,
            self.decided,
            self.relays,
            self.bad.len()
        );
        for b in self.bad.iter().take(40) {
            eprintln!("  {b}");
        }
    }
}

fn wrap_payload(v: &str) -> String {
    format!(r#"{{"type":"offer","peer_id":"a","target_id":"b","payload":{v}}}"#)
}
fn wrap_unknown(v: &str) -> String {
    format!(r#"{{"type":"offer","peer_id":"a","target_id":"b","x":{v}}}"#)
}

const TOKENS: &[&str] = &[
    "\"",
    "\\",
    "/",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "0",
    "1",
    "9",
    "-",
    "+",
    ".",
    "e",
    "E",
    "n",
    "u",
    "l",
    "t",
    "r",
    "f",
    "a",
    "s",
    "x",
    "d",
    "D",
    " ",
    "\t",
    "\n",
    "\r",
    "\u{0}",
    "\u{1f}",
    "\u{7f}",
    "\u{80}",
    "é",
    "€",
    "😀",
    "\u{feff}",
    "\u{a0}",
    "\u{2028}",
    "\\u",
    "\\ud800",
    "\\udc00",
    "\\uDBFF\\uDFFF",
    "null",
    "\"a\"",
    "\\u0061",
    "1e999",
    "\\\"",
    "\"\"",
    "00",
    "-0",
    "1.",
    ".5",
    "true",
    "false",
    "nul",
    "{}",
    "[]",
    "\\/",
    "\\x",
];

const BASES: &[&str] = &[
    r#"{"type":"offer","peer_id":"a","target_id":"b","payload":{"sdp":"v=0\r\n","type":"offer"}}"#,
    r#"{"type":"register","peer_id":"a"}"#,
    r#"{"type":"heartbeat","peer_id":"a","x":[1,-2.5e3,true,null,"s",{"k":[]}]}"#,
    r#" { "type" : "answer" , "peer_id" : "a" , "target_id" : null , "payload" : null } "#,
    r#"{"type":"ice_candidate","peer_id":"a","target_id":"é","payload":[0,{"a":"\ud83d\ude00"}]}"#,
    r#"{"payload":"x","target_id":"b","peer_id":"a","type":"offer"}"#,
    r#"{"type":"offer","peer_id":"a","target_id":"b","payload":-0.5E+2}"#,
    r#"{"type":"offer","peer_id":"a","target_id":"b","payload":"\u00e9\/\b\f\n\r\t\"\\"}"#,
    r#"{"type":"offer","peer_id":"a","target_id":"b"}"#,
    r#"{}"#,
];

fn boundaries(s: &str) -> Vec<usize> {
    (0..=s.len()).filter(|&i| s.is_char_boundary(i)).collect()
}

#[test]
fn hand_written_cases() {
    let mut st = Stats::default();
    let cases: Vec<String> = vec![
        // whitespace / top level
        "".into(),
        " ".into(),
        "{".into(),
        "}".into(),
        "{}".into(),
        "[]".into(),
        "null".into(),
        "\u{feff}{\"type\":\"register\",\"peer_id\":\"a\"}".into(),
        "{\"type\":\"register\",\"peer_id\":\"a\"}\u{0}".into(),
        "{\"type\":\"register\",\"peer_id\":\"a\"}\u{a0}".into(),
        "{\"type\":\"register\",\"peer_id\":\"a\"}\u{c}".into(),
        "\u{c}{\"type\":\"register\",\"peer_id\":\"a\"}".into(),
        "{\"type\":\"register\",\"peer_id\":\"a\"}{}".into(),
        "{\"type\":\"register\",\"peer_id\":\"a\"},".into(),
        "{\"type\":\"register\",\"peer_id\":\"a\"}}".into(),
        "{,\"type\":\"register\",\"peer_id\":\"a\"}".into(),
        "{\"type\":\"register\",,\"peer_id\":\"a\"}".into(),
        "{\"type\":\"register\" \"peer_id\":\"a\"}".into(),
        "{\"type\" \"register\",\"peer_id\":\"a\"}".into(),
        "{\"type\"::\"register\",\"peer_id\":\"a\"}".into(),
        "[\"register\",\"a\"]".into(),
        "[\"offer\",\"a\",\"b\",{}]".into(),
        // target_id variants
        r#"{"type":"offer","peer_id":"a","target_id":null}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"null"}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":nullx}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":null,"target_id":"b"}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","target_id":null}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":nul}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":NULL}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":1}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":["b"]}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":{"0":"b"}}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":""}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":null}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":nullnull}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":null,"payload":null}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload": 	 1  }"#.into(),
        "{\"type\":\"offer\",\"peer_id\":\"a\",\"target_id\":\"b\",\"payload\":\n[ 1 , 2 ]\n}"
            .into(),
        // types
        r#"{"type":null,"peer_id":"a"}"#.into(),
        r#"{"type":"register","peer_id":null}"#.into(),
        r#"{"type":"","peer_id":"a"}"#.into(),
        r#"{"type":"register","peer_id":""}"#.into(),
        r#"{"type":"Register","peer_id":"a"}"#.into(),
        r#"{"type":"register ","peer_id":"a"}"#.into(),
        r#"{"type":"register","peer_id":"a","type":null}"#.into(),
        r#"{"type":"register","peer_id":"a","peer_id":"a"}"#.into(),
        r#"{"type":"register","peer_id":"a","x":1,"x":2}"#.into(),
        r#"{"type":"register","peer_id":"a","":1}"#.into(),
        r#"{"type":"register","peer_id":"a","Type":1}"#.into(),
        r#"{"type":"register","peer_id":"a","type ":1}"#.into(),
        "{\"type\":\"register\",\"peer_id\":\"a\",\"\u{7f}\":1}".into(),
        "{\"type\":\"register\",\"peer_id\":\"a\",\"\u{1f}\":1}".into(),
        "{\"type\":\"reg\u{0}ister\",\"peer_id\":\"a\"}".into(),
        "{\"type\":\"register\",\"peer_id\":\"a\u{7f}\"}".into(),
        // escapes in keys/ids
        r#"{"type":"register","peer_id":"\u0061"}"#.into(),
        r#"{"type":"register","peer_id":"\ud800"}"#.into(),
        r#"{"type":"register","peer_id":"a","\ud800":1}"#.into(),
        r#"{"type":"register","peer_id":"a","x":"\ud800"}"#.into(),
        r#"{"type":"register","peer_id":"a","x":{"\ud800":1}}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":{"\ud800":1}}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":{"\uD800\uDC00":1}}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":"\uDBFF\uDFFF"}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":"\uDBFF\uDBFF"}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":"\uDBFF\u0041"}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":"\uDBFF\n"}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":"\uDBFF"}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":"\uDC00"}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":"\uD7FF"}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":"\uE000"}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":"\\ud800"}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":"\u12"}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":"\u12g4"}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":"\u"}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":"\U0041"}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":"\'"}"#.into(),
        "{\"type\":\"offer\",\"peer_id\":\"a\",\"target_id\":\"b\",\"payload\":\"\\u00é\"}".into(),
        // numbers
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":1e999}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":-1e999}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":1e-999}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":0e999}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":0e99999999999999999999999}"#
            .into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":1e99999999999999999999999}"#
            .into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":-0}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":-01}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":00}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":0.}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":0.e1}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":1e}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":1e+}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":1E-0}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":--1}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":-}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":Infinity}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":NaN}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":0x10}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":1.5.5}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":1-1}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":[01]}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":{"a":01}}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":[-0,0.0,1E2]}"#.into(),
        // structure
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":[1,]}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":[,1]}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":{,}}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":{"a":1,}}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":{"a" 1}}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":{"a":}}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":{1:1}}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":[}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":{]}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":[[]]]}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":[{}]}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":[ ]}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":{ }}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":[{"a":[{"b":{}}]},[[]]]}"#
            .into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":[1 2]}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":{"a":1 "b":2}}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":{"a":1}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload""#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":"abc"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":"abc\"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":"abc\u00"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":tru}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":True}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":'x'}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":[1]/**/}"#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":{"a":"b"}}  "#.into(),
        r#"{"type":"offer","peer_id":"a","target_id":"b","payload":"\u0000"}"#.into(),
        "{\"type\":\"offer\",\"peer_id\":\"a\",\"target_id\":\"b\",\"payload\":\"\u{7f}\"}".into(),
        "{\"type\":\"offer\",\"peer_id\":\"a\",\"target_id\":\"b\",\"payload\":\"\u{1f}\"}".into(),
        "{\"type\":\"offer\",\"peer_id\":\"a\",\"target_id\":\"b\",\"payload\":\"é\"}".into(),
    ];
    for c in &cases {
        st.check(c);
        st.check_id(c, "");
        st.check_id(c, "b");
    }
    // Deep nesting around the limits.
    for depth in [0usize, 1, 2, 62, 63, 64, 65, 66, 127, 128, 129, 200] {
        for (o, c) in [("[", "]"), ("{\"k\":", "}")] {
            let v = format!("{}1{}", o.repeat(depth), c.repeat(depth));
            st.check(&wrap_payload(&v));
            st.check(&wrap_unknown(&v));
            let e = format!("{}{}", o.repeat(depth), c.repeat(depth));
            st.check(&wrap_payload(&e));
        }
        let mixed: String = (0..depth)
            .map(|i| if i % 2 == 0 { "[" } else { "{\"k\":" })
            .collect();
        let close: String = (0..depth)
            .rev()
            .map(|i| if i % 2 == 0 { "]" } else { "}" })
            .collect();
        st.check(&wrap_payload(&format!("{mixed}0{close}")));
        st.check(&wrap_payload(&format!("{mixed}[]{close}")));
        st.check(&wrap_payload(&format!("{mixed}{{}}{close}")));
    }
    st.report("hand");
    assert!(st.bad.is_empty());
    // The cases reach the fast path's decisions, relays among them.
    assert!(
        st.decided > 100 && st.relays > 50,
        "{} {}",
        st.decided,
        st.relays
    );
}

#[test]
fn mutations_of_ten_messages() {
    let mut st = Stats::default();
    for base in BASES {
        let b = boundaries(base);
        for (n, &at) in b.iter().enumerate() {
            // truncate
            st.check(&base[..at]);
            // delete one char
            if let Some(&next) = b.get(n + 1) {
                st.check(&format!("{}{}", &base[..at], &base[next..]));
            }
            for t in TOKENS {
                // insert
                st.check(&format!("{}{}{}", &base[..at], t, &base[at..]));
                // replace one char
                if let Some(&next) = b.get(n + 1) {
                    st.check(&format!("{}{}{}", &base[..at], t, &base[next..]));
                }
            }
        }
    }
    // Random runs of one to three mutations.
    let mut rng = Rng(12345);
    for _ in 0..30_000 {
        let mut s = rng.pick(BASES).to_string();
        for _ in 0..1 + rng.below(3) {
            let b = boundaries(&s);
            let n = rng.below(b.len());
            let at = b[n];
            let t = rng.pick(TOKENS);
            match rng.below(4) {
                0 => s.insert_str(at, t),
                1 if n + 1 < b.len() => s.replace_range(at..b[n + 1], t),
                2 if n + 1 < b.len() => s.replace_range(at..b[n + 1], ""),
                _ => s.truncate(at),
            }
        }
        st.check(&s);
    }
    st.report("mutations");
    assert!(st.bad.is_empty());
    assert!(
        st.decided > 10_000 && st.relays > 5_000,
        "{} {}",
        st.decided,
        st.relays
    );
}
