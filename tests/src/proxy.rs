//! A TCP proxy on loopback that can cut its connections the worst way for a
//! producer: requests still reach the server, their responses are dropped,
//! then the connection closes. The client cannot know which requests
//! landed, so it must retry them.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct Link {
    client: TcpStream,
    server: TcpStream,
    /// Set: bytes from the server are read and dropped.
    mute: Arc<AtomicBool>,
}

pub struct Proxy {
    pub port: u16,
    links: Arc<Mutex<Vec<Link>>>,
    stop: Arc<AtomicBool>,
    /// Connections cut so far.
    pub cuts: AtomicUsize,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target_port`.
    pub fn start(target_port: u16) -> Self {
        Self::start_on(0, target_port)
    }

    /// Listens on loopback `port` (0: any free one).
    pub fn start_on(port: u16, target_port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("proxy bind");
        let port = listener.local_addr().expect("proxy addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let links: Arc<Mutex<Vec<Link>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (l2, s2) = (links.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)) else {
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let mute = Arc::new(AtomicBool::new(false));
                pump(&client, &server, None);
                pump(&server, &client, Some(mute.clone()));
                l2.lock().expect("links").push(Link {
                    client,
                    server,
                    mute,
                });
            }
        });
        Proxy {
            port,
            links,
            stop,
            cuts: AtomicUsize::new(0),
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Drops every current connection's responses for `mute_for` (its
    /// requests still reach the server), then closes it.
    pub fn cut_all(&self, mute_for: Duration) {
        let links: Vec<Link> = std::mem::take(&mut *self.links.lock().expect("links"));
        for l in &links {
            l.mute.store(true, Ordering::SeqCst);
        }
        std::thread::sleep(mute_for);
        for l in &links {
            let _ = l.client.shutdown(Shutdown::Both);
            let _ = l.server.shutdown(Shutdown::Both);
        }
        self.cuts.fetch_add(links.len(), Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for l in self.links.lock().expect("links").drain(..) {
            let _ = l.client.shutdown(Shutdown::Both);
            let _ = l.server.shutdown(Shutdown::Both);
        }
    }
}

/// Copies `from` to `to` on a thread until either side closes; with `mute`
/// set, what is read is dropped instead.
fn pump(from: &TcpStream, to: &TcpStream, mute: Option<Arc<AtomicBool>>) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if mute.as_ref().is_some_and(|m| m.load(Ordering::SeqCst)) {
                continue;
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
