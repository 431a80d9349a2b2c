//! The sidecar's IPC: JSON lines from the agent, framed in fragments, then parsed.
#![no_main]

use chatixia_sidecar::ipc::{parse_command, Framed, LineFramer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    let _ = parse_command(input);
    let mut framer = LineFramer::default();
    let mut out = Vec::new();
    for chunk in input.chunks(usize::from(split) + 1) {
        framer.push(chunk, &mut out);
    }
    for f in out {
        if let Framed::Line(line) = f {
            let _ = parse_command(&line);
        }
    }
});
