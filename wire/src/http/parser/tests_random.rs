//! Randomised robustness tests of the parser: garbage and mutated requests in random
//! fragments never panic and keep the event stream's invariants.

use super::*;

/// Feed everything at once and collect events until `None`.
fn events(p: &mut Parser, bytes: &[u8]) -> Vec<Event> {
    p.feed(bytes);
    let mut out = Vec::new();
    while let Some(ev) = p.poll() {
        out.push(ev);
    }
    out
}

use crate::test_rng::Rng;

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
                assert!([400, 413, 417, 431].contains(&e.status), "{e:?}");
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
        b"PUT /p HTTP/1.0\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\nhello world!GET / HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x80abcd",
        b"\r\nDELETE http://h/x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
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
