//! The write buffer of an HTTP/1 client connection, held only while a response is being
//! written.
//!
//! Pingora's transport stream owns a 1,460-byte write buffer for the connection's whole
//! life, so every idle keep-alive connection keeps one while it waits for its next request:
//! about a third of what a plaintext one costs (benches/load/RESULTS.md, memory). Listeners
//! therefore run with that buffer off (`L4BufferSettings::unbuffered()`, in `runtime::serve`)
//! and each HTTP/1 connection's stream (above TLS, where there is TLS) is wrapped in a
//! [`ResponseBuffer`] instead. It gathers a response's small writes (the header, a short body,
//! chunk framing) as Pingora's buffer did and sends them in one system call (over TLS, in one
//! record), but allocates its buffer at a response's first write and frees it at the flush
//! that ends the response. A write that does not fit goes out together with what was
//! gathered, in one vectored write, where a plain buffer would flush first and so send the
//! two apart.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::{SslDigest, TlsRef};
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most a response's gathered writes take before they are sent: Pingora's own transport
/// write buffer size, one TCP segment's payload on a 1,500-byte MTU.
pub const CAPACITY: usize = 1460;

/// A client stream that gathers small writes in a buffer that lives from a response's first
/// write to its flush.
#[derive(Debug)]
pub struct ResponseBuffer {
    inner: Stream,
    /// Written by the caller, not yet sent. No allocation while empty after a flush.
    pending: Vec<u8>,
}

impl ResponseBuffer {
    /// `inner` wrapped, as a stream Pingora's HTTP/1 session takes.
    pub fn wrap(inner: Stream) -> Stream {
        Box::new(ResponseBuffer {
            inner,
            pending: Vec::new(),
        })
    }

    /// Sends everything gathered.
    fn poll_send_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let sent = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending))?;
            if sent == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.drain(..sent);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ResponseBuffer {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.pending.len() + buf.len() <= CAPACITY {
            if this.pending.capacity() == 0 {
                this.pending.reserve_exact(CAPACITY);
            }
            this.pending.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        // What was gathered goes out with this write, in one system call where the stream
        // takes vectored writes. The count returned is of `buf`'s bytes only, so a call that
        // sends only gathered bytes loops (returning 0 would mean the stream is closed).
        while !this.pending.is_empty() {
            let slices = [IoSlice::new(&this.pending), IoSlice::new(buf)];
            let sent = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, &slices))?;
            if sent == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if sent >= this.pending.len() {
                let of_buf = sent - this.pending.len();
                this.pending.clear();
                if of_buf > 0 {
                    return Poll::Ready(Ok(of_buf));
                }
            } else {
                this.pending.drain(..sent);
            }
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_pending(cx))?;
        // The response is out: the connection holds no buffer while it waits.
        this.pending = Vec::new();
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_pending(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl Drop for ResponseBuffer {
    /// Sends what is still gathered if the socket takes it now, as Pingora's stream does
    /// with its own buffer when dropped (a drop cannot wait).
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            let _ = self.poll_send_pending(&mut cx);
        }
    }
}

impl AsyncRead for ResponseBuffer {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

#[async_trait]
impl Shutdown for ResponseBuffer {
    async fn shutdown(&mut self) {
        if let Err(e) = std::future::poll_fn(|cx| self.poll_send_pending(cx)).await {
            log::debug!("cannot send the end of a response before closing: {e}");
        }
        self.inner.as_mut().shutdown().await;
    }
}

#[async_trait]
impl Peek for ResponseBuffer {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

impl UniqueID for ResponseBuffer {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for ResponseBuffer {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for ResponseBuffer {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for ResponseBuffer {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for ResponseBuffer {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A wrapped client-side stream over a real loopback connection, and the server's end.
    async fn pair() -> (Stream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let l4 = pingora_core::protocols::l4::stream::Stream::from(client.unwrap());
        (ResponseBuffer::wrap(Box::new(l4)), server.unwrap().0)
    }

    fn buffer_of(stream: &Stream) -> &ResponseBuffer {
        stream.as_any().downcast_ref::<ResponseBuffer>().unwrap()
    }

    #[tokio::test]
    async fn small_writes_wait_for_the_flush_and_the_buffer_is_freed_after_it() {
        let (mut stream, mut peer) = pair().await;
        stream.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        stream.write_all(b"body").await.unwrap();
        assert_eq!(buffer_of(&stream).pending.len(), 23, "gathered, not sent");
        assert!(buffer_of(&stream).pending.capacity() >= CAPACITY);
        let mut got = [0u8; 1];
        let early = tokio::time::timeout(Duration::from_millis(50), peer.read(&mut got)).await;
        assert!(early.is_err(), "nothing reaches the peer before the flush");

        stream.flush().await.unwrap();
        assert_eq!(
            buffer_of(&stream).pending.capacity(),
            0,
            "freed at the flush"
        );
        let mut all = vec![0u8; 23];
        peer.read_exact(&mut all).await.unwrap();
        assert_eq!(&all, b"HTTP/1.1 200 OK\r\n\r\nbody");
    }

    #[tokio::test]
    async fn a_large_write_goes_out_after_what_was_gathered_in_order() {
        let (mut stream, mut peer) = pair().await;
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 200000\r\n\r\n";
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            peer.read_to_end(&mut all).await.unwrap();
            all
        });
        stream.write_all(head).await.unwrap();
        stream.write_all(&body).await.unwrap();
        stream.write_all(b"tail").await.unwrap();
        stream.write_all(b"!").await.unwrap();
        stream.flush().await.unwrap();
        stream.shutdown().await.unwrap();
        drop(stream);
        let all = reader.await.unwrap();
        let mut expected = head.to_vec();
        expected.extend_from_slice(&body);
        expected.extend_from_slice(b"tail!");
        assert_eq!(all.len(), expected.len());
        assert!(all == expected, "bytes arrive complete and in order");
    }

    #[tokio::test]
    async fn what_is_gathered_is_sent_when_the_stream_is_dropped() {
        let (mut stream, mut peer) = pair().await;
        stream.write_all(b"last words").await.unwrap();
        drop(stream);
        let mut all = Vec::new();
        peer.read_to_end(&mut all).await.unwrap();
        assert_eq!(&all, b"last words");
    }
}
