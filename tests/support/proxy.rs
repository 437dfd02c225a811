//! A TCP proxy in front of the test server whose connections can be frozen: they stay open,
//! but nothing more passes either way, as through a proxy that hangs or a flow a NAT dropped
//! without a word. Connections opened after a freeze pass as usual. It can also announce a
//! server process id of its own at login, as a pooler does.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Proxy {
    pub port: u16,
    /// One flag per connection so far: set, that connection is frozen.
    frozen: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Forwards connections on a free local port to `target` (a port on 127.0.0.1).
    pub fn start(target: u16) -> Proxy {
        Proxy::announcing(target, None)
    }

    /// As [`start`](Self::start), and with `pid` in place of the server process id the server
    /// announces at login (its BackendKeyData; plaintext connections only).
    pub fn announcing(target: u16, pid: Option<i32>) -> Proxy {
        Proxy::open(target, pid, false)
    }

    /// As [`announcing`](Self::announcing), and the first connection freezes as soon as the
    /// login's last answer (its first ReadyForQuery) has passed: the client's first query
    /// never arrives. Later connections pass as usual.
    pub fn freezing_after_login(target: u16, pid: Option<i32>) -> Proxy {
        Proxy::open(target, pid, true)
    }

    fn open(target: u16, pid: Option<i32>, freeze_first: bool) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let frozen: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (flags, stopping) = (Arc::clone(&frozen), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                let client = match listener.accept() {
                    Ok((client, _)) => client,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    Err(_) => return,
                };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let flag = Arc::new(AtomicBool::new(false));
                let first = {
                    let mut flags = flags.lock().unwrap();
                    flags.push(Arc::clone(&flag));
                    flags.len() == 1
                };
                for (from, to, announce, login) in [
                    (
                        client.try_clone().unwrap(),
                        server.try_clone().unwrap(),
                        None,
                        false,
                    ),
                    (server, client, pid, freeze_first && first),
                ] {
                    let (flag, stopping) = (Arc::clone(&flag), Arc::clone(&stopping));
                    let rules = Rules { announce, login };
                    std::thread::spawn(move || pass(from, to, &flag, &stopping, rules));
                }
            }
        });
        Proxy { port, frozen, stop }
    }

    /// Freezes every connection open now.
    pub fn freeze(&self) {
        for flag in self.frozen.lock().unwrap().iter() {
            flag.store(true, Ordering::Relaxed);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What one direction of a connection does besides passing bytes on.
struct Rules {
    /// The first BackendKeyData that passes names this pid instead.
    announce: Option<i32>,
    /// The connection freezes once the first ReadyForQuery has passed.
    login: bool,
}

/// Copies `from` to `to` until either closes; frozen, it stops reading (what was read and not
/// yet passed on is held back too) until the proxy stops. The login's answer arrives in one
/// read on the loopback, which is what `rules` look at.
fn pass(
    mut from: TcpStream,
    mut to: TcpStream,
    frozen: &AtomicBool,
    stop: &AtomicBool,
    Rules {
        mut announce,
        mut login,
    }: Rules,
) {
    from.set_read_timeout(Some(Duration::from_millis(20)))
        .expect("read timeout");
    let mut buffer = [0u8; 16 * 1024];
    while !stop.load(Ordering::Relaxed) {
        if frozen.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        match from.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                if frozen.load(Ordering::Relaxed) {
                    // Frozen while reading: this chunk never arrives.
                    continue;
                }
                let key = [b'K', 0, 0, 0, 12];
                if let Some(pid) = announce
                    && let Some(at) = buffer[..n].windows(5).position(|w| w == key)
                    && at + 9 <= n
                {
                    buffer[at + 5..at + 9].copy_from_slice(&pid.to_be_bytes());
                    announce = None;
                }
                let ready = [b'Z', 0, 0, 0, 5];
                if login && buffer[..n].windows(5).any(|w| w == ready) {
                    // Frozen before the client can answer: its next message is dropped.
                    frozen.store(true, Ordering::Relaxed);
                    login = false;
                }
                if to.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
