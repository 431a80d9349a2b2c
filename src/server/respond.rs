//! The one place where the services' typed answers become HTTP: an [`Outcome`] is a
//! 200 (or 202) with its JSON body and, for a page, `x-next-cursor`; an [`Error`] is its
//! status code with `{"error": …}` (no body when it gives no reason) and `retry-after`.

use crate::http::Response;
use crate::shard::{Error, Kind, Outcome};

/// Header naming the cursor of the next page of a list; absent on the last page.
pub const NEXT_CURSOR_HEADER: &str = "x-next-cursor";

/// The status code of an error kind.
pub fn status(kind: Kind) -> u16 {
    match kind {
        Kind::BadRequest => 400,
        Kind::Unauthorized => 401,
        Kind::Forbidden => 403,
        Kind::NotFound => 404,
        Kind::Conflict => 409,
        Kind::TooLarge => 413,
        Kind::Unprocessable => 422,
        Kind::TooMany => 429,
        Kind::Unavailable => 503,
        Kind::Internal => 500,
    }
}

impl From<Error> for Response {
    fn from(e: Error) -> Response {
        let status = status(e.kind);
        let resp = match e.message {
            Some(m) => Response::error(status, m),
            None => Response::new(status),
        };
        match e.retry_after {
            Some(secs) => resp.with_header("retry-after", secs.to_string()),
            None => resp,
        }
    }
}

impl From<Outcome> for Response {
    fn from(o: Outcome) -> Response {
        match o {
            Outcome::Json(body) => Response::json_bytes(200, body),
            Outcome::Static(body) => Response::json_static(200, body),
            Outcome::Accepted(body) => Response::json_bytes(202, body),
            Outcome::Page { json, next } => {
                let resp = Response::json_bytes(200, json);
                match next {
                    Some(c) => resp.with_header(NEXT_CURSOR_HEADER, c),
                    None => resp,
                }
            }
        }
    }
}

/// A workflow's answer as a response.
pub fn respond(r: Result<Outcome, Error>) -> Response {
    match r {
        Ok(o) => o.into(),
        Err(e) => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_and_outcomes_map_to_http() {
        let r: Response = Error::too_many("slow down").retry_after(7).into();
        assert_eq!(r.status, 429);
        assert_eq!(&r.body[..], br#"{"error":"slow down"}"#);
        assert!(r
            .headers
            .iter()
            .any(|(n, v)| *n == "retry-after" && v == "7"));
        let r: Response = Error::bare(Kind::Unauthorized).into();
        assert_eq!((r.status, r.body.len()), (401, 0));
        let r: Response = Outcome::Page {
            json: b"[1]".to_vec(),
            next: Some("61".into()),
        }
        .into();
        assert_eq!(r.status, 200);
        assert!(r
            .headers
            .iter()
            .any(|(n, v)| *n == NEXT_CURSOR_HEADER && v == "61"));
        let r: Response = Outcome::Accepted(b"{}".to_vec()).into();
        assert_eq!(r.status, 202);
    }
}
