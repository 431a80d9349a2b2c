//! The HTTP/1.1 request parser: any bytes, in fragments chosen by the input, with
//! small limits (so every limit path is reachable) and the defaults.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::http::{Event, Limits, Parser};

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    let small = Limits {
        header_size_max: 256,
        headers_count_max: 8,
        body_size_max: 512,
    };
    for limits in [small, Limits::default()] {
        let mut p = Parser::new(limits);
        let step = usize::from(split % 16) + 1;
        let mut errors = 0;
        for chunk in input.chunks(step) {
            p.feed(chunk);
            let _ = p.is_idle();
            let _ = p.is_reading_body();
            while let Some(ev) = p.poll() {
                match ev {
                    Event::Request(r) => {
                        assert!(r.body.len() <= limits.body_size_max);
                        assert!(r.headers.len() <= limits.headers_count_max);
                        let _ = r.query_param("a");
                        let _ = r.is_upgrade_websocket();
                        let _ = wire::ws::handshake::parse_upgrade(&r);
                    }
                    Event::Error(e) => {
                        assert!((400..500).contains(&e.status), "{e:?}");
                        errors += 1;
                    }
                    Event::SendContinue => {}
                }
            }
        }
        assert!(errors <= 1);
        let _ = p.take_remaining();
    }
});
