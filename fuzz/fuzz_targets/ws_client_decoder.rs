//! The client-side WebSocket frame decoder (server frames, unmasked), in fragments.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::ws::client::ClientDecoder;

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    let mut d = ClientDecoder::new(1024);
    for chunk in input.chunks(usize::from(split) + 1) {
        if d.decode(chunk, |_| {}).is_err() {
            return;
        }
    }
});
