//! A client connection's life outside its requests: the `ServerApp` portico hands Pingora's
//! listening service instead of Pingora's own HTTP loop.
//!
//! Pingora's loop enters its whole request machinery (a future of tens of KiB, with the
//! session's buffers) as soon as a connection is accepted and again as soon as a response
//! is sent, and then waits inside it for the client's next byte — so every idle keep-alive
//! connection holds all of it. Here a waiting connection is parked on a small future that
//! reads the request header itself, and only a complete header enters Pingora's proxy
//! (handed over as the session's first bytes, so nothing is read twice). Parking is also
//! where the client's deadlines live, which Pingora has no place for: the first byte of a
//! new connection, the whole request header (one deadline, so a client trickling a byte at a
//! time cannot hold a connection), and the idle time between requests; and where
//! connections over a listener's or a client address's cap are refused.
//!
//! Each connection runs in a task of its own, spawned from Pingora's accept task, which then
//! ends: Pingora's task is sized for a TLS handshake (about 10 KiB) and would otherwise stay
//! allocated for as long as the connection lives.
//!
//! HTTP/2 connections (ALPN `h2` on TLS listeners, and on plaintext listeners with
//! `h2c = true` those that open with the HTTP/2 connection preface) go to Pingora's own
//! loop unchanged: its streams are multiplexed and idle connections are closed by its
//! HTTP/2 idle timeout. Only `h2c` listeners look at a connection's first bytes for the
//! preface; other listeners pay one flag test.
//!
//! On a plaintext listener with `proxy_protocol = true` the PROXY header is read here, after
//! the listener's cap and before the client's (which then counts the real client); see
//! `proxy_protocol.rs`. Other listeners pay one flag test per connection.

use std::collections::HashMap;
use std::future::Future;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use pingora_timeout::fast_timeout::fast_timeout;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use super::response_buffer::ResponseBuffer;
use super::{proxy_protocol, Gateway, GatewayError};
use crate::config::{self, Limits};
use crate::observe::metrics::METRICS;
use crate::runtime::{Snapshot, State};

/// The buffer a request header is read into, and handed to Pingora in (its own first
/// allocation for a request header is the same size). While a connection waits, it holds no
/// buffer at all: the first read goes to the stack of the poll that finds data
/// ([`read_first`]), and only then is this allocated.
const HEADER_BUFFER: usize = 4096;

/// The `ServerApp` of portico's proxy service: admission, deadlines and parking around
/// Pingora's HTTP proxy.
pub struct Connections {
    proxy: Arc<HttpProxy<Gateway>>,
    state: Arc<State>,
    listeners: Vec<ListenerSlot>,
    /// Open connections per client address, kept only while a per-client cap is set.
    clients: Mutex<HashMap<IpAddr, usize>>,
}

/// One configured listener and how many client connections it holds.
struct ListenerSlot {
    /// As written in the config, to find its live `max_connections` after reloads.
    address: String,
    addr: Option<SocketAddr>,
    /// A plaintext listener whose connections start with a PROXY header (a TLS listener's
    /// is read by the pre-TLS hook).
    proxy_protocol: bool,
    /// A plaintext listener that also takes HTTP/2 with prior knowledge.
    h2c: bool,
    open: AtomicUsize,
}

/// Why a connection was closed as soon as it was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    ListenerFull,
    ClientFull,
    /// No valid PROXY header on a `proxy_protocol` listener.
    ProxyHeader,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::ListenerFull => "listener_limit",
            Refusal::ClientFull => "client_limit",
            Refusal::ProxyHeader => PROXY_REFUSAL,
        }
    }
}

/// A connection's place in the counts, given back when it closes.
struct Ticket<'a> {
    owner: &'a Connections,
    listener: Option<usize>,
    client: Option<IpAddr>,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        METRICS.client_connections.dec();
        if let Some(i) = self.listener {
            self.owner.listeners[i].open.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(ip) = self.client {
            let mut clients = self
                .owner
                .clients
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(n) = clients.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    clients.remove(&ip);
                }
            }
        }
    }
}

/// The deadlines of one wait, copied out of the live `[limits]` so a reload applies to the
/// next request of every connection.
#[derive(Debug, Clone, Copy)]
struct Deadlines {
    first_byte: Duration,
    header: Duration,
    keepalive: Duration,
    body: Duration,
    send: Duration,
    /// Longest request header read before it is refused with 431.
    max_header: usize,
}

impl Deadlines {
    fn of(limits: &Limits) -> Deadlines {
        Deadlines {
            first_byte: limits.first_byte_timeout,
            header: limits.header_timeout,
            keepalive: limits.keepalive_timeout,
            body: limits.body_timeout,
            send: limits.send_timeout,
            // The request line and the headers are limited apart once parsed; this bound
            // only stops the reading, with room for the line's method and version.
            max_header: limits.max_uri_bytes + limits.max_header_bytes + 1024,
        }
    }
}

/// What waiting for a request header came to.
#[derive(Debug)]
enum Head {
    /// A whole header (and whatever followed it in the same reads).
    Ready(BytesMut),
    /// The client closed, or the connection broke, before a whole header.
    Closed,
    /// Nothing arrived within the idle (or first-byte) time.
    Idle,
    /// The header's first bytes came, the rest not within the header deadline.
    TimedOut,
    TooLarge,
}

impl Connections {
    pub fn new(
        proxy: HttpProxy<Gateway>,
        state: Arc<State>,
        listeners: &[config::Listener],
    ) -> Connections {
        Connections {
            proxy: Arc::new(proxy),
            state,
            listeners: listeners
                .iter()
                .map(|l| ListenerSlot {
                    address: l.address.clone(),
                    addr: l.address.parse().ok(),
                    proxy_protocol: l.proxy_protocol && l.tls.is_none(),
                    h2c: l.h2c && l.tls.is_none(),
                    open: AtomicUsize::new(0),
                })
                .collect(),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The listener a connection arrived on: the one bound to its local address, or to the
    /// same port on a wildcard address.
    fn listener_of(&self, local: SocketAddr) -> Option<usize> {
        let exact = self.listeners.iter().position(|l| l.addr == Some(local));
        exact.or_else(|| {
            self.listeners.iter().position(|l| {
                l.addr
                    .is_some_and(|a| a.ip().is_unspecified() && a.port() == local.port())
            })
        })
    }

    /// Counts a new connection in on its listener, or says that the listener is full.
    fn admit_listener<'a>(
        &'a self,
        local: Option<SocketAddr>,
        snapshot: &Snapshot,
    ) -> (Ticket<'a>, Result<(), Refusal>) {
        let mut ticket = Ticket {
            owner: self,
            listener: None,
            client: None,
        };
        METRICS.client_connections.inc();
        let Some(i) = local.and_then(|a| self.listener_of(a)) else {
            return (ticket, Ok(()));
        };
        let slot = &self.listeners[i];
        let cap = snapshot
            .config
            .listeners
            .iter()
            .find(|l| l.address == slot.address)
            .and_then(|l| l.max_connections)
            .unwrap_or(snapshot.limits.max_connections);
        let open = slot.open.fetch_add(1, Ordering::Relaxed) + 1;
        ticket.listener = Some(i);
        if cap > 0 && open > cap {
            return (ticket, Err(Refusal::ListenerFull));
        }
        (ticket, Ok(()))
    }

    /// Counts a connection in under its client's address, or says that the client is at
    /// its cap.
    fn admit_client(
        &self,
        ticket: &mut Ticket<'_>,
        peer: Option<SocketAddr>,
        snapshot: &Snapshot,
    ) -> Result<(), Refusal> {
        if let (Some(peer), cap @ 1..) = (peer, snapshot.limits.max_connections_per_client) {
            let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
            let open = clients.entry(peer.ip()).or_insert(0);
            *open += 1;
            ticket.client = Some(peer.ip());
            if *open > cap {
                return Err(Refusal::ClientFull);
            }
        }
        Ok(())
    }

    /// Counts a new connection in under its listener's and its client's caps, after reading
    /// its PROXY header where the listener expects one. `None` when it is refused (and
    /// counted); otherwise its place in the counts and any bytes read after a PROXY header.
    /// A function of its own so that its locals take no room in the future every waiting
    /// connection keeps (`serve`).
    async fn admit(&self, stream: &mut Stream) -> Option<(Ticket<'_>, Option<BytesMut>)> {
        let digest = stream.get_socket_digest();
        let inet = |a: Option<&pingora_core::protocols::l4::socket::SocketAddr>| {
            a.and_then(|a| a.as_inet()).copied()
        };
        let local = digest.as_ref().and_then(|d| inet(d.local_addr()));
        let mut peer = digest.as_ref().and_then(|d| inet(d.peer_addr()));
        let snapshot = self.state.snapshot();
        let (mut ticket, admitted) = self.admit_listener(local, &snapshot);
        if let Err(refusal) = admitted {
            count_refusal(refusal);
            return None;
        }
        let mut early = None;
        if ticket
            .listener
            .is_some_and(|i| self.listeners[i].proxy_protocol)
        {
            let timeout = snapshot.limits.proxy_header_timeout;
            drop(snapshot);
            match proxy_protocol::read(stream, timeout).await {
                Ok((header, rest)) => {
                    if let Some(client) = header.source {
                        let fd = stream.id();
                        stream.set_socket_digest(proxy_protocol::digest_for(
                            fd,
                            digest.as_ref(),
                            client,
                        ));
                        peer = Some(client);
                    }
                    early = Some(rest);
                }
                Err(why) => {
                    log::debug!("connection from {peer:?} closed: {why}");
                    if why != proxy_protocol::Refused::Empty {
                        count_refusal(Refusal::ProxyHeader);
                    }
                    return None;
                }
            }
            let snapshot = self.state.snapshot();
            if let Err(refusal) = self.admit_client(&mut ticket, peer, &snapshot) {
                count_refusal(refusal);
                return None;
            }
        } else {
            if let Err(refusal) = self.admit_client(&mut ticket, peer, &snapshot) {
                count_refusal(refusal);
                return None;
            }
            drop(snapshot);
        }
        Some((ticket, early))
    }

    /// One client connection, from admission to close.
    async fn serve(self: Arc<Self>, mut stream: Stream, shutdown: ShutdownWatch) {
        let Some((ticket, early)) = self.admit(&mut stream).await else {
            return;
        };
        if ticket.listener.is_some_and(|i| self.listeners[i].h2c) {
            let first_byte = self.state.snapshot().limits.first_byte_timeout;
            match opens_with_h2_preface(&mut stream, first_byte).await {
                Some(true) => {
                    // Pingora's loop (with `h2c` on in the proxy's server options) reads
                    // the preface again and runs the HTTP/2 connection.
                    ServerApp::process_new(&self.proxy, stream, &shutdown).await;
                    return;
                }
                Some(false) => {}
                None => return,
            }
        }
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            // Boxed by `async_trait`, so its size is paid only by HTTP/2 connections.
            ServerApp::process_new(&self.proxy, stream, &shutdown).await;
            return;
        }
        self.serve_http1(stream, &shutdown, early).await;
    }

    /// HTTP/1 requests on one connection, each header read while parked.
    async fn serve_http1(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
        mut early: Option<BytesMut>,
    ) {
        // Listeners have no transport write buffer (`runtime::serve`); above TLS, this one
        // also puts a response's header and short body in one TLS record.
        let mut stream = ResponseBuffer::wrap(stream);
        let mut stopping = shutdown.clone();
        let mut persistent = None;
        let mut first = true;
        loop {
            let deadlines = Deadlines::of(&self.state.snapshot().limits);
            let idle = if first {
                deadlines.first_byte
            } else {
                deadlines.keepalive
            };
            let head = if first {
                // A new connection's first request is served even when a shutdown has
                // begun: the client sent it and cannot know.
                read_head(&mut stream, idle, &deadlines, early.take()).await
            } else {
                tokio::select! {
                    biased;
                    head = read_head(&mut stream, idle, &deadlines, None) => head,
                    _ = stopped(&mut stopping) => return,
                }
            };
            let head = match head {
                Head::Ready(head) => head,
                Head::Closed => return,
                Head::Idle => {
                    if first {
                        count_timeout("first_byte");
                    }
                    return;
                }
                Head::TimedOut => {
                    count_timeout("header");
                    refuse(&mut stream, &GatewayError::RequestTimeout, &deadlines).await;
                    return;
                }
                Head::TooLarge => {
                    refuse(&mut stream, &GatewayError::HeadersTooLarge, &deadlines).await;
                    return;
                }
            };

            let request = self.enter_proxy(stream, head, persistent.take(), &deadlines, shutdown);
            let Some(reused) = request.await else {
                return;
            };
            let (next, settings) = reused.consume();
            stream = next;
            // Boxed: 80 bytes that every waiting connection would otherwise keep room for
            // in its future, for one small allocation per request.
            persistent = settings.map(Box::new);
            first = false;
        }
    }
}

impl Connections {
    /// Pingora's HTTP/1 session for one request, with the header already read, and the
    /// future that proxies it. Not async: the session (680 bytes) is moved into Pingora's
    /// boxed future here, so it is never a local of `serve_http1`'s future, where the
    /// compiler would keep its room in every waiting connection's task.
    fn enter_proxy<'a>(
        &'a self,
        stream: Stream,
        head: BytesMut,
        persistent: Option<Box<HttpPersistentSettings>>,
        deadlines: &Deadlines,
        shutdown: &'a ShutdownWatch,
    ) -> Pin<Box<dyn Future<Output = Option<ReusedHttpStream>> + Send + 'a>> {
        let mut session = ServerSession::new_http1(stream);
        if let Some(settings) = persistent {
            HttpPersistentSettings::apply_to_session(*settings, &mut session);
        }
        let keepalive = deadlines.keepalive.as_secs();
        session.set_keepalive((keepalive > 0 && !*shutdown.borrow()).then_some(keepalive));
        session.set_read_timeout(Some(deadlines.body));
        session.set_write_timeout(Some(deadlines.send));
        session.set_pipelined_prefix(head);
        HttpServerApp::process_new_http(&self.proxy, session, shutdown)
    }
}

#[async_trait]
impl ServerApp for Connections {
    /// Hands the connection to a task of its own and returns at once. Pingora's task for an
    /// accepted connection is sized for its largest state, a TLS handshake, and would be
    /// held for the connection's whole life; the connection's own task is a fraction of it.
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        tokio::spawn(self.clone().serve(stream, shutdown.clone()));
        None
    }

    async fn cleanup(&self) {
        HttpServerApp::http_cleanup(self.proxy.as_ref()).await;
    }
}

/// Whether a connection on an `h2c` listener starts with the HTTP/2 connection preface
/// (`PRI * HTTP/2.0`): its first three bytes are read within `first_byte` and put back,
/// so the connection goes on from its first byte either way. No HTTP/1 method is `PRI`.
/// `None` when the connection closed or sent nothing in time.
async fn opens_with_h2_preface(stream: &mut Stream, first_byte: Duration) -> Option<bool> {
    let mut start = [0u8; 3];
    match fast_timeout(first_byte, stream.try_peek(&mut start)).await {
        Ok(Ok(true)) => Some(&start == b"PRI"),
        // A stream that cannot peek is not one Pingora's listeners make; treat it as HTTP/1.
        Ok(Ok(false)) => Some(false),
        Ok(Err(_)) => None,
        Err(_) => {
            count_timeout("first_byte");
            None
        }
    }
}

/// Waits up to `idle` for a request's first bytes, then up to the header deadline for the
/// rest of its header. `early` holds bytes already read (after a PROXY header), which
/// count as the first.
async fn read_head(
    stream: &mut Stream,
    idle: Duration,
    deadlines: &Deadlines,
    early: Option<BytesMut>,
) -> Head {
    let mut buf = match early.filter(|b| !b.is_empty()) {
        Some(buf) => buf,
        None => match fast_timeout(idle, read_first(stream)).await {
            Err(_) => return Head::Idle,
            Ok(Some(buf)) => buf,
            Ok(None) => return Head::Closed,
        },
    };
    if header_complete(&buf, 0) {
        return Head::Ready(buf);
    }
    let rest = async {
        loop {
            if buf.len() > deadlines.max_header {
                return Head::TooLarge;
            }
            let scanned = buf.len();
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return Head::Closed,
                Ok(_) if header_complete(&buf, scanned) => return Head::Ready(buf),
                Ok(_) => {}
            }
        }
    };
    fast_timeout(deadlines.header, rest)
        .await
        .unwrap_or(Head::TimedOut)
}

/// The first bytes of a request, or `None` when the connection closed or broke. The read
/// goes to a buffer on the stack of the poll that finds data, so a waiting connection's
/// future holds no buffer; the bytes are then copied into a new [`HEADER_BUFFER`].
async fn read_first(stream: &mut Stream) -> Option<BytesMut> {
    std::future::poll_fn(|cx| {
        let mut scratch = [MaybeUninit::<u8>::uninit(); HEADER_BUFFER];
        let mut read = ReadBuf::uninit(&mut scratch);
        match Pin::new(&mut *stream).poll_read(cx, &mut read) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) if !read.filled().is_empty() => {
                let mut buf = BytesMut::with_capacity(HEADER_BUFFER);
                buf.extend_from_slice(read.filled());
                Poll::Ready(Some(buf))
            }
            Poll::Ready(_) => Poll::Ready(None),
        }
    })
    .await
}

/// Whether `buf` holds a whole request header: an empty line after the request line, with
/// CRLF or bare LF line ends, as the parser accepts. Empty lines before the request line are
/// skipped, as the parser does, so they cannot end the header early. `scanned` bytes were
/// looked at by an earlier call.
fn header_complete(buf: &[u8], scanned: usize) -> bool {
    let Some(start) = buf.iter().position(|b| !matches!(b, b'\r' | b'\n')) else {
        return false;
    };
    let from = start.max(scanned.saturating_sub(3));
    memchr::memchr_iter(b'\n', &buf[from..]).any(|i| {
        let rest = &buf[from + i + 1..];
        rest.first() == Some(&b'\n') || rest.starts_with(b"\r\n")
    })
}

/// Answers a request that cannot be read with its problem and closes the connection.
async fn refuse(stream: &mut Stream, error: &GatewayError, deadlines: &Deadlines) {
    let body = error.body("", "");
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\n\
         cache-control: no-store\r\nconnection: close\r\n\r\n",
        error.status(),
        http::StatusCode::from_u16(error.status())
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or(""),
        body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.flush().await
    };
    if let Ok(Err(e)) = fast_timeout(deadlines.send, write).await {
        log::debug!("cannot send {}: {e}", error.status());
    }
}

/// Resolves once the server begins to shut down (never, should the signal be dropped).
async fn stopped(shutdown: &mut ShutdownWatch) {
    // `changed` in a loop rather than `wait_for`, whose future is larger: every waiting
    // connection holds this one.
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The `reason` of `portico_connections_refused_total` for a missing or bad PROXY header.
pub(crate) const PROXY_REFUSAL: &str = "proxy_protocol";

fn count_refusal(refusal: Refusal) {
    METRICS
        .connections_refused
        .with_label_values(&[refusal.label()])
        .inc();
}

pub(crate) fn count_timeout(phase: &str) {
    METRICS.client_timeouts.with_label_values(&[phase]).inc();
}

#[cfg(test)]
mod tests {
    use super::header_complete;

    #[test]
    fn a_header_ends_at_its_first_empty_line() {
        assert!(header_complete(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 0));
        assert!(header_complete(b"GET / HTTP/1.1\nHost: a\n\n", 0));
        assert!(header_complete(b"GET / HTTP/1.1\r\n\r\nbody", 0));
        assert!(!header_complete(b"GET / HTTP/1.1\r\nHost: a\r\n", 0));
        assert!(!header_complete(b"GET / HTTP/1.1\r\nHost: a\r\n\r", 0));
    }

    #[test]
    fn empty_lines_before_the_request_line_do_not_end_it() {
        assert!(!header_complete(b"\r\n\r\n\n", 0));
        assert!(!header_complete(b"\r\n\r\nGET / HTTP/1.1\r\n", 0));
        assert!(header_complete(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n", 0));
    }

    #[test]
    fn an_end_split_across_reads_is_found() {
        let whole = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for split in 1..whole.len() {
            assert!(header_complete(whole, split), "split at {split}");
        }
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// A `Connections` over a minimal config, as the proxy service builds it.
    fn connections() -> Arc<Connections> {
        let snapshot = crate::runtime::minimal_snapshot();
        let listeners = snapshot.config.listeners.clone();
        let state = State::new(snapshot, None);
        let conf = Arc::new(pingora_core::server::configuration::ServerConf::default());
        let proxy = pingora_proxy::http_proxy(&conf, Gateway::new(state.clone()));
        Arc::new(Connections::new(proxy, state, &listeners))
    }

    /// The future every waiting connection's task holds (`serve`, parked in `read_head`),
    /// printed for benches/load/RESULTS.md. At 912 bytes or less, tokio's task (its future
    /// plus ~100 bytes of header and trailer, in 128-byte steps) fits jemalloc's 1 KiB size
    /// class; past that it takes 1,280 bytes. A buffer kept across an await, an unboxed
    /// Pingora future or a new local of `serve` can push it over: then box it, or move it
    /// into a function of its own (see `admit` and `enter_proxy`).
    #[tokio::test]
    async fn a_parked_connection_future_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let _client = client.unwrap();
        let stream: Stream = Box::new(pingora_core::protocols::l4::stream::Stream::from(
            accepted.unwrap().0,
        ));
        let (_tx, shutdown) = tokio::sync::watch::channel(false);
        let serve = connections().serve(stream, shutdown);
        let size = std::mem::size_of_val(&serve);
        eprintln!("Connections::serve future: {size} bytes");
        assert!(
            size <= 912,
            "the parked connection's future is {size} bytes"
        );
    }
}
