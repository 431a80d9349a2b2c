//! A TCP proxy on loopback between a node and its Redis, for faults a real connection
//! meets: replies that never come back (a write that ran, its answer lost), and every
//! connection cut at once. One thread per direction per connection.
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub struct Proxy {
    pub port: u16,
    swallow: Arc<AtomicBool>,
    armed: Arc<Mutex<Option<Vec<u8>>>>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (port 0) and forwards each connection to `upstream`.
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let port = listener.local_addr().expect("proxy addr").port();
        let swallow = Arc::new(AtomicBool::new(false));
        let armed: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (s, a, o) = (swallow.clone(), armed.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                {
                    let mut open = o.lock().unwrap();
                    open.extend(client.try_clone());
                    open.extend(server.try_clone());
                }
                let up = Trigger {
                    armed: a.clone(),
                    swallow: s.clone(),
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                pump(c2, s2, None, Some(up));
                pump(server, client, Some(s.clone()), None);
            }
        });
        Proxy {
            port,
            swallow,
            armed,
            open,
        }
    }

    /// While on, what Redis sends is read and dropped (commands still reach it).
    pub fn swallow_replies(&self, on: bool) {
        self.swallow.store(on, Ordering::SeqCst);
    }

    /// Swallows Redis's replies from the moment a command holding `pattern` passes (it
    /// reaches Redis; its reply and all after it do not come back).
    pub fn swallow_after(&self, pattern: &[u8]) {
        *self.armed.lock().unwrap() = Some(pattern.to_vec());
    }

    /// Cuts every connection made so far, both ends.
    pub fn cut_all(&self) {
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// Turns `swallow` on when bytes holding the armed pattern pass (before they are
/// forwarded), once.
struct Trigger {
    armed: Arc<Mutex<Option<Vec<u8>>>>,
    swallow: Arc<AtomicBool>,
}

/// Copies `from` to `to` until either ends; drops the bytes while `drop` is set.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    drop: Option<Arc<AtomicBool>>,
    trigger: Option<Trigger>,
) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 << 10];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Some(t) = &trigger {
                let mut armed = t.armed.lock().unwrap();
                let hit = armed
                    .as_ref()
                    .is_some_and(|p| buf[..n].windows(p.len()).any(|w| w == p.as_slice()));
                if hit {
                    *armed = None;
                    t.swallow.store(true, Ordering::SeqCst);
                }
            }
            if drop.as_ref().is_some_and(|d| d.load(Ordering::SeqCst)) {
                continue;
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}
