//! The client deadlines of a TLS listener before its handshake: the first byte, and the whole
//! ClientHello record, read under the same `[limits]` as a plaintext request header.
//!
//! Pingora gives a TLS handshake a fixed 60 s and has no first-byte deadline, so a client
//! that connects and sends nothing, or trickles its ClientHello a byte at a time, holds a
//! socket and Pingora's accept task (13 KiB) for a minute whatever `[limits]` says. Pingora
//! runs a pre-TLS hook on the raw stream before it starts the handshake
//! ([`PreTlsProcess`], meant for PROXY protocol); here it reads the first TLS record under
//! `first_byte_timeout` and then `header_timeout`, and puts the bytes back
//! ([`Stream::rewind`]) for rustls to read as if nothing had happened. What follows the
//! ClientHello (the client's key exchange and Finished) is bounded by Pingora's 60 s.
//!
//! On a TLS listener with `proxy_protocol = true` the hook first reads the PROXY header
//! (`proxy_protocol.rs`) and puts the client's address in the stream's socket digest, so the
//! handshake's first byte is the one after the header.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::listeners::PreTlsProcess;
use pingora_core::protocols::l4::stream::Stream;
use pingora_core::protocols::GetSocketDigest;
use pingora_error::{Error, ErrorType, Result};
use pingora_timeout::fast_timeout::fast_timeout;
use tokio::io::AsyncReadExt;

use super::connection::{count_timeout, PROXY_REFUSAL};
use super::proxy_protocol;
use crate::observe::metrics::METRICS;
use crate::runtime::State;

/// TLS record header: content type, legacy version, length.
const RECORD_HEADER: usize = 5;
/// The handshake content type (RFC 8446 §5.1).
const HANDSHAKE: u8 = 22;
/// The largest record a peer may send (2^14 bytes of plaintext, RFC 8446 §5.1); anything
/// longer is not TLS and is left to rustls to refuse.
const MAX_RECORD: usize = 1 << 14;

/// The pre-TLS hook of every TLS client listener.
pub struct HelloDeadline {
    state: Arc<State>,
    /// The TLS listeners with `proxy_protocol = true`.
    proxy_listeners: Vec<SocketAddr>,
}

impl HelloDeadline {
    pub fn new(state: Arc<State>, proxy_listeners: Vec<SocketAddr>) -> Arc<HelloDeadline> {
        Arc::new(HelloDeadline {
            state,
            proxy_listeners,
        })
    }

    /// Whether the connection came in on a listener that expects a PROXY header (bound to
    /// its local address, or to the same port on a wildcard address).
    fn expects_proxy_header(&self, stream: &Stream) -> bool {
        if self.proxy_listeners.is_empty() {
            return false;
        }
        let digest = stream.get_socket_digest();
        let Some(local) = digest
            .as_ref()
            .and_then(|d| d.local_addr())
            .and_then(|a| a.as_inet())
        else {
            return false;
        };
        self.proxy_listeners
            .iter()
            .any(|l| l == local || (l.ip().is_unspecified() && l.port() == local.port()))
    }

    /// Reads the PROXY header and makes its source the stream's peer; what was read past
    /// the header is put back for the handshake.
    async fn read_proxy_header(&self, stream: &mut Stream) -> Result<()> {
        let timeout = self.state.snapshot().limits.proxy_header_timeout;
        match proxy_protocol::read(stream, timeout).await {
            Ok((header, rest)) => {
                if let Some(client) = header.source {
                    let old = stream.get_socket_digest();
                    let digest =
                        proxy_protocol::digest_for(stream.as_raw_fd(), old.as_ref(), client);
                    stream.set_socket_digest(digest);
                }
                stream.rewind(&rest);
                Ok(())
            }
            Err(why) => {
                if why != proxy_protocol::Refused::Empty {
                    METRICS
                        .connections_refused
                        .with_label_values(&[PROXY_REFUSAL])
                        .inc();
                }
                Err(Error::explain(ErrorType::ConnectionClosed, why.to_string()))
            }
        }
    }
}

#[async_trait]
impl PreTlsProcess for HelloDeadline {
    async fn process(&self, stream: &mut Stream) -> Result<()> {
        if self.expects_proxy_header(stream) {
            self.read_proxy_header(stream).await?;
        }
        let (first_byte, header) = {
            let limits = &self.state.snapshot().limits;
            (limits.first_byte_timeout, limits.header_timeout)
        };
        let mut record = vec![0u8; RECORD_HEADER];
        let first = match fast_timeout(first_byte, stream.read(&mut record)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Err(Error::new(ErrorType::ConnectionClosed)),
            Ok(Ok(n)) => n,
            Err(_) => {
                count_timeout("first_byte");
                return Err(Error::explain(
                    ErrorType::ReadTimedout,
                    "no TLS ClientHello within first_byte_timeout",
                ));
            }
        };
        // One deadline from the first byte to the end of the record, as for a request header.
        match fast_timeout(header, read_rest_of_hello(stream, &mut record, first)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Error::because(ErrorType::ReadError, "TLS ClientHello", e)),
            Err(_) => {
                count_timeout("header");
                return Err(Error::explain(
                    ErrorType::ReadTimedout,
                    "TLS ClientHello not complete within header_timeout",
                ));
            }
        }
        stream.rewind(&record);
        Ok(())
    }
}

/// Completes the first record in `record`, of which `have` bytes are read. A first record
/// that is not a handshake record, or longer than TLS allows, is left as read: rustls
/// refuses it with the right alert.
async fn read_rest_of_hello(
    stream: &mut Stream,
    record: &mut Vec<u8>,
    have: usize,
) -> std::io::Result<()> {
    if record[0] != HANDSHAKE {
        record.truncate(have);
        return Ok(());
    }
    stream.read_exact(&mut record[have..]).await?;
    let length = usize::from(u16::from_be_bytes([record[3], record[4]]));
    if length > MAX_RECORD {
        return Ok(());
    }
    record.resize(RECORD_HEADER + length, 0);
    stream.read_exact(&mut record[RECORD_HEADER..]).await?;
    Ok(())
}
