//! The wire formats every chatixia program speaks, sans-IO: HTTP/1.1 (a request parser
//! and response encoder for servers, a response reader for clients), the WebSocket
//! handshake and frame codec in both roles, the signaling messages, JSON body helpers,
//! the limits of the API keys file, TURN REST credentials, and time. Nothing here does I/O or reads the clock.

pub mod http;
pub mod json;
pub mod keys_file;
#[cfg(test)]
mod test_rng;
pub mod time;
pub mod turn_rest;
pub mod ws;
