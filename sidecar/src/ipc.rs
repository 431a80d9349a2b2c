//! The agent's IPC protocol (PROTOCOL.md §8): JSON objects, one per line, over a Unix
//! socket. Sans-IO: [`LineFramer`] splits bytes into lines, [`parse_command`] turns a
//! line into a [`Command`] or an error reason, and the `event_*` functions build the
//! lines we send.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use wire::json::{check_depth, check_strict, TooDeep, JSON_DEPTH_MAX};

/// Longest line we accept from the agent. A MeshMessage carrying a task result can be
/// large, but a DataChannel message over 1 MiB is not portable across WebRTC stacks
/// anyway. A longer line is discarded up to its newline and answered with an error.
pub const IPC_LINE_BYTES_MAX: usize = 1024 * 1024;

/// A DataChannel message (PROTOCOL.md §8), normalised as the reference sidecar does:
/// `type` is required, the other fields default.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MeshMessage {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub request_id: String,
    #[serde(default)]
    pub source_agent: String,
    #[serde(default)]
    pub target_agent: String,
    #[serde(default)]
    pub payload: Value,
}

/// A MeshMessage on its way through the sidecar, normalised exactly as [`MeshMessage`]
/// (`type` required, the other fields defaulted, unknown fields dropped) but without
/// building a tree: the strings borrow from the input where they have no escapes and
/// `payload` stays the raw JSON text it came as (copied verbatim when re-encoded).
/// This is the per-message path in both directions (issue 11: building and re-encoding
/// `serde_json::Value` trees was a visible share of the sender's CPU).
#[derive(Debug, Serialize, Deserialize)]
pub struct MeshMessageRaw<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default, borrow)]
    pub request_id: Cow<'a, str>,
    #[serde(default, borrow)]
    pub source_agent: Cow<'a, str>,
    #[serde(default, borrow)]
    pub target_agent: Cow<'a, str>,
    /// `None` when absent or `null`; encoded as `null`, as [`MeshMessage`] does.
    #[serde(default, borrow)]
    pub payload: Option<&'a RawValue>,
}

impl MeshMessageRaw<'_> {
    /// The normalised DataChannel message text.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("mesh messages serialize")
    }
}

/// A DataChannel message from a peer, normalised, or why it is dropped: not a
/// MeshMessage, or nested deeper than [`JSON_DEPTH_MAX`] (its `payload` would go to the
/// agent as it came; the peer may be any WebRTC stack).
pub fn parse_channel_message(text: &str) -> Result<MeshMessageRaw<'_>, String> {
    check_depth(text.as_bytes(), JSON_DEPTH_MAX).map_err(|e| e.to_string())?;
    let m: MeshMessageRaw<'_> = serde_json::from_str(text).map_err(|e| e.to_string())?;
    // The payload goes on as it came: only what a full parse accepts (the reference
    // sidecar's `Value` parse refuses a lone surrogate escape, a number beyond f64).
    if let Some(p) = m.payload {
        check_strict(p.get()).map_err(|e| e.to_string())?;
    }
    Ok(m)
}

/// What the agent asks for. Messages are already encoded for the DataChannel
/// ([`MeshMessageRaw::encode`]).
#[derive(Debug, PartialEq)]
pub enum Command {
    Send { target: String, message: Vec<u8> },
    Broadcast { message: Vec<u8> },
    ListPeers,
    Connect { target: String },
}

/// Why an IPC line is not a command (its text goes back to the agent as the `error`
/// event's reason, worded as the reference sidecar words it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpcError {
    NotUtf8,
    InvalidJson(String),
    MissingType,
    /// `payload.<field>` is missing or empty.
    MissingField(&'static str),
    InvalidMessage(String),
    UnknownCommand(String),
    /// The line nests deeper than [`JSON_DEPTH_MAX`] (checked before parsing).
    TooDeep(TooDeep),
}

impl std::fmt::Display for IpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IpcError::NotUtf8 => f.write_str("line is not UTF-8"),
            IpcError::InvalidJson(e) => write!(f, "invalid JSON: {e}"),
            IpcError::MissingType => f.write_str("missing \"type\""),
            IpcError::MissingField(k) => write!(f, "missing payload.{k}"),
            IpcError::InvalidMessage(e) => write!(f, "invalid payload.message: {e}"),
            IpcError::UnknownCommand(t) => write!(f, "unknown command type {t:?}"),
            IpcError::TooDeep(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for IpcError {}

/// An IPC line's envelope, borrowed (the fast path of [`parse_command`]).
#[derive(Deserialize)]
struct LineRaw<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
}

/// `payload` of `send` and `broadcast`, borrowed.
#[derive(Deserialize)]
struct PayloadRaw<'a> {
    #[serde(default, borrow)]
    target_peer: Option<Cow<'a, str>>,
    #[serde(borrow)]
    message: &'a RawValue,
}

/// The fast path for `send` and `broadcast` lines: no `Value` tree. `None` when the line
/// is anything else or malformed in any way; the caller then takes the general path,
/// which gives the same result as before for every other line and words the errors.
fn parse_message_command(text: &str) -> Option<Command> {
    let l: LineRaw<'_> = serde_json::from_str(text).ok()?;
    let send = match &*l.kind {
        "send" => true,
        "broadcast" => false,
        _ => return None,
    };
    let p: PayloadRaw<'_> = serde_json::from_str(l.payload?.get()).ok()?;
    let m: MeshMessageRaw<'_> = serde_json::from_str(p.message.get()).ok()?;
    // A payload that only the skipping validation accepts (wire::json::check_strict)
    // takes the general path, whose full parse words the error.
    if let Some(payload) = m.payload {
        check_strict(payload.get()).ok()?;
    }
    let message = m.encode();
    Some(if send {
        let target = p.target_peer.filter(|t| !t.is_empty())?.into_owned();
        Command::Send { target, message }
    } else {
        Command::Broadcast { message }
    })
}

/// Parses one line (without its newline). `Ok(None)` for a blank line.
pub fn parse_command(line: &[u8]) -> Result<Option<Command>, IpcError> {
    let text = std::str::from_utf8(line).map_err(|_| IpcError::NotUtf8)?;
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    // Before any parse: the fast path keeps `message.payload` as raw text, which serde
    // skips without a depth check, and sends it on to a peer whose agent parses it.
    check_depth(text.as_bytes(), JSON_DEPTH_MAX).map_err(IpcError::TooDeep)?;
    if let Some(c) = parse_message_command(text) {
        return Ok(Some(c));
    }
    let v: Value = serde_json::from_str(text).map_err(|e| IpcError::InvalidJson(e.to_string()))?;
    let kind = v
        .get("type")
        .and_then(Value::as_str)
        .ok_or(IpcError::MissingType)?;
    let payload = v.get("payload").cloned().unwrap_or(Value::Null);
    let message = |p: &Value| -> Result<Vec<u8>, IpcError> {
        let m = p.get("message").ok_or(IpcError::MissingField("message"))?;
        let m: MeshMessage = serde_json::from_value(m.clone())
            .map_err(|e| IpcError::InvalidMessage(e.to_string()))?;
        Ok(serde_json::to_vec(&m).expect("mesh messages serialize"))
    };
    let string = |p: &Value, k: &'static str| -> Result<String, IpcError> {
        p.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .ok_or(IpcError::MissingField(k))
    };
    Ok(Some(match kind {
        "send" => Command::Send {
            target: string(&payload, "target_peer")?,
            message: message(&payload)?,
        },
        "broadcast" => Command::Broadcast {
            message: message(&payload)?,
        },
        "list_peers" => Command::ListPeers,
        "connect" => Command::Connect {
            target: string(&payload, "target_peer_id")?,
        },
        other => return Err(IpcError::UnknownCommand(other.to_string())),
    }))
}

fn line(v: Value) -> Vec<u8> {
    let mut s = serde_json::to_vec(&v).expect("json values serialize");
    s.push(b'\n');
    s
}

pub fn event_message(from_peer: &str, message: &MeshMessage) -> Vec<u8> {
    line(json!({"type":"message","payload":{"from_peer":from_peer,"message":message}}))
}
/// The `message` event for a DataChannel message, spliced from its parts (no tree).
pub fn event_message_raw(from_peer: &str, message: &MeshMessageRaw<'_>) -> Vec<u8> {
    let mut s =
        Vec::with_capacity(64 + from_peer.len() + message.payload.map_or(0, |p| p.get().len()));
    s.extend_from_slice(br#"{"payload":{"from_peer":"#);
    serde_json::to_writer(&mut s, from_peer).expect("strings serialize");
    s.extend_from_slice(br#","message":"#);
    serde_json::to_writer(&mut s, message).expect("mesh messages serialize");
    s.extend_from_slice(br#"},"type":"message"}"#);
    s.push(b'\n');
    s
}
pub fn event_peer_connected(peer_id: &str) -> Vec<u8> {
    line(json!({"type":"peer_connected","payload":{"peer_id":peer_id}}))
}
pub fn event_peer_disconnected(peer_id: &str) -> Vec<u8> {
    line(json!({"type":"peer_disconnected","payload":{"peer_id":peer_id}}))
}
pub fn event_peer_list(peers: &[String]) -> Vec<u8> {
    line(json!({"type":"peer_list","payload":{"peers":peers}}))
}
pub fn event_error(reason: &str) -> Vec<u8> {
    line(json!({"type":"error","payload":{"reason":reason}}))
}

/// Splits a byte stream into lines of at most [`IPC_LINE_BYTES_MAX`].
#[derive(Default)]
pub struct LineFramer {
    buf: Vec<u8>,
    /// Discarding the rest of an over-long line.
    skipping: bool,
}

/// One framed item.
#[derive(Debug, PartialEq)]
pub enum Framed {
    Line(Vec<u8>),
    /// A line longer than the limit was dropped.
    TooLong,
}

impl LineFramer {
    pub fn push(&mut self, mut bytes: &[u8], out: &mut Vec<Framed>) {
        while !bytes.is_empty() {
            match memchr::memchr(b'\n', bytes) {
                Some(i) => {
                    if self.skipping {
                        self.skipping = false;
                    } else if self.buf.len() + i > IPC_LINE_BYTES_MAX {
                        self.buf.clear();
                        out.push(Framed::TooLong);
                    } else {
                        self.buf.extend_from_slice(&bytes[..i]);
                        out.push(Framed::Line(std::mem::take(&mut self.buf)));
                    }
                    bytes = &bytes[i + 1..];
                }
                None => {
                    if !self.skipping {
                        if self.buf.len() + bytes.len() > IPC_LINE_BYTES_MAX {
                            self.buf = Vec::new();
                            self.skipping = true;
                            out.push(Framed::TooLong);
                        } else {
                            self.buf.extend_from_slice(bytes);
                        }
                    }
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        let c = parse_command(
            br#"{"type":"send","payload":{"target_peer":"p","message":{"type":"ping"}}}"#,
        )
        .unwrap()
        .unwrap();
        let Command::Send { target, message } = c else {
            panic!()
        };
        assert_eq!(target, "p");
        let message: MeshMessage = serde_json::from_slice(&message).unwrap();
        assert_eq!(message.kind, "ping");
        assert_eq!(message.payload, Value::Null);
        assert_eq!(
            parse_command(br#"{"type":"list_peers","payload":{}}"#).unwrap(),
            Some(Command::ListPeers)
        );
        assert_eq!(
            parse_command(br#"{"type":"connect","payload":{"target_peer_id":"x"}}"#).unwrap(),
            Some(Command::Connect { target: "x".into() })
        );
        assert_eq!(parse_command(b"  ").unwrap(), None);
        assert!(parse_command(b"{nope")
            .unwrap_err()
            .to_string()
            .starts_with("invalid JSON"));
        assert_eq!(
            parse_command(br#"{"type":"zap"}"#).unwrap_err().to_string(),
            r#"unknown command type "zap""#
        );
        assert_eq!(
            parse_command(br#"{"type":"send","payload":{"message":{"type":"x"}}}"#),
            Err(IpcError::MissingField("target_peer"))
        );
        assert_eq!(
            IpcError::MissingType.to_string(),
            r#"missing "type""#,
            "the reference's wording"
        );
        assert!(parse_command(br#"{"type":"broadcast","payload":{"message":{}}}"#).is_err());
    }

    /// The fast path encodes exactly what the general path (a `Value` tree, then a
    /// [`MeshMessage`]) encodes, up to the payload's own formatting.
    #[test]
    fn fast_path_matches_general_path() {
        for line in [
            r#"{"type":"send","payload":{"target_peer":"p","message":{"type":"t","request_id":"r","source_agent":"s","target_agent":"a","payload":{"text":"hi \"q\" \u00e9","n":[1,2.5,null]}}}}"#,
            r#"{"payload":{"message":{"extra":1,"type":"t"},"target_peer":"p"},"type":"send"}"#,
            r#"{"type":"send","payload":{"target_peer":"p","message":{"type":"t","payload":null}}}"#,
            r#"{"type":"broadcast","payload":{"message":{"type":"t\n","payload":"x"}}}"#,
        ] {
            let fast = parse_message_command(line).expect("fast path");
            let v: Value = serde_json::from_str(line).unwrap();
            let m: MeshMessage = serde_json::from_value(v["payload"]["message"].clone()).unwrap();
            let (Command::Send { message, .. } | Command::Broadcast { message }) = fast else {
                panic!()
            };
            let got: MeshMessage = serde_json::from_slice(&message).unwrap();
            assert_eq!(got, m, "{line}");
        }
        // Everything else falls through to the general path, which words the error.
        for line in [
            r#"{"type":"send","payload":{"message":{"type":"x"}}}"#,
            r#"{"type":"send","payload":{"target_peer":"","message":{"type":"x"}}}"#,
            r#"{"type":"send","payload":{"target_peer":"p","message":{}}}"#,
            r#"{"type":"send","payload":{"target_peer":"p","message":{"type":1}}}"#,
            r#"{"type":"send","type":"send","payload":{"target_peer":"p","message":{"type":"x"}}}"#,
            r#"{"type":"list_peers"}"#,
        ] {
            assert!(parse_message_command(line).is_none(), "{line}");
        }
    }

    /// A message payload that serde_json's skipping validation passes and its full parse
    /// refuses (a lone surrogate escape, which Python's `json.dumps` writes for a `str`
    /// holding one; a number beyond f64) is refused both ways, worded by the full parse,
    /// never sent on or handed to the agent.
    #[test]
    fn payloads_a_full_parse_refuses_are_refused() {
        for payload in [r#""\ud83d""#, r#"{"x":"a\udc00"}"#, "[1e400]"] {
            let line = format!(
                r#"{{"type":"send","payload":{{"target_peer":"p","message":{{"type":"t","payload":{payload}}}}}}}"#
            );
            let err = parse_command(line.as_bytes()).unwrap_err();
            assert!(
                matches!(err, IpcError::InvalidJson(_)),
                "{payload}: {err:?}"
            );
            let channel = format!(r#"{{"type":"t","payload":{payload}}}"#);
            assert!(parse_channel_message(&channel).is_err(), "{payload}");
        }
        let ok = parse_channel_message(r#"{"type":"t","payload":["\ud83d\ude00",1e300]}"#);
        assert!(ok.is_ok());
    }

    /// Lines and DataChannel messages nest at most `JSON_DEPTH_MAX` levels: at the
    /// bound a `send` goes through (the receiver's `message` event is as deep), one
    /// level deeper or a whole line of `[` (1 MiB) is refused with the depth.
    #[test]
    fn nesting_is_bounded() {
        let nested = |n: usize| "[".repeat(n) + &"]".repeat(n);
        // line > payload > message > payload: 3 levels before the payload's own.
        let line = |x: &str| {
            format!(
                r#"{{"type":"send","payload":{{"target_peer":"p","message":{{"type":"t","payload":{x}}}}}}}"#
            )
        };
        let at = line(&nested(JSON_DEPTH_MAX - 3));
        let Some(Command::Send { message, .. }) = parse_command(at.as_bytes()).unwrap() else {
            panic!()
        };
        let m = parse_channel_message(std::str::from_utf8(&message).unwrap()).unwrap();
        let event = event_message_raw("peer", &m);
        assert_eq!(wire::json::nesting_depth(&event), JSON_DEPTH_MAX);
        let limit = JSON_DEPTH_MAX;
        for depth in [JSON_DEPTH_MAX + 1, 100_000] {
            for l in [
                line(&nested(depth - 3)),
                line(&"[".repeat(depth - 3)),
                format!(r#"{{"type":"list_peers","x":{}}}"#, nested(depth - 1)),
            ] {
                let err = parse_command(l.as_bytes()).unwrap_err();
                assert_eq!(err, IpcError::TooDeep(TooDeep { depth, limit }));
                assert_eq!(
                    err.to_string(),
                    format!("JSON nesting is {depth} levels deep; the limit is {limit}")
                );
            }
            let msg = format!(r#"{{"type":"t","payload":{}}}"#, nested(depth - 1));
            assert_eq!(
                parse_channel_message(&msg).unwrap_err(),
                TooDeep { depth, limit }.to_string()
            );
        }
        let whole = "[".repeat(IPC_LINE_BYTES_MAX);
        assert_eq!(
            parse_command(whole.as_bytes()),
            Err(IpcError::TooDeep(TooDeep {
                depth: IPC_LINE_BYTES_MAX,
                limit
            }))
        );
        let at = format!(r#"{{"type":"t","payload":{}}}"#, nested(JSON_DEPTH_MAX - 1));
        assert!(parse_channel_message(&at).is_ok());
        assert!(parse_channel_message("{}").is_err());
    }

    /// At the bound, the general path (a `Value` tree, then a `MeshMessage`) and a
    /// signaling frame (a `Value` payload) recurse at most `JSON_DEPTH_MAX` deep: it fits
    /// an eighth of the 2 MiB stack of the sidecar's shard thread, in a debug build.
    #[test]
    fn the_deepest_accepted_lines_fit_a_small_stack() {
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                let x = "[{\"a\":".repeat((JSON_DEPTH_MAX - 3) / 2) + "1" + &"}]".repeat((JSON_DEPTH_MAX - 3) / 2);
                // A duplicate `type` takes the general path.
                let line = format!(
                    r#"{{"type":"send","type":"send","payload":{{"target_peer":"p","message":{{"type":"t","payload":{x}}}}}}}"#
                );
                assert!(wire::json::nesting_depth(line.as_bytes()) >= JSON_DEPTH_MAX - 1);
                assert!(matches!(
                    parse_command(line.as_bytes()),
                    Ok(Some(Command::Send { .. }))
                ));
                let frame = format!(r#"{{"type":"offer","peer_id":"b","payload":{{"sdp":{x}}}}}"#);
                assert!(wire::ws::signaling::SignalMessage::parse(&frame).is_some());
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn framing() {
        let mut f = LineFramer::default();
        let mut out = Vec::new();
        f.push(b"ab\ncd", &mut out);
        f.push(b"e\n", &mut out);
        assert_eq!(
            out,
            vec![Framed::Line(b"ab".to_vec()), Framed::Line(b"cde".to_vec())]
        );
        out.clear();
        let big = vec![b'x'; IPC_LINE_BYTES_MAX + 10];
        f.push(&big, &mut out);
        f.push(b"yy\nok\n", &mut out);
        assert_eq!(out, vec![Framed::TooLong, Framed::Line(b"ok".to_vec())]);
    }

    #[test]
    fn events() {
        let l = event_error("bad");
        assert_eq!(
            l,
            b"{\"payload\":{\"reason\":\"bad\"},\"type\":\"error\"}\n".to_vec()
        );
        let m = MeshMessage {
            kind: "pong".into(),
            request_id: "r".into(),
            source_agent: String::new(),
            target_agent: String::new(),
            payload: json!({}),
        };
        let v: Value = serde_json::from_slice(&event_message("a", &m)).unwrap();
        assert_eq!(v["payload"]["message"]["type"], "pong");
        assert_eq!(v["payload"]["from_peer"], "a");
        // The spliced event is the same JSON as the tree-built one.
        let text = serde_json::to_string(&m).unwrap();
        let raw: MeshMessageRaw<'_> = serde_json::from_str(&text).unwrap();
        let spliced = event_message_raw("a\"b", &raw);
        assert_eq!(spliced.last(), Some(&b'\n'));
        let a: Value = serde_json::from_slice(&spliced).unwrap();
        let b: Value = serde_json::from_slice(&event_message("a\"b", &m)).unwrap();
        assert_eq!(a, b);
    }
}
