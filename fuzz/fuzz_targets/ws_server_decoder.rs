//! The server-side WebSocket frame decoder (client frames, masked), in fragments.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::ws::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    let mut d = Decoder::new(1024);
    let step = usize::from(split) + 1;
    for chunk in input.chunks(step) {
        let mut events = 0usize;
        if d.decode(chunk, |_| events += 1).is_err() {
            return;
        }
        // Held bytes stay bounded by the message limit (plus a frame header and one
        // read's worth of partial frame).
        assert!(d.held_bytes() <= 2 * 1024 + 2 * step + 64, "{}", d.held_bytes());
    }
});
