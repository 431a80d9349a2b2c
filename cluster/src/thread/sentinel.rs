//! Following the primary in Sentinel mode (`redis+sentinel://`): asking the Sentinels
//! for its address before each connect, checking its `ROLE`, and a watch on one
//! Sentinel's `+switch-master` so that a failover is followed at once rather than at the
//! next backoff step. Part of the link thread's loop ([`Link`]).

use super::*;

impl Link {
    /// Asks the Sentinels in order for the primary's address (`SENTINEL
    /// get-master-addr-by-name`), each with a blocking connect bounded by
    /// `connect_timeout` and a reply bounded by `command_timeout`; the one that answers
    /// is asked first next time. Opens the `+switch-master` watch on it if none is open.
    pub(super) fn find_primary(&mut self) -> Result<(String, u16), String> {
        let Some(sentinels) = self.cfg.url.sentinels().cloned() else {
            return Err("not in sentinel mode".into());
        };
        if self.sentinel_order.is_empty() {
            self.sentinel_order.clone_from(&sentinels.addrs);
        }
        let auth: Vec<Vec<Vec<u8>>> = sentinels
            .password
            .iter()
            .map(|p| vec![b"AUTH".to_vec(), p.clone().into_bytes()])
            .collect();
        let master = &sentinels.master;
        let mut errors = Vec::new();
        for i in 0..self.sentinel_order.len() {
            let (host, port) = self.sentinel_order[i].clone();
            let mut setup = auth.clone();
            setup.push(args(&["SENTINEL", "get-master-addr-by-name", master]));
            let answer = open(
                &host,
                port,
                self.cfg.connect_timeout,
                self.cfg.command_timeout,
                &setup,
            )
            .and_then(|(_conn, replies)| {
                check_setup(&setup, &replies, "sentinel")?;
                parse_master_addr(&replies[replies.len() - 1], master)
            });
            match answer {
                Ok(addr) => {
                    if i > 0 {
                        let s = self.sentinel_order.remove(i);
                        self.sentinel_order.insert(0, s);
                    }
                    if self.watch.is_none() {
                        self.open_watch(&host, port, &auth);
                    }
                    return Ok(addr);
                }
                Err(e) => errors.push(format!("sentinel {host}:{port}: {e}")),
            }
        }
        Err(format!(
            "no Sentinel named the primary {master:?}: {}",
            errors.join("; ")
        ))
    }

    /// Subscribes to `+switch-master` on the Sentinel `host:port` (best effort: without
    /// it a failover is followed at the next reconnect attempt).
    pub(super) fn open_watch(&mut self, host: &str, port: u16, auth: &[Vec<Vec<u8>>]) {
        let mut setup = auth.to_vec();
        setup.push(args(&["SUBSCRIBE", "+switch-master"]));
        let opened = open(
            host,
            port,
            self.cfg.connect_timeout,
            self.cfg.command_timeout,
            &setup,
        )
        .and_then(|(mut conn, replies)| {
            check_setup(&setup, &replies, "sentinel watch")?;
            self.poll
                .registry()
                .register(&mut conn.stream, WATCH, Interest::READABLE)
                .map_err(|e| format!("cannot poll it: {e}"))?;
            Ok(conn)
        });
        match opened {
            Ok(conn) => self.watch = Some(conn),
            Err(e) => tracing::warn!("cluster: cannot watch +switch-master on {host}:{port}: {e}"),
        }
    }

    /// A Sentinel said something: a `+switch-master` of our primary to another address
    /// reconnects at once (to the new primary), whatever the backoff.
    pub(super) fn read_watch(&mut self) {
        let Some(mut watch) = self.watch.take() else {
            return;
        };
        let master = self
            .cfg
            .url
            .sentinels()
            .map(|s| s.master.clone())
            .unwrap_or_default();
        let mut switched = None;
        let mut collect = |v: Value| -> Result<(), String> {
            if let Some(addr) = parse_switch_master(&v, &master) {
                switched = Some(addr);
            }
            Ok(())
        };
        let mut r = watch.decode(&mut collect);
        if r.is_ok() {
            r = watch.read(&mut collect);
        }
        match r {
            Ok(()) => self.watch = Some(watch),
            Err(e) => {
                tracing::warn!("cluster: the +switch-master watch failed: {e}");
                let _ = self.poll.registry().deregister(&mut watch.stream);
            }
        }
        let Some((host, port)) = switched else { return };
        if self.up.is_some() && self.primary.as_ref() == Some(&(host.clone(), port)) {
            return;
        }
        tracing::info!("cluster: the Sentinels switched {master:?} to {host}:{port}");
        if self.up.is_some() {
            self.fail(format!(
                "the Sentinels switched the primary {master:?} to {host}:{port}"
            ));
        }
        if self.leaving.is_none() {
            self.backoff.reset();
            self.retry_at = Instant::now();
        }
    }
}

/// `ROLE` must answer `master`.
pub(super) fn check_role(v: &Value, host: &str, port: u16) -> Result<(), String> {
    let role = match v {
        Value::Array(a) => a.first().and_then(Value::as_bytes),
        _ => None,
    };
    match role {
        Some(b"master") => Ok(()),
        Some(r) => Err(format!(
            "{host}:{port} is a {} (ROLE), not the primary: a failover under way?",
            String::from_utf8_lossy(r)
        )),
        None => Err(format!("{host}:{port}: ROLE answered {v:?}")),
    }
}

/// The reply to `SENTINEL get-master-addr-by-name`: `[host, port]`.
fn parse_master_addr(v: &Value, master: &str) -> Result<(String, u16), String> {
    match v {
        Value::Array(a) if a.len() == 2 => {
            let host = a[0]
                .as_bytes()
                .map(|b| String::from_utf8_lossy(b).into_owned());
            let port = a[1]
                .as_bytes()
                .and_then(|b| std::str::from_utf8(b).ok())
                .and_then(|p| p.parse::<u16>().ok());
            match (host, port) {
                (Some(h), Some(p)) if !h.is_empty() && p != 0 => Ok((h, p)),
                _ => Err(format!("an address that is not HOST PORT: {v:?}")),
            }
        }
        Value::Nil => Err(format!("it monitors no master named {master:?}")),
        Value::Error(e) => Err(format!("refused: {e}")),
        other => Err(format!("unexpected reply {other:?}")),
    }
}

/// A `+switch-master` message for `master`: the new primary's address.
/// (`["message", "+switch-master", "NAME OLDIP OLDPORT NEWIP NEWPORT"]`.)
fn parse_switch_master(v: &Value, master: &str) -> Option<(String, u16)> {
    let Value::Array(a) = v else { return None };
    if a.len() != 3
        || a[0].as_bytes() != Some(b"message".as_slice())
        || a[1].as_bytes() != Some(b"+switch-master".as_slice())
    {
        return None;
    }
    let text = std::str::from_utf8(a[2].as_bytes()?).ok()?;
    let f: Vec<&str> = text.split_whitespace().collect();
    match f.as_slice() {
        [name, _, _, host, port] if *name == master => Some((host.to_string(), port.parse().ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::Bulk(s.as_bytes().to_vec())
    }

    #[test]
    fn sentinel_replies_parse() {
        let v = Value::Array(vec![bulk("10.0.0.2"), bulk("6380")]);
        assert_eq!(parse_master_addr(&v, "m"), Ok(("10.0.0.2".into(), 6380)));
        assert!(parse_master_addr(&Value::Nil, "m")
            .unwrap_err()
            .contains("no master named \"m\""));
        let v = Value::Array(vec![bulk("h"), bulk("x")]);
        assert!(parse_master_addr(&v, "m").is_err());
        let msg = |t: &str| Value::Array(vec![bulk("message"), bulk("+switch-master"), bulk(t)]);
        assert_eq!(
            parse_switch_master(&msg("m 127.0.0.1 1 127.0.0.1 2"), "m"),
            Some(("127.0.0.1".into(), 2))
        );
        assert_eq!(parse_switch_master(&msg("other 1 1 2 2"), "m"), None);
        assert_eq!(parse_switch_master(&msg("m 1 1"), "m"), None);
        let sub = Value::Array(vec![
            bulk("subscribe"),
            bulk("+switch-master"),
            Value::Int(1),
        ]);
        assert_eq!(parse_switch_master(&sub, "m"), None);
        let master = Value::Array(vec![bulk("master"), Value::Int(0), Value::Array(vec![])]);
        assert!(check_role(&master, "h", 1).is_ok());
        let replica = Value::Array(vec![bulk("slave"), bulk("h"), Value::Int(2)]);
        assert!(check_role(&replica, "h", 1)
            .unwrap_err()
            .contains("is a slave"));
    }
}
