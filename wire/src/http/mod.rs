//! HTTP/1.1 server side, sans-IO: a request parser fed with received bytes and a response
//! encoder that appends to an output buffer.
//!
//! The shard loop owns the socket; per connection it keeps one [`Parser`], calls
//! [`Parser::feed`] with every read, then drains [`Parser::poll`] until it returns `None`:
//!
//! * [`Event::Request`]: a complete request (body de-chunked); answer it, in order.
//! * [`Event::SendContinue`]: write `HTTP/1.1 100 Continue\r\n\r\n` now; the request
//!   itself follows once its body has arrived.
//! * [`Event::Error`]: framing is lost. Write `Response::from(err)` encoded with
//!   `keep_alive = false`, then close the connection once the output is flushed.
//!
//! Responses are produced with [`Response`] and [`Response::encode`], which adds
//! `content-length`, the CORS headers and `connection: close` when asked.

pub mod client;
pub mod parser;
pub mod response;

pub use parser::{Event, Headers, HttpError, Limits, Method, Parser, Request};
pub use response::{status_reason, Response};
