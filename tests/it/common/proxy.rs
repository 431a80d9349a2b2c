//! A TCP proxy on loopback between a node and its Redis, for faults a real connection
//! meets: replies that never come back (a write that ran, its answer lost), replies
//! held back (a stalled path), and every connection cut at once. One thread per
//! direction per connection.
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What happens to Redis's replies once a command holding the armed pattern passed.
#[derive(Clone, Copy)]
enum Mode {
    /// Read and dropped.
    Swallow,
    /// Kept back (the reading thread waits) until [`Proxy::release`].
    Hold,
    /// The command itself (and what follows it on its connection) reaches Redis only
    /// this long after it was sent, even if the node has hung up meanwhile.
    Delay(Duration),
}

#[derive(Default)]
struct Faults {
    swallow: AtomicBool,
    hold: AtomicBool,
    armed: Mutex<Option<(Vec<u8>, Mode)>>,
}

pub struct Proxy {
    pub port: u16,
    faults: Arc<Faults>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (port 0) and forwards each connection to `upstream`.
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let port = listener.local_addr().expect("proxy addr").port();
        let faults: Arc<Faults> = Arc::default();
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (f, o) = (faults.clone(), open.clone());
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
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                pump(c2, s2, f.clone(), true);
                pump(server, client, f.clone(), false);
            }
        });
        Proxy { port, faults, open }
    }

    /// While on, what Redis sends is read and dropped (commands still reach it).
    pub fn swallow_replies(&self, on: bool) {
        self.faults.swallow.store(on, Ordering::SeqCst);
    }

    /// Swallows Redis's replies from the moment a command holding `pattern` passes (it
    /// reaches Redis; its reply and all after it do not come back).
    pub fn swallow_after(&self, pattern: &[u8]) {
        *self.faults.armed.lock().unwrap() = Some((pattern.to_vec(), Mode::Swallow));
    }

    /// Holds Redis's replies back from the moment a command holding `pattern` passes,
    /// until [`Proxy::release`].
    pub fn hold_after(&self, pattern: &[u8]) {
        *self.faults.armed.lock().unwrap() = Some((pattern.to_vec(), Mode::Hold));
    }

    /// Delays the command holding `pattern` (and what follows on its connection) on
    /// its way to Redis by `by`; other connections are not delayed.
    pub fn delay_after(&self, pattern: &[u8], by: Duration) {
        *self.faults.armed.lock().unwrap() = Some((pattern.to_vec(), Mode::Delay(by)));
    }

    /// Lets the held replies go, in order.
    pub fn release(&self) {
        self.faults.hold.store(false, Ordering::SeqCst);
    }

    /// Cuts every connection made so far, both ends.
    pub fn cut_all(&self) {
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// Copies `from` to `to` until either ends. Towards Redis (`upstream`) it fires the
/// armed fault when a chunk holds its pattern (before the chunk is forwarded); from
/// Redis it drops or holds back what it reads while those faults are on.
fn pump(mut from: TcpStream, mut to: TcpStream, f: Arc<Faults>, upstream: bool) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 << 10];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if upstream {
                let mut armed = f.armed.lock().unwrap();
                let hit = armed
                    .as_ref()
                    .is_some_and(|(p, _)| buf[..n].windows(p.len()).any(|w| w == p.as_slice()));
                if hit {
                    match armed.take().map(|(_, m)| m) {
                        Some(Mode::Swallow) => f.swallow.store(true, Ordering::SeqCst),
                        Some(Mode::Hold) => f.hold.store(true, Ordering::SeqCst),
                        Some(Mode::Delay(by)) => {
                            drop(armed);
                            std::thread::sleep(by);
                        }
                        None => {}
                    }
                }
            } else {
                while f.hold.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if f.swallow.load(Ordering::SeqCst) {
                    continue;
                }
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}
