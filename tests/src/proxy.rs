//! A TCP proxy on loopback that can cut its connections the worst ways for
//! a producer:
//! - [`Proxy::cut_all`]: requests still reach the server, their responses
//!   are dropped for a while, then the connection closes. The client cannot
//!   know which requests landed, so it must retry them.
//! - [`Proxy::cut_after_produce_answer`]: each connection's next Produce
//!   answer is withheld (so that request certainly landed) and the
//!   connection closes: the client's retry is certainly a duplicate.
//!
//! The pumps read Kafka frames (a 4-byte size, then the body), so that
//! responses can be told apart by correlation id.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct Link {
    client: TcpStream,
    server: TcpStream,
    state: Arc<LinkState>,
}

struct LinkState {
    /// Set: frames from the server are read and dropped.
    mute: AtomicBool,
    /// Set: the next Produce answer is dropped and the link closed.
    cut_after_produce: AtomicBool,
    /// Correlation ids of Produce requests whose answers are due.
    produces: Mutex<HashSet<i32>>,
    /// Produce answers withheld, by every link of the proxy.
    withheld: Arc<AtomicUsize>,
}

pub struct Proxy {
    pub port: u16,
    links: Arc<Mutex<Vec<Link>>>,
    stop: Arc<AtomicBool>,
    /// Connections cut so far.
    pub cuts: AtomicUsize,
    /// Produce answers withheld by [`Proxy::cut_after_produce_answer`].
    withheld: Arc<AtomicUsize>,
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
        let withheld: Arc<AtomicUsize> = Arc::default();
        let (l2, s2, w2) = (links.clone(), stop.clone(), withheld.clone());
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
                let state = Arc::new(LinkState {
                    mute: AtomicBool::new(false),
                    cut_after_produce: AtomicBool::new(false),
                    produces: Mutex::default(),
                    withheld: w2.clone(),
                });
                pump(&client, &server, Direction::Requests, state.clone());
                pump(&server, &client, Direction::Answers, state.clone());
                l2.lock().expect("links").push(Link {
                    client,
                    server,
                    state,
                });
            }
        });
        Proxy {
            port,
            links,
            stop,
            cuts: AtomicUsize::new(0),
            withheld,
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
            l.state.mute.store(true, Ordering::SeqCst);
        }
        std::thread::sleep(mute_for);
        for l in &links {
            let _ = l.client.shutdown(Shutdown::Both);
            let _ = l.server.shutdown(Shutdown::Both);
        }
        self.cuts.fetch_add(links.len(), Ordering::Relaxed);
    }

    /// Arms every current connection: its next Produce answer is dropped
    /// and the connection closed. A connection that answers no Produce
    /// stays armed until it closes.
    pub fn cut_after_produce_answer(&self) {
        let links: Vec<Link> = std::mem::take(&mut *self.links.lock().expect("links"));
        for l in &links {
            l.state.cut_after_produce.store(true, Ordering::SeqCst);
        }
        // The pump closes each link; its streams are dropped here.
        self.cuts.fetch_add(links.len(), Ordering::Relaxed);
    }

    /// Produce answers withheld by [`Proxy::cut_after_produce_answer`].
    pub fn withheld(&self) -> usize {
        self.withheld.load(Ordering::Relaxed)
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

#[derive(Clone, Copy, PartialEq)]
enum Direction {
    Requests,
    Answers,
}

/// Copies `from` to `to` frame by frame on a thread until either side
/// closes. Requests: notes the correlation ids of Produce requests.
/// Answers: dropped while muted; with `cut_after_produce` set, the first
/// Produce answer is dropped and both sides closed.
fn pump(from: &TcpStream, to: &TcpStream, dir: Direction, state: Arc<LinkState>) {
    let (Ok(mut from), Ok(mut to), Ok(other)) =
        (from.try_clone(), to.try_clone(), from.try_clone())
    else {
        return;
    };
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        let mut pending: Vec<u8> = Vec::new();
        'read: loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            while pending.len() >= 4 {
                let size =
                    i32::from_be_bytes(pending[..4].try_into().expect("4 bytes")).max(0) as usize;
                if pending.len() < 4 + size {
                    break;
                }
                let frame: Vec<u8> = pending.drain(..4 + size).collect();
                if dir == Direction::Requests && frame.len() >= 12 {
                    let api_key = i16::from_be_bytes([frame[4], frame[5]]);
                    if api_key == 0 {
                        let id = i32::from_be_bytes(frame[8..12].try_into().expect("4 bytes"));
                        state.produces.lock().expect("produces").insert(id);
                    }
                }
                if dir == Direction::Answers {
                    if state.mute.load(Ordering::SeqCst) {
                        continue;
                    }
                    let id = (frame.len() >= 8)
                        .then(|| i32::from_be_bytes(frame[4..8].try_into().expect("4 bytes")));
                    let produce =
                        id.is_some_and(|id| state.produces.lock().expect("produces").remove(&id));
                    if produce && state.cut_after_produce.load(Ordering::SeqCst) {
                        state.withheld.fetch_add(1, Ordering::Relaxed);
                        let _ = other.shutdown(Shutdown::Both);
                        let _ = to.shutdown(Shutdown::Both);
                        return;
                    }
                }
                if to.write_all(&frame).is_err() {
                    break 'read;
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
