//! The Kafka listener.
//!
//! One task reads frames and decodes them (and appends a produce's batches,
//! so they land in the order sent); each request becomes a future that runs
//! concurrently with the others of its connection (bounded by
//! [`MAX_PIPELINED`], [`MAX_PIPELINED_OTHERS`] and [`MAX_PIPELINED_BYTES`],
//! and, across a logged-in tenant's connections, by
//! `tenant_max_pipelined_bytes`),
//! and the connection task writes responses strictly in request order, as
//! Kafka clients require.
//!
//! Bad input follows Kafka's broker: a length prefix beyond
//! `max_request_bytes`, a truncated or undecodable frame, an unknown API key
//! or an unsupported version closes the connection; the exception is an
//! ApiVersions request newer than we know, which gets a v0 body with
//! UNSUPPORTED_VERSION and the supported list.
//!
//! A connection stops being read (and closes once its answers are written)
//! when it has been idle for `connections_max_idle` (nothing read, written
//! or in progress; a frame half read is not in progress, its bytes as they
//! come are reads), or when it must log in and has not within
//! `login_timeout`. One whose answers the socket takes none of for
//! `connections_max_idle` (a client that stopped reading) closes at once.

mod acls;
mod admin;
mod fetch;
mod groups;
mod metadata;
mod produce;
mod producers;
mod sasl;
pub mod slots;
mod transactions;
mod versions;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use std::io::IoSlice;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use floe_worker::quota::{Admission, Kind, Usage};
use floe_worker::{Shards, WorkerError};
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{decode_request_header_from_buffer, Encodable};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use crate::authz::Guarded;
use crate::{AuthMode, Cx, Gateway};

pub use versions::SUPPORTED;

/// Requests one connection may have read and not yet answered; further
/// reads wait. A client that sends each partition its own request
/// (librdkafka) has rate × store latency of them in progress: 64 partitions
/// at 2,000 records/s on S3 is about 100 (BENCHMARKS.md, session 18).
const MAX_PIPELINED: usize = 1024;

/// Of those, requests other than Produce: their responses are the large
/// ones (a fetch's, up to `--fetch-max-bytes`), held until written.
const MAX_PIPELINED_OTHERS: usize = 64;

/// Bytes of request frames one connection may have read and not yet
/// answered; a frame larger than this waits until it is the only one.
const MAX_PIPELINED_BYTES: usize = 64 << 20;

/// A deadline that does not come (about 34 years).
const NEVER: std::time::Duration = std::time::Duration::from_secs(1 << 30);

/// Bytes a connection's reader takes from the socket at once.
const READ_BUFFER: usize = 16 << 10;

/// What a request holds of its connection's bounds until its response is
/// written.
struct Room {
    _bytes: OwnedSemaphorePermit,
    _tenant_bytes: Option<OwnedSemaphorePermit>,
    /// The login's place among its tenant's connections: a connection
    /// whose reader ended still counts until its last answer is written.
    _slot: Option<Arc<slots::Slot>>,
    _other: Option<OwnedSemaphorePermit>,
    _written: Written,
}

/// Counts a request as in progress from when its frame is read until its
/// response is written (dropped), and marks the connection active then.
struct Written(Arc<Conn>);

impl Written {
    fn new(conn: &Arc<Conn>) -> Self {
        conn.in_progress.fetch_add(1, Relaxed);
        Self(conn.clone())
    }
}

impl Drop for Written {
    fn drop(&mut self) {
        self.0.in_progress.fetch_sub(1, Relaxed);
        self.0.touch();
    }
}

/// A response to write, as chunks (`Some`), none (acks=0), or `Err`: close the
/// connection.
type Pending = Pin<Box<dyn Future<Output = Result<Option<Vec<Bytes>>, ()>> + Send>>;

/// Chunks one `writev` takes at most (Linux allows 1024).
const MAX_IOV: usize = 256;

/// Accepts connections until `stop`, then waits for open ones to drain.
pub async fn serve<W: Shards>(
    gw: Arc<Gateway<W>>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    let max = gw.settings.max_connections;
    let slots = Arc::new(Semaphore::new(max));
    while let Some((socket, permit)) = crate::accept(&listener, &slots, &mut stop, "kafka").await {
        let _ = socket.set_nodelay(true);
        let (gw, stop) = (gw.clone(), stop.clone());
        tokio::spawn(async move {
            gw.metrics.connections_opened.fetch_add(1, Relaxed);
            connection(gw.clone(), socket, stop).await;
            gw.metrics.connections_closed.fetch_add(1, Relaxed);
            drop(permit);
        });
    }
    drop(listener);
    // Every connection returns its slot when its last response is written.
    let _ = slots.acquire_many(max as u32).await;
}

/// A TLS handshake that takes longer than this closes the connection.
pub const TLS_HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(10);

async fn connection<W: Shards>(
    gw: Arc<Gateway<W>>,
    socket: TcpStream,
    stop: watch::Receiver<bool>,
) {
    let peer = socket.peer_addr().ok();
    match gw.tls.clone() {
        None => {
            let (rd, wr) = socket.into_split();
            serve_connection(gw, rd, wr, stop).await;
        }
        Some(tls) => match tokio::time::timeout(TLS_HANDSHAKE, tls.accept(socket)).await {
            Ok(Ok(stream)) => {
                let (rd, wr) = tokio::io::split(stream);
                serve_connection(gw, rd, wr, stop).await;
            }
            Ok(Err(e)) => tracing::info!(?peer, error = %e, "tls handshake failed"),
            Err(_) => tracing::info!(?peer, "tls handshake timed out"),
        },
    }
    tracing::debug!(?peer, "kafka connection closed");
}

async fn serve_connection<W: Shards, R, Wr>(
    gw: Arc<Gateway<W>>,
    rd: R,
    mut wr: Wr,
    stop: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    Wr: AsyncWrite + Unpin,
{
    // Small: what waits here already holds its room.
    let (tx, mut rx) = mpsc::channel::<(Pending, Room)>(8);
    let reader = tokio::spawn(read_requests(gw.clone(), rd, tx, stop));
    let mut pending: FuturesOrdered<Pending> = FuturesOrdered::new();
    // Each pending request's room, in the same order.
    let mut rooms: std::collections::VecDeque<Room> = Default::default();
    let mut reading = true;
    // A client that stops reading its answers is idle too (Kafka's
    // connections.max.idle.ms counts only reads and writes that happen).
    let stalled = Some(gw.settings.connections_max_idle).filter(|d| !d.is_zero());
    loop {
        tokio::select! {
            biased;
            Some(resp) = pending.next(), if !pending.is_empty() => {
                match write_ready(&mut wr, resp, &mut pending, stalled).await {
                    Ok(written) => drop(rooms.drain(..written)),
                    Err(e) => {
                        tracing::info!(error = %e, "closing kafka connection");
                        break;
                    }
                }
            }
            next = rx.recv(), if reading && pending.len() < MAX_PIPELINED => match next {
                Some((p, room)) => {
                    pending.push_back(p);
                    rooms.push_back(room);
                }
                None => reading = false,
            },
            else => break,
        }
    }
    reader.abort();
}

/// Writes `first` and every response already complete behind it, in vectored
/// writes: record batches go from the read cache to the socket uncopied.
/// Returns how many responses that was; fails if the socket takes nothing
/// for `stalled`.
async fn write_ready(
    wr: &mut (impl AsyncWrite + Unpin),
    first: Result<Option<Vec<Bytes>>, ()>,
    pending: &mut FuturesOrdered<Pending>,
    stalled: Option<std::time::Duration>,
) -> std::io::Result<usize> {
    let closed = || std::io::Error::other("response failed to encode");
    let mut chunks = first.map_err(|_| closed())?.unwrap_or_default();
    let mut written = 1;
    while let Some(Some(next)) = pending.next().now_or_never() {
        chunks.extend(next.map_err(|_| closed())?.unwrap_or_default());
        written += 1;
    }
    write_chunks(wr, chunks, stalled).await?;
    Ok(written)
}

async fn write_chunks(
    wr: &mut (impl AsyncWrite + Unpin),
    mut chunks: Vec<Bytes>,
    stalled: Option<std::time::Duration>,
) -> std::io::Result<()> {
    chunks.retain(|c| !c.is_empty());
    let mut at = 0;
    while at < chunks.len() {
        let iov: Vec<IoSlice> = chunks[at..]
            .iter()
            .take(MAX_IOV)
            .map(|c| IoSlice::new(c))
            .collect();
        let mut n = within(stalled, wr.write_vectored(&iov)).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        // Drop what was written: whole chunks, then part of the next.
        while n > 0 {
            let c = &mut chunks[at];
            let k = n.min(c.len());
            c.advance(k);
            n -= k;
            if c.is_empty() {
                at += 1;
            }
        }
    }
    // TLS takes bytes before they reach the socket: unflushed, the tail of
    // an answer would wait for the next one.
    within(stalled, wr.flush()).await
}

/// `io`, failed if it makes no progress for `stalled`.
async fn within<T>(
    stalled: Option<std::time::Duration>,
    io: impl Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    let Some(d) = stalled else {
        return io.await;
    };
    tokio::time::timeout(d, io).await.map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "answers unread past --connections-max-idle-ms",
        )
    })?
}

/// How often an idle connection's time is charged to its tenant, so it
/// lands in the window it was spent in.
const CONNECTION_TICK: std::time::Duration = std::time::Duration::from_secs(30);

async fn read_requests<W: Shards>(
    gw: Arc<Gateway<W>>,
    rd: impl AsyncRead + Unpin,
    tx: mpsc::Sender<(Pending, Room)>,
    mut stop: watch::Receiver<bool>,
) {
    // Small requests (librdkafka sends each partition its own) come several
    // to a read instead of two reads each; a frame larger than the buffer
    // is read past it, uncopied.
    let mut rd = tokio::io::BufReader::with_capacity(READ_BUFFER, rd);
    let mut session = sasl::Session::default();
    let conn = Arc::new(Conn::new());
    read_loop(&gw, &mut rd, &tx, &mut stop, &mut session, &conn).await;
    // The connection's last stretch of time.
    if let Some(tenant) = metered_tenant(&gw, &session) {
        charge_time(&gw, &tenant, &conn).await;
    }
}

async fn read_loop<W: Shards>(
    gw: &Arc<Gateway<W>>,
    rd: &mut (impl AsyncRead + Unpin),
    tx: &mpsc::Sender<(Pending, Room)>,
    stop: &mut watch::Receiver<bool>,
    session: &mut sasl::Session,
    conn: &Arc<Conn>,
) {
    let mut revoked = gw.registry.revocations();
    let bytes = Arc::new(Semaphore::new(MAX_PIPELINED_BYTES));
    let others = Arc::new(Semaphore::new(MAX_PIPELINED_OTHERS));
    loop {
        // A throttled tenant's connection is not read until it may go on:
        // a client that ignores the throttle is delayed, not served.
        if let Some(until) = conn.muted_until() {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            // A throttle is not idleness: the client was told to wait.
            conn.touch();
        }
        // Until a required login, frames are bounded as Kafka bounds SASL
        // tokens.
        let max = match (&session.login, gw.auth) {
            (None, AuthMode::Required) => sasl::MAX_UNAUTHENTICATED_BYTES,
            _ => gw.settings.max_request_bytes,
        };
        // One read per frame, polled across the other events: dropping it
        // part-way would lose the bytes it had read.
        let tenant = session.slot().map(|s| (s.bytes().clone(), s.most()));
        let read = read_frame(rd, max, &bytes, tenant, conn);
        tokio::pin!(read);
        let must_log_in = gw.auth == AuthMode::Required && session.login.is_none();
        let frame = loop {
            // One timer for the sooner of: charging the tenant's time (from
            // the first request, to a tenant), and the connection's idle or
            // login deadline.
            let charging = conn.spoke.load(Relaxed) && is_metered(gw, session);
            let tick = match charging {
                true => conn.charged_to() + CONNECTION_TICK,
                false => tokio::time::Instant::now() + NEVER,
            };
            let deadline = conn.deadline(&gw.settings, must_log_in);
            let woke = tokio::select! {
                f = &mut read => break f,
                _ = tokio::time::sleep_until(tick.min(deadline)) => true,
                // On shutdown, stop taking requests; those in progress finish.
                _ = stop.wait_for(|s| *s) => return,
                // A revoked key (or deleted tenant) loses its connections.
                Ok(()) = revoked.changed(), if session.login.is_some() => {
                    if let Some((tenant, key)) = &session.login {
                        if gw.registry.tenant_of(key).is_none() {
                            tracing::info!(%tenant, key, "key revoked; closing kafka connection");
                            return;
                        }
                    }
                    false
                }
            };
            let now = tokio::time::Instant::now();
            if woke && now >= deadline {
                // A frame half read is not busy: its bytes, as they come,
                // are activity; a sender stalled mid-frame is idle.
                let busy = conn.in_progress.load(Relaxed) > 0;
                if let Some(why) = conn.expired(&gw.settings, must_log_in, busy) {
                    tracing::info!(why, "closing kafka connection");
                    return;
                }
            }
            let due = woke && charging && now >= tick;
            if let Some(tenant) = metered_tenant(gw, session).filter(|_| due) {
                charge_time(gw, &tenant, conn).await;
            }
        };
        let (frame, held, tenant_held) = match frame {
            Ok(Some(f)) => {
                conn.spoke.store(true, Relaxed);
                conn.touch();
                f
            }
            Ok(None) => return,
            Err(why) => {
                gw.metrics.bad_requests.fetch_add(1, Relaxed);
                tracing::info!(why, "closing kafka connection");
                return;
            }
        };
        let api = frame.get(..2).map(|k| i16::from_be_bytes([k[0], k[1]]));
        let other = match api {
            Some(k) if k == ApiKey::Produce as i16 => None,
            // Waits while the connection's other requests are all in
            // progress; a shutdown meanwhile drops this one unanswered.
            _ => tokio::select! {
                p = others.clone().acquire_owned() => match p {
                    Ok(p) => Some(p),
                    Err(_) => return,
                },
                _ = stop.wait_for(|s| *s) => return,
            },
        };
        let room = Room {
            _bytes: held,
            _tenant_bytes: tenant_held,
            _slot: session.slot().cloned(),
            _other: other,
            _written: Written::new(conn),
        };
        let sasl = [
            ApiKey::SaslHandshake as i16,
            ApiKey::SaslAuthenticate as i16,
        ];
        let anonymous = session.login.is_none();
        let next = match api {
            _ if session.expects_bare_token() => bare_token(gw, session, frame),
            Some(k) if sasl.contains(&k) => login(gw, session, frame),
            _ => match admit(gw, session, api) {
                Ok((tenant, metered)) => {
                    let key = session.login.as_ref().map(|(_, k)| k.as_str());
                    let worker = Guarded::for_key(gw.worker.clone(), &gw.registry, &tenant, key);
                    let cx = Cx {
                        gw: gw.clone(),
                        worker,
                        tenant,
                    };
                    decode(frame, cx, metered, conn).await.map(|p| (p, false))
                }
                Err(e) => Err(e),
            },
        };
        if anonymous && session.login.is_some() {
            // The tenant's connection time starts at its login.
            conn.restart_clock();
        }
        match next {
            Ok((p, close)) => {
                if tx.send((p, room)).await.is_err() || close {
                    return;
                }
            }
            Err(why) => {
                gw.metrics.bad_requests.fetch_add(1, Relaxed);
                tracing::info!(why, "closing kafka connection");
                return;
            }
        }
    }
}

/// The tenant a connection's usage is metered to: its login's, or the open
/// default tenant's. Nobody's before a required login.
fn metered_tenant<W>(gw: &Gateway<W>, session: &sasl::Session) -> Option<floe_common::TenantId> {
    match &session.login {
        Some((tenant, _)) => Some(tenant.clone()),
        None => is_metered(gw, session).then(|| gw.default_tenant.clone()),
    }
}

/// Whether [`metered_tenant`] has one, without making it.
fn is_metered<W>(gw: &Gateway<W>, session: &sasl::Session) -> bool {
    session.login.is_some() || gw.auth == AuthMode::Optional
}

async fn charge_time<W: Shards>(gw: &Gateway<W>, tenant: &floe_common::TenantId, conn: &Conn) {
    if !conn.spoke.load(Relaxed) {
        return;
    }
    let usage = Usage {
        connection_ms: conn.connection_ms(),
        ..Usage::default()
    };
    if let Err(e) = gw.worker.charge(tenant, usage).await {
        tracing::debug!(%tenant, error = %e, "charging connection time");
    }
}

/// The tenant a request runs as and whether it is metered to it, or why
/// the connection must close (Kafka closes one that skips or interrupts a
/// required SASL exchange).
fn admit<W>(
    gw: &Gateway<W>,
    session: &sasl::Session,
    api: Option<i16>,
) -> Result<(floe_common::TenantId, bool), String> {
    if session.in_exchange() {
        return Err("illegal sasl state: a request in the middle of a sasl exchange".into());
    }
    match metered_tenant(gw, session) {
        Some(tenant) => Ok((tenant, true)),
        // ApiVersions comes before the handshake, and is nobody's.
        None if api == Some(ApiKey::ApiVersions as i16) => Ok((gw.default_tenant.clone(), false)),
        None => Err("illegal sasl state: authentication required".into()),
    }
}

/// A place for one more of `tenant`'s logged-in connections on this
/// gateway, within its `connections` quota.
fn admit_login<W>(gw: &Gateway<W>, tenant: &floe_common::TenantId) -> Result<slots::Slot, String> {
    let max = gw
        .registry
        .limits(tenant.as_str())
        .and_then(|q| q.connections);
    gw.connections.take(tenant, max).map_err(|open| {
        format!(
            "Connection quota reached: tenant {tenant} already has {open} connections \
             to this broker, as many as its quota allows"
        )
    })
}

/// A bare SASL token after a v0 handshake: the answer is a bare token too,
/// and a failure closes the connection without one (Kafka's v0).
fn bare_token<W>(
    gw: &Gateway<W>,
    session: &mut sasl::Session,
    frame: Bytes,
) -> Result<(Pending, bool), String> {
    let req = kafka_protocol::messages::SaslAuthenticateRequest::default().with_auth_bytes(frame);
    let a = session.authenticate(&gw.registry, &req, &|t| admit_login(gw, t));
    if a.close {
        return Err("sasl authentication failed".into());
    }
    let mut out = BytesMut::with_capacity(4 + a.body.auth_bytes.len());
    out.put_i32(a.body.auth_bytes.len() as i32);
    out.put_slice(&a.body.auth_bytes);
    Ok((ready(Ok(out.freeze())), false))
}

/// A SASL request, answered in turn (the next frame is read only after it),
/// and whether the connection closes after the answer.
fn login<W: Shards>(
    gw: &Arc<Gateway<W>>,
    session: &mut sasl::Session,
    frame: Bytes,
) -> Result<(Pending, bool), String> {
    gw.metrics.request(i16::from_be_bytes([frame[0], frame[1]]));
    let Parsed::Request(api, header, req) = parse_request(frame)? else {
        return Err("sasl frame".into());
    };
    let (id, v) = (header.correlation_id, header.request_api_version);
    let (body, close) = match req {
        RequestKind::SaslHandshake(r) => {
            let a = session.handshake(&r, v);
            (ResponseKind::SaslHandshake(a.body), a.close)
        }
        RequestKind::SaslAuthenticate(r) => {
            let a = session.authenticate(&gw.registry, &r, &|t| admit_login(gw, t));
            (ResponseKind::SaslAuthenticate(a.body), a.close)
        }
        _ => return Err("sasl frame".into()),
    };
    if let (Some((tenant, key)), false) = (&session.login, close) {
        tracing::debug!(%tenant, key, "sasl login");
    }
    Ok((ready(encode(id, api, v, body)), close))
}

/// A frame read, and the room it holds until answered: the connection's,
/// and its tenant's (once logged in).
type Framed = (Bytes, OwnedSemaphorePermit, Option<OwnedSemaphorePermit>);

/// Reads one size-prefixed frame once the connection and its tenant's
/// connections (`tenant`, with the most one frame may take) have room for
/// its bytes, and returns it with that room; `Ok(None)` at a clean end of
/// stream. Each read of its body marks `conn` active.
async fn read_frame(
    rd: &mut (impl AsyncRead + Unpin),
    max: u32,
    room: &Arc<Semaphore>,
    tenant: Option<(Arc<Semaphore>, usize)>,
    conn: &Arc<Conn>,
) -> Result<Option<Framed>, String> {
    let mut len = [0u8; 4];
    match rd.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.to_string()),
    }
    let len = i32::from_be_bytes(len);
    if len < 0 || len as u32 > max {
        return Err(format!("request size {len} outside 0..={max}"));
    }
    let held = room_for(room, (len as usize).min(MAX_PIPELINED_BYTES), conn).await?;
    let tenant_held = match tenant {
        Some((bytes, most)) => Some(room_for(&bytes, (len as usize).min(most), conn).await?),
        None => None,
    };
    // Read into spare capacity: zeroing a megabyte first costs as much as
    // reading it.
    let len = len as usize;
    let mut buf = BytesMut::with_capacity(len);
    let mut rest = (&mut *rd).take(len as u64);
    while buf.len() < len {
        match rest.read_buf(&mut buf).await {
            Ok(0) => return Err(format!("truncated frame: {} of {len} bytes", buf.len())),
            Ok(_) => conn.touch(),
            Err(e) => return Err(format!("truncated frame: {e}")),
        }
    }
    Ok(Some((buf.freeze(), held, tenant_held)))
}

/// `n` bytes of `room`. Waiting for them is not idleness: the gateway
/// holds the client back (its own requests, or its tenant's other
/// connections, hold the bytes).
async fn room_for(
    room: &Arc<Semaphore>,
    n: usize,
    conn: &Arc<Conn>,
) -> Result<tokio::sync::OwnedSemaphorePermit, String> {
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    if let Ok(p) = room.clone().try_acquire_many_owned(n) {
        return Ok(p);
    }
    let _waiting = Written::new(conn);
    room.clone()
        .acquire_many_owned(n)
        .await
        .map_err(|e| e.to_string())
}

/// What a frame asks for, once past the version gate.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per frame, moved once
pub enum Parsed {
    Request(ApiKey, RequestHeader, RequestKind),
    /// An ApiVersions request newer than we serve: answer with v0 and the list.
    ApiVersionsTooNew {
        correlation_id: i32,
    },
}

/// Parses one request frame (without its size prefix), or says why the
/// connection must close. Never panics: the codec is third-party, and a panic
/// on hostile input must cost only the connection.
pub fn parse_request(mut frame: Bytes) -> Result<Parsed, String> {
    if frame.len() < 8 {
        return Err(format!(
            "frame of {} bytes has no request header",
            frame.len()
        ));
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api = ApiKey::try_from(key).map_err(|_| format!("unknown api key {key}"))?;
    let Some((lo, hi)) = versions::supported(api) else {
        return Err(format!("unsupported api {api:?}"));
    };
    if version < lo || version > hi {
        if api == ApiKey::ApiVersions {
            return Ok(Parsed::ApiVersionsTooNew { correlation_id });
        }
        return Err(format!("unsupported version {version} of {api:?}"));
    }
    let decoded =
        std::panic::catch_unwind(AssertUnwindSafe(|| decode_body(&mut frame, api, version)));
    match decoded {
        Ok(Ok((header, req))) => Ok(Parsed::Request(api, header, req)),
        Ok(Err(e)) => Err(format!("malformed {api:?} v{version}: {e}")),
        Err(_) => Err(format!("malformed {api:?} v{version}: decoder panicked")),
    }
}

/// The codec's own decoding, with no panic guard (the fuzz target calls it so
/// that a panic in the codec is found, not hidden).
pub fn decode_body(
    frame: &mut Bytes,
    api: ApiKey,
    version: i16,
) -> anyhow::Result<(RequestHeader, RequestKind)> {
    let header = decode_request_header_from_buffer(frame)?;
    // Bytes after the body are ignored, as Kafka's brokers do: librdkafka 2.16
    // sends Metadata v12 with three of them.
    let req = RequestKind::decode(api, frame, version)?;
    Ok((header, req))
}

/// Decodes a frame into a pending response, or says why to close.
/// Decodes a frame into a pending response, or says why to close. What a
/// request costs up front (itself, its record bytes) is charged here,
/// before the reader reads on: a client pipelining past its quota is muted
/// at once, not after the requests it already sent are served.
async fn decode<W: Shards>(
    frame: Bytes,
    cx: Cx<W>,
    metered: bool,
    conn: &Arc<Conn>,
) -> Result<Pending, String> {
    if frame.len() >= 2 {
        cx.metrics.request(i16::from_be_bytes([frame[0], frame[1]]));
    }
    let (api, mut header, req) = match parse_request(frame)? {
        Parsed::Request(api, h, r) => (api, h, r),
        Parsed::ApiVersionsTooNew { correlation_id } => {
            let body = versions::unsupported_version_response();
            return Ok(ready(encode(correlation_id, ApiKey::ApiVersions, 0, body)));
        }
    };
    let (kind, produce_bytes) = match &req {
        RequestKind::Produce(r) => (Kind::Produce, produce::record_bytes(r)),
        RequestKind::Fetch(_) => (Kind::Fetch, 0),
        _ => (Kind::Other, 0),
    };
    let up_front = Usage {
        kind,
        produce_bytes,
        requests: 1,
        connection_ms: conn.connection_ms(),
        ..Usage::default()
    };
    // KIP-219: answered at once, with the throttle; the connection
    // reads nothing more until it has passed.
    let admission = charge(&cx, conn, metered, up_front).await;
    let before = admission.throttle;
    let conn = conn.clone();
    // One span per request, named by its API (traces: `telemetry.rs`).
    let span = tracing::debug_span!(
        "kafka.request",
        otel.name = %format_args!("kafka.{api:?}"),
        otel.kind = "server",
        tenant = %cx.tenant,
        version = header.request_api_version,
        correlation_id = header.correlation_id,
    );
    let began = std::time::Instant::now();
    let refusal = admission
        .refused
        .map(|why| WorkerError::PolicyViolation(format!("refused by the quota policy: {why}")));
    // A produce is appended here, before the next frame is read, so a
    // connection's produces land in the order sent; the futures below run
    // in no fixed order until their responses are written.
    let work = match (&refusal, req) {
        (None, RequestKind::Produce(r)) => {
            // The answer needs none of the header's strings, which are
            // slices of the frame: see `produce::accept_all`.
            header.client_id = None;
            header.unknown_tagged_fields.clear();
            Work::Produce(produce::accept_all(&cx, r).instrument(span.clone()).await)
        }
        (_, req) => Work::Other(req),
    };
    Ok(Box::pin(
        async move {
            let (id, v) = (header.correlation_id, header.request_api_version);
            let reply = match (refusal, work) {
                (_, Work::Produce(a)) => produce::finish_all(&cx, a)
                    .await
                    .map(|r| Reply::Body(ResponseKind::Produce(r))),
                (Some(e), Work::Other(RequestKind::Produce(r))) => {
                    produce::refused(r, &e).map(|r| Reply::Body(ResponseKind::Produce(r)))
                }
                (Some(e), Work::Other(RequestKind::Fetch(r))) => {
                    Some(Reply::Fetch(fetch::refused(r, &e)))
                }
                // Boxed: every handler's state inline would make each
                // request's future, allocated and moved per request, as
                // large as the largest of them (with the shard's open boxed
                // too: 5,760 bytes before, 3,280 after).
                (_, Work::Other(req)) => Box::pin(handle(&cx, &header, req)).await,
            };
            // What it served is known only now.
            let served = Usage {
                kind: Kind::Fetch,
                fetch_bytes: match &reply {
                    Some(Reply::Fetch(r)) => fetch::record_bytes(r),
                    _ => 0,
                },
                ..Usage::default()
            };
            let after = if served.fetch_bytes > 0 {
                charge(&cx, &conn, metered, served).await.throttle
            } else {
                std::time::Duration::ZERO
            };
            let throttle_ms = before.max(after).as_millis().min(i32::MAX as u128) as i32;
            cx.metrics.request_took(api, began.elapsed());
            match reply {
                Some(Reply::Body(mut resp)) => {
                    set_throttle(&mut resp, throttle_ms);
                    encode(id, api, v, resp).map(|b| Some(vec![b]))
                }
                Some(Reply::Fetch(mut resp)) => {
                    resp.throttle_time_ms = throttle_ms;
                    Ok(Some(fetch::encode(id, v, resp)))
                }
                None => Ok(None),
            }
        }
        .instrument(span),
    ))
}

/// Charges `usage` to the request's tenant (when metered) and mutes the
/// connection for the throttle it earns. A plan's policy may refuse a
/// produce or a fetch; other requests have no error every version of them
/// can carry, so refusing one of those mutes its connection for a window.
async fn charge<W: Shards>(cx: &Cx<W>, conn: &Conn, metered: bool, usage: Usage) -> Admission {
    if !metered {
        return Admission::default();
    }
    let mut a = cx
        .worker
        .charge(&cx.tenant, usage)
        .await
        .unwrap_or_default();
    if usage.kind == Kind::Other && a.refused.take().is_some() {
        a.throttle = a.throttle.max(floe_worker::local::policy::WINDOW);
    }
    if !a.throttle.is_zero() {
        conn.mute(a.throttle);
        cx.metrics.throttled(a.throttle);
    }
    a
}

/// KIP-219: every answer carries the throttle (the codec leaves the field
/// out of versions that lack it). SASL answers are the reader's and never
/// throttled: a login is not charged.
fn set_throttle(resp: &mut ResponseKind, ms: i32) {
    macro_rules! each {
        ($($v:ident),* $(,)?) => {
            match resp {
                $(ResponseKind::$v(r) => r.throttle_time_ms = ms,)*
                _ => {}
            }
        };
    }
    each!(
        Produce,
        Metadata,
        ApiVersions,
        CreateTopics,
        DeleteTopics,
        DescribeConfigs,
        AlterConfigs,
        CreatePartitions,
        IncrementalAlterConfigs,
        DescribeCluster,
        DeleteRecords,
        FindCoordinator,
        OffsetCommit,
        OffsetFetch,
        JoinGroup,
        SyncGroup,
        Heartbeat,
        LeaveGroup,
        ListGroups,
        DescribeGroups,
        DeleteGroups,
        OffsetDelete,
        InitProducerId,
        DescribeProducers,
        AddPartitionsToTxn,
        AddOffsetsToTxn,
        TxnOffsetCommit,
        EndTxn,
        ListTransactions,
        DescribeTransactions,
        ListOffsets,
        DescribeAcls,
        CreateAcls,
        DeleteAcls,
    );
}

/// What a connection's requests share: when it may be read again (its
/// tenant's quota mutes it), since when its time is not yet charged, and
/// when it was last active.
pub struct Conn {
    until: std::sync::Mutex<Option<tokio::time::Instant>>,
    charged_to: std::sync::Mutex<tokio::time::Instant>,
    /// Whether a request arrived: a connection that sends none (a TCP
    /// health probe) is nobody's usage, and loads no shard to say so.
    spoke: std::sync::atomic::AtomicBool,
    opened: tokio::time::Instant,
    /// When a request was last read or a response written, in ms after
    /// `opened`.
    active_ms: std::sync::atomic::AtomicU64,
    /// Requests read and not yet answered (see [`Written`]).
    in_progress: std::sync::atomic::AtomicUsize,
}

impl Conn {
    fn new() -> Self {
        let now = tokio::time::Instant::now();
        Self {
            until: std::sync::Mutex::new(None),
            charged_to: std::sync::Mutex::new(now),
            spoke: std::sync::atomic::AtomicBool::new(false),
            opened: now,
            active_ms: std::sync::atomic::AtomicU64::new(0),
            in_progress: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.opened.elapsed().as_millis() as u64;
        self.active_ms.fetch_max(ms, Relaxed);
    }

    fn active(&self) -> tokio::time::Instant {
        self.opened + std::time::Duration::from_millis(self.active_ms.load(Relaxed))
    }

    /// When the connection may have to close: at its login deadline while
    /// it must log in, or once idle for `connections_max_idle`.
    fn deadline(&self, s: &crate::Settings, must_log_in: bool) -> tokio::time::Instant {
        let idle = match s.connections_max_idle.is_zero() {
            true => self.opened + NEVER,
            false => self.active() + s.connections_max_idle,
        };
        match must_log_in {
            true => idle.min(self.opened + s.login_timeout),
            false => idle,
        }
    }

    /// Why the connection must close now, if it must. A request in
    /// progress (`busy`) counts as activity.
    fn expired(&self, s: &crate::Settings, must_log_in: bool, busy: bool) -> Option<&'static str> {
        let now = tokio::time::Instant::now();
        if must_log_in && now >= self.opened + s.login_timeout {
            return Some("no login within --login-timeout-ms");
        }
        if busy || s.connections_max_idle.is_zero() {
            self.touch();
            return None;
        }
        (now >= self.active() + s.connections_max_idle)
            .then_some("idle past --connections-max-idle-ms")
    }

    fn mute(&self, by: std::time::Duration) {
        let until = tokio::time::Instant::now() + by;
        let mut u = self.until.lock().unwrap_or_else(|p| p.into_inner());
        *u = Some(u.map_or(until, |t| t.max(until)));
    }

    fn muted_until(&self) -> Option<tokio::time::Instant> {
        *self.until.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connection time since the last call (or the connection's start),
    /// in milliseconds.
    fn connection_ms(&self) -> u64 {
        let now = tokio::time::Instant::now();
        let mut since = self.charged_to.lock().unwrap_or_else(|p| p.into_inner());
        let ms = now.saturating_duration_since(*since).as_millis() as u64;
        // Whole milliseconds only: the remainder waits for the next call.
        *since += std::time::Duration::from_millis(ms);
        ms
    }

    /// Until when the connection's time has been charged.
    fn charged_to(&self) -> tokio::time::Instant {
        *self.charged_to.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A login starts the clock of the tenant it logs in as.
    fn restart_clock(&self) {
        *self.charged_to.lock().unwrap_or_else(|p| p.into_inner()) = tokio::time::Instant::now();
    }
}

fn ready(b: Result<Bytes, ()>) -> Pending {
    Box::pin(std::future::ready(b.map(|b| Some(vec![b]))))
}

/// What a request's future works on: a produce the log has taken, or any
/// other request.
#[allow(clippy::large_enum_variant)] // one per request, moved once
enum Work {
    Produce(produce::Accepting),
    Other(RequestKind),
}

/// What a handler answers: a codec message, or a Fetch response, which has
/// its own encoder.
#[allow(clippy::large_enum_variant)] // one per request, moved once
enum Reply {
    Body(ResponseKind),
    Fetch(fetch::Response),
}

/// Every request but an accepted produce.
async fn handle<W: Shards>(gw: &Cx<W>, h: &RequestHeader, req: RequestKind) -> Option<Reply> {
    let v = h.request_api_version;
    Some(Reply::Body(match req {
        RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(versions::response()),
        RequestKind::Metadata(r) => ResponseKind::Metadata(metadata::metadata(gw, r, v).await),
        RequestKind::Fetch(r) => return Some(Reply::Fetch(fetch::fetch(gw, r).await)),
        RequestKind::ListOffsets(r) => {
            ResponseKind::ListOffsets(fetch::list_offsets(gw, r, v).await)
        }
        RequestKind::CreateTopics(r) => {
            ResponseKind::CreateTopics(admin::create_topics(gw, r, v).await)
        }
        RequestKind::DeleteTopics(r) => {
            ResponseKind::DeleteTopics(admin::delete_topics(gw, r).await)
        }
        RequestKind::CreatePartitions(r) => {
            ResponseKind::CreatePartitions(admin::create_partitions(gw, r).await)
        }
        RequestKind::DescribeConfigs(r) => {
            ResponseKind::DescribeConfigs(admin::describe_configs(gw, r).await)
        }
        RequestKind::AlterConfigs(r) => {
            ResponseKind::AlterConfigs(admin::alter_configs(gw, r).await)
        }
        RequestKind::IncrementalAlterConfigs(r) => {
            ResponseKind::IncrementalAlterConfigs(admin::incremental_alter_configs(gw, r).await)
        }
        RequestKind::DescribeCluster(_) => {
            ResponseKind::DescribeCluster(metadata::describe_cluster(gw))
        }
        RequestKind::DeleteRecords(r) => {
            ResponseKind::DeleteRecords(admin::delete_records(gw, r).await)
        }
        RequestKind::FindCoordinator(r) => {
            ResponseKind::FindCoordinator(groups::find_coordinator(gw, r, v))
        }
        RequestKind::DeleteGroups(r) => {
            ResponseKind::DeleteGroups(groups::delete_groups(gw, r).await)
        }
        RequestKind::OffsetDelete(r) => {
            ResponseKind::OffsetDelete(groups::offset_delete(gw, r).await)
        }
        RequestKind::JoinGroup(r) => {
            let client = h.client_id.as_deref().unwrap_or_default();
            ResponseKind::JoinGroup(groups::join_group(gw, r, v, client).await)
        }
        RequestKind::SyncGroup(r) => ResponseKind::SyncGroup(groups::sync_group(gw, r, v).await),
        RequestKind::Heartbeat(r) => ResponseKind::Heartbeat(groups::heartbeat(gw, r).await),
        RequestKind::LeaveGroup(r) => ResponseKind::LeaveGroup(groups::leave_group(gw, r, v).await),
        RequestKind::ListGroups(r) => ResponseKind::ListGroups(groups::list_groups(gw, r, v).await),
        RequestKind::DescribeGroups(r) => {
            ResponseKind::DescribeGroups(groups::describe_groups(gw, r, v).await)
        }
        RequestKind::OffsetCommit(r) => {
            ResponseKind::OffsetCommit(groups::offset_commit(gw, r).await)
        }
        RequestKind::OffsetFetch(r) => {
            ResponseKind::OffsetFetch(groups::offset_fetch(gw, r, v).await)
        }
        RequestKind::InitProducerId(r) => {
            ResponseKind::InitProducerId(producers::init_producer_id(gw, r, v).await)
        }
        RequestKind::AddPartitionsToTxn(r) => {
            ResponseKind::AddPartitionsToTxn(transactions::add_partitions(gw, r, v).await)
        }
        RequestKind::AddOffsetsToTxn(r) => {
            ResponseKind::AddOffsetsToTxn(transactions::add_offsets(gw, r, v).await)
        }
        RequestKind::TxnOffsetCommit(r) => {
            ResponseKind::TxnOffsetCommit(transactions::txn_offset_commit(gw, r).await)
        }
        RequestKind::EndTxn(r) => ResponseKind::EndTxn(transactions::end_txn(gw, r, v).await),
        RequestKind::ListTransactions(r) => {
            ResponseKind::ListTransactions(transactions::list(gw, r).await)
        }
        RequestKind::DescribeTransactions(r) => {
            ResponseKind::DescribeTransactions(transactions::describe(gw, r).await)
        }
        RequestKind::DescribeProducers(r) => {
            ResponseKind::DescribeProducers(producers::describe_producers(gw, r).await)
        }
        RequestKind::DescribeAcls(r) => ResponseKind::DescribeAcls(acls::describe(gw, r).await),
        RequestKind::CreateAcls(r) => ResponseKind::CreateAcls(acls::create(gw, r).await),
        RequestKind::DeleteAcls(r) => ResponseKind::DeleteAcls(acls::delete(gw, r).await),
        // Produce is accepted by the reader (`decode`); `versions::supported`
        // admits only the APIs above.
        _ => return None,
    }))
}

/// Size prefix, response header, body. A response that does not encode is a
/// bug of ours; the connection is closed so the client retries elsewhere.
fn encode(correlation_id: i32, api: ApiKey, version: i16, body: ResponseKind) -> Result<Bytes, ()> {
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    // ApiVersions responses always use header v0, so any client can read them.
    let header_version = if api == ApiKey::ApiVersions {
        0
    } else {
        api.response_header_version(version)
    };
    if let Err(e) = header
        .encode(&mut buf, header_version)
        .and_then(|_| body.encode(&mut buf, version))
    {
        tracing::error!(?api, version, error = %e, "response failed to encode");
        return Err(());
    }
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::{Encodable, Request, StrBytes};

    /// A frame waiting for room in its tenant's bound keeps its connection
    /// busy, not idle, until the room comes and the frame is read.
    #[tokio::test]
    async fn waiting_for_the_tenants_room_is_not_idleness() {
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        let mut frame = 4u32.to_be_bytes().to_vec();
        frame.extend_from_slice(b"body");
        client.write_all(&frame).await.expect("written");
        let conn = Arc::new(Conn::new());
        let room = Arc::new(Semaphore::new(MAX_PIPELINED_BYTES));
        let tenant = Arc::new(Semaphore::new(0)); // the other connections hold it all
        let reading = read_frame(
            &mut server,
            1024,
            &room,
            Some((tenant.clone(), 1024)),
            &conn,
        );
        tokio::pin!(reading);
        tokio::select! {
            _ = &mut reading => panic!("read without the tenant's room"),
            _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
        }
        assert_eq!(
            conn.in_progress.load(Relaxed),
            1,
            "a waiting frame counts as idle"
        );
        tenant.add_permits(4);
        let (body, _, _) = reading.await.expect("read").expect("a frame");
        assert_eq!(&body[..], b"body");
        assert_eq!(conn.in_progress.load(Relaxed), 0);
    }

    /// Over TLS, an answer larger than the socket takes at once arrives
    /// whole, though the client reads slowly and no other answer follows:
    /// rustls holds what the socket did not take until it is flushed.
    #[tokio::test]
    async fn a_tls_answer_arrives_whole_without_another_behind_it() {
        use rustls::pki_types::pem::PemObject;
        let dir = std::env::temp_dir().join(format!("floe-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        floe_cluster::tls::init(&dir).expect("certificates");
        let pem = |f: &str| dir.join(f).to_string_lossy().into_owned();
        let acceptor = crate::tls_acceptor(&pem("node.pem"), &pem("node.key")).expect("acceptor");
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_file_iter(pem("ca.pem")).expect("ca") {
            roots.add(c.expect("ca cert")).expect("trusted");
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        // A pipe that holds 4 KiB, like a full socket buffer.
        let (near, far) = tokio::io::duplex(4096);
        let name =
            rustls::pki_types::ServerName::try_from(floe_cluster::tls::SERVER_NAME).expect("name");
        let (server, client) = tokio::join!(acceptor.accept(near), connector.connect(name, far));
        let (mut server, mut client) = (server.expect("server side"), client.expect("client side"));
        let answer = Bytes::from(vec![7u8; 1 << 20]);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let writer = tokio::spawn(async move {
            write_chunks(&mut server, vec![answer], None)
                .await
                .expect("written");
            // The connection stays open, with nothing more to say.
            let _ = done_rx.await;
        });
        let mut got = vec![0u8; 1 << 20];
        let read = tokio::time::timeout(std::time::Duration::from_secs(20), async {
            let mut at = 0;
            let len = got.len();
            while at < len {
                let n = client.read(&mut got[at..(at + 1000).min(len)]).await?;
                if n == 0 {
                    break;
                }
                at += n;
            }
            std::io::Result::Ok(at)
        })
        .await;
        let _ = done_tx.send(());
        writer.await.expect("writer");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            read.expect("the whole answer, not a stall").expect("read"),
            1 << 20
        );
        assert!(got.iter().all(|b| *b == 7));
    }

    fn frame<R: Request>(version: i16, body: R) -> Vec<u8> {
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(7)
            .with_client_id(Some(StrBytes::from_static_str("t")));
        let mut b = BytesMut::new();
        header
            .encode(&mut b, R::header_version(version))
            .expect("header");
        body.encode(&mut b, version).expect("body");
        b.to_vec()
    }

    fn seeds() -> Vec<Vec<u8>> {
        let topic = || TopicName(StrBytes::from_static_str("t"));
        let md = metadata_request::MetadataRequestTopic::default().with_name(Some(topic()));
        let part = produce_request::PartitionProduceData::default()
            .with_records(Some(Bytes::from(vec![0u8; 70])));
        let produce = produce_request::TopicProduceData::default()
            .with_name(topic())
            .with_partition_data(vec![part]);
        let fetch = fetch_request::FetchTopic::default()
            .with_topic(topic())
            .with_partitions(vec![fetch_request::FetchPartition::default()]);
        let create = create_topics_request::CreatableTopic::default()
            .with_name(topic())
            .with_num_partitions(3);
        vec![
            frame(3, ApiVersionsRequest::default()),
            frame(
                12,
                MetadataRequest::default().with_topics(Some(vec![md.clone()])),
            ),
            frame(1, MetadataRequest::default().with_topics(Some(vec![md]))),
            frame(
                9,
                ProduceRequest::default()
                    .with_acks(-1)
                    .with_topic_data(vec![produce.clone()]),
            ),
            frame(
                3,
                ProduceRequest::default()
                    .with_acks(1)
                    .with_topic_data(vec![produce]),
            ),
            frame(12, FetchRequest::default().with_topics(vec![fetch.clone()])),
            frame(4, FetchRequest::default().with_topics(vec![fetch])),
            frame(7, CreateTopicsRequest::default().with_topics(vec![create])),
        ]
    }

    #[test]
    fn valid_frames_parse() {
        for s in seeds() {
            assert!(matches!(
                parse_request(Bytes::from(s)),
                Ok(Parsed::Request(..))
            ));
        }
    }

    /// Mutated and truncated frames: the codec must return errors, not panic.
    #[test]
    fn hostile_frames_are_errors_not_panics() {
        let seeds = seeds();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rand = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut panics = Vec::new();
        for i in 0..200_000 {
            let mut f = seeds[i % seeds.len()].clone();
            match rand() % 3 {
                0 => f.truncate((rand() as usize) % f.len()),
                1 => {
                    for _ in 0..1 + rand() % 4 {
                        // Keep api key and version (bytes 0..4) so the body decoder runs.
                        let at = 4 + (rand() as usize) % (f.len() - 4);
                        f[at] = rand() as u8;
                    }
                }
                _ => f.extend((0..1 + rand() % 8).map(|_| rand() as u8)),
            }
            let mut b = Bytes::from(f.clone());
            if b.len() < 8 {
                continue;
            }
            let api = ApiKey::try_from(i16::from_be_bytes([f[0], f[1]])).expect("seed api");
            let version = i16::from_be_bytes([f[2], f[3]]);
            let hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(|_| {}));
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                decode_body(&mut b, api, version).is_ok()
            }));
            std::panic::set_hook(hook);
            if r.is_err() {
                panics.push(f);
            }
        }
        assert!(
            panics.is_empty(),
            "{} inputs panicked the codec; first: {:?}",
            panics.len(),
            panics[0]
        );
    }
}
