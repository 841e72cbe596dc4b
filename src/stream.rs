//! One TLS-or-plain TCP stream for both sides: the server's client connections (plain, then
//! maybe STARTTLS; or implicit TLS) and the upstream client's connections.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Plain TCP, or TLS over TCP on either side; every variant is `Unpin`, so the I/O impls
/// just forward.
#[derive(Debug)]
pub enum Stream {
    /// Plain text.
    Plain(TcpStream),
    /// TLS, server or client side. Boxed: a TLS session is large and idle plain
    /// connections should stay small.
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
    /// Only while the TCP stream is inside a TLS handshake (STARTTLS): every I/O call fails.
    Detached,
}

impl Stream {
    /// The plain TCP stream, leaving [`Stream::Detached`] behind; `None` (and the stream
    /// untouched) when it is not plain.
    pub fn take_plain(&mut self) -> Option<TcpStream> {
        match std::mem::replace(self, Stream::Detached) {
            Stream::Plain(tcp) => Some(tcp),
            other => {
                *self = other;
                None
            }
        }
    }
}

impl From<tokio_rustls::server::TlsStream<TcpStream>> for Stream {
    fn from(tls: tokio_rustls::server::TlsStream<TcpStream>) -> Self {
        Stream::Tls(Box::new(tokio_rustls::TlsStream::Server(tls)))
    }
}

impl From<tokio_rustls::client::TlsStream<TcpStream>> for Stream {
    fn from(tls: tokio_rustls::client::TlsStream<TcpStream>) -> Self {
        Stream::Tls(Box::new(tokio_rustls::TlsStream::Client(tls)))
    }
}

fn detached() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "stream is being upgraded to TLS",
    )
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => {
                let read = Pin::new(s.as_mut()).poll_read(cx, buf);
                send_queued_records(s, cx);
                read
            }
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }
}

/// Sends what rustls queued of its own while reading: the `no_renegotiation` warning that
/// answers a TLS 1.2 renegotiation request (RFC 5746 section 4.4 leaves refusing to the
/// server; the client waits for the answer) or a TLS 1.3 KeyUpdate reply (RFC 8446 section
/// 4.6.3). tokio-rustls would send them only with our next write, which for an SMTP server
/// waiting for a command may be the 421 of `timeouts.command`, minutes later. Best effort:
/// a write error shows at the next read or write; a full socket buffer registers the waker.
fn send_queued_records(tls: &mut tokio_rustls::TlsStream<TcpStream>, cx: &mut Context<'_>) {
    if tls.get_ref().1.wants_write() {
        let _ = Pin::new(tls).poll_flush(cx);
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Detached => Poll::Ready(Err(detached())),
        }
    }
}
