//! The agent's IPC protocol (PROTOCOL.md §8): JSON objects, one per line, over a Unix
//! socket. Sans-IO: [`LineFramer`] splits bytes into lines, [`parse_command`] turns a
//! line into a [`Command`] or an error reason, and the `event_*` functions build the
//! lines we send.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

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

/// What the agent asks for.
#[derive(Debug, PartialEq)]
pub enum Command {
    Send {
        target: String,
        message: MeshMessage,
    },
    Broadcast {
        message: MeshMessage,
    },
    ListPeers,
    Connect {
        target: String,
    },
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
        }
    }
}

impl std::error::Error for IpcError {}

/// Parses one line (without its newline). `Ok(None)` for a blank line.
pub fn parse_command(line: &[u8]) -> Result<Option<Command>, IpcError> {
    let text = std::str::from_utf8(line).map_err(|_| IpcError::NotUtf8)?;
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let v: Value = serde_json::from_str(text).map_err(|e| IpcError::InvalidJson(e.to_string()))?;
    let kind = v
        .get("type")
        .and_then(Value::as_str)
        .ok_or(IpcError::MissingType)?;
    let payload = v.get("payload").cloned().unwrap_or(Value::Null);
    let message = |p: &Value| -> Result<MeshMessage, IpcError> {
        let m = p.get("message").ok_or(IpcError::MissingField("message"))?;
        serde_json::from_value(m.clone()).map_err(|e| IpcError::InvalidMessage(e.to_string()))
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
    }
}
