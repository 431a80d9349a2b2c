//! What a service's workflow answers: an [`Outcome`] or an [`Error`], typed, with no
//! HTTP in them. `server/` maps both to status codes and JSON bodies in one place
//! (`server::respond`).

use std::fmt;

/// Why a request was not done, as a client should understand it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Malformed (400).
    BadRequest,
    /// No usable credential (401).
    Unauthorized,
    /// A credential that may not do this (403).
    Forbidden,
    /// Nothing of that name (404).
    NotFound,
    /// A concurrent change is being saved (409).
    Conflict,
    /// A field or body over its size limit (413).
    TooLarge,
    /// Well-formed but not acceptable (422).
    Unprocessable,
    /// The client's quota or budget (429).
    TooMany,
    /// The server cannot take it now: a store full, a shard overloaded, the disk (503).
    Unavailable,
    /// A bug or the OS failed us (500).
    Internal,
}

/// A refusal: its kind, the reason for the client (`None`: no body, as the reference
/// answers some 401s), and when to try again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub kind: Kind,
    pub message: Option<String>,
    /// Seconds until a retry may succeed (`retry-after`).
    pub retry_after: Option<u64>,
}

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: Some(message.into()),
            retry_after: None,
        }
    }

    /// A refusal with no reason given (no body).
    pub fn bare(kind: Kind) -> Error {
        Error {
            kind,
            message: None,
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, secs: u64) -> Error {
        self.retry_after = Some(secs);
        self
    }

    pub fn bad_request(m: impl Into<String>) -> Error {
        Error::new(Kind::BadRequest, m)
    }
    pub fn unauthorized(m: impl Into<String>) -> Error {
        Error::new(Kind::Unauthorized, m)
    }
    pub fn forbidden(m: impl Into<String>) -> Error {
        Error::new(Kind::Forbidden, m)
    }
    pub fn not_found(m: impl Into<String>) -> Error {
        Error::new(Kind::NotFound, m)
    }
    pub fn conflict(m: impl Into<String>) -> Error {
        Error::new(Kind::Conflict, m)
    }
    pub fn too_large(m: impl Into<String>) -> Error {
        Error::new(Kind::TooLarge, m)
    }
    pub fn unprocessable(m: impl Into<String>) -> Error {
        Error::new(Kind::Unprocessable, m)
    }
    pub fn too_many(m: impl Into<String>) -> Error {
        Error::new(Kind::TooMany, m)
    }
    pub fn unavailable(m: impl Into<String>) -> Error {
        Error::new(Kind::Unavailable, m)
    }
    pub fn internal(m: impl Into<String>) -> Error {
        Error::new(Kind::Internal, m)
    }

    /// A shard whose mailbox stayed full ([`super::ask`]).
    pub fn overloaded(shard: usize) -> Error {
        Error::unavailable(format!("shard {shard} is overloaded (mailbox full)"))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.message {
            Some(m) => write!(f, "{:?}: {m}", self.kind),
            None => write!(f, "{:?}", self.kind),
        }
    }
}

/// What a workflow answers when it succeeds. JSON is the services' wire format; how it
/// travels (status 200/202, headers) is `server/`'s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A JSON body.
    Json(Vec<u8>),
    /// A JSON body known at compile time.
    Static(&'static [u8]),
    /// One page of a list: its JSON array and the cursor of the next page, if any.
    Page { json: Vec<u8>, next: Option<String> },
    /// Done in memory but not yet durable (a change kept until the store recovers): a
    /// JSON body saying so (202).
    Accepted(Vec<u8>),
}

impl Outcome {
    /// `value` as JSON (compact, in declaration order).
    pub fn json<T: serde::Serialize>(value: &T) -> Outcome {
        Outcome::Json(wire::json::json_vec(value))
    }
}
