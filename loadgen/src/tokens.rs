//! JWTs from `POST /api/token` (X-API-Key): fetched in parallel before a run, and
//! fetched again shortly before they expire on long runs.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use base64::Engine;

use super::net::{Fail, HttpConn, Target};

/// Token lifetime assumed when the JWT's claims cannot be read (PROTOCOL.md §2: 300 s).
const LIFETIME_DEFAULT: Duration = Duration::from_secs(300);

/// A token and when to fetch a new one.
#[derive(Debug, Clone)]
pub struct Token {
    pub jwt: String,
    pub refresh_at: Instant,
}

/// When a token fetched now should be replaced: at 80% of its lifetime (exp − iat), so
/// a connection opened with it never carries an expired one.
fn refresh_at(jwt: &str) -> Instant {
    let lifetime = jwt
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|c| Some(c["exp"].as_i64()? - c["iat"].as_i64()?))
        .filter(|s| *s > 0)
        .map_or(LIFETIME_DEFAULT, |s| Duration::from_secs(s as u64));
    Instant::now() + lifetime.mul_f64(0.8)
}

/// Exchanges one API key for a token on `conn`.
pub async fn fetch_one(conn: &mut HttpConn, key: &str) -> Result<Token, Fail> {
    let r = conn
        .request("POST", "/api/token", &[("X-API-Key", key)], None)
        .await?;
    if r.status != 200 {
        return Err(Fail::new(
            format!("http {}", r.status),
            format!(
                "POST /api/token answered {} (is the server loading this --keys file?)",
                r.status
            ),
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&r.body)
        .map_err(|e| Fail::new("protocol", format!("/api/token body: {e}")))?;
    let jwt = v["token"]
        .as_str()
        .ok_or_else(|| Fail::new("protocol", "/api/token: no token"))?
        .to_owned();
    Ok(Token {
        refresh_at: refresh_at(&jwt),
        jwt,
    })
}

/// Fetches a token for every key with `concurrency` keep-alive connections at once.
/// `done` counts fetched tokens (for the progress line).
pub async fn fetch_all(
    target: &Target,
    keys: &[String],
    concurrency: usize,
    done: &std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> Result<Vec<Token>, Fail> {
    let keys: Rc<[String]> = keys.into();
    let next = Rc::new(Cell::new(0usize));
    let out: Rc<RefCell<Vec<Option<Token>>>> = Rc::new(RefCell::new(vec![None; keys.len()]));
    let failed: Rc<RefCell<Option<Fail>>> = Rc::new(RefCell::new(None));
    let mut workers = Vec::new();
    for _ in 0..concurrency.clamp(1, keys.len().max(1)) {
        let done = done.clone();
        let (keys, next, out, failed, target) = (
            keys.clone(),
            next.clone(),
            out.clone(),
            failed.clone(),
            target.clone(),
        );
        workers.push(monoio::spawn(async move {
            let mut conn: Option<HttpConn> = None;
            while failed.borrow().is_none() {
                let i = next.get();
                if i >= keys.len() {
                    break;
                }
                next.set(i + 1);
                let r = async {
                    if conn.is_none() {
                        conn = Some(HttpConn::open(&target, None).await?);
                    }
                    fetch_one(conn.as_mut().expect("opened above"), &keys[i]).await
                }
                .await;
                match r {
                    Ok(t) => {
                        out.borrow_mut()[i] = Some(t);
                        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) => {
                        *failed.borrow_mut() = Some(e);
                        break;
                    }
                }
            }
        }));
    }
    for w in workers {
        w.await;
    }
    if let Some(e) = failed.borrow_mut().take() {
        return Err(e);
    }
    let v = std::mem::take(&mut *out.borrow_mut());
    Ok(v.into_iter()
        .map(|t| t.expect("every index fetched"))
        .collect())
}

/// Tokens of one shard's peers, refreshed on use when due.
pub struct TokenCache {
    target: Target,
    keys: Vec<String>,
    tokens: Vec<Token>,
    conn: Option<HttpConn>,
    /// Tokens fetched again because they were due.
    pub refreshed: u64,
}

impl TokenCache {
    pub fn new(target: Target, keys: Vec<String>, tokens: Vec<Token>) -> TokenCache {
        TokenCache {
            target,
            keys,
            tokens,
            conn: None,
            refreshed: 0,
        }
    }

    /// The token of peer `i`, fetched again first when due.
    pub async fn get(&mut self, i: usize) -> Result<String, Fail> {
        if Instant::now() >= self.tokens[i].refresh_at {
            if self.conn.is_none() {
                self.conn = Some(HttpConn::open(&self.target, None).await?);
            }
            let conn = self.conn.as_mut().expect("opened above");
            match fetch_one(conn, &self.keys[i]).await {
                Ok(t) => {
                    self.tokens[i] = t;
                    self.refreshed += 1;
                }
                Err(e) => {
                    self.conn = None; // a fresh connection next time
                    return Err(e);
                }
            }
        }
        Ok(self.tokens[i].jwt.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_at_80_percent_of_the_lifetime() {
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"sub":"a","exp":1100,"iat":1000}"#);
        let t = refresh_at(&format!("h.{claims}.s"));
        let d = t - Instant::now();
        assert!(d <= Duration::from_secs(80) && d > Duration::from_secs(79));
        let d = refresh_at("garbage") - Instant::now();
        assert!(d > Duration::from_secs(239));
    }
}
