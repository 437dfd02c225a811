//! The cancel request, sent as libpq sends it: after writing it, the connection stays open
//! until the server closes it, which it does once it has acted on the request.
//!
//! tokio-postgres closes its side as soon as the request is written. PgBouncer 1.18 (Debian
//! 12's) then frees the cancel's client while it is still forwarding the request to the
//! server, and exits on the fatal error that follows (`disconnect_client(): bad client
//! state: 0`, pgbouncer/pgbouncer#801): a SIGTERM to a run through it took the pooler down,
//! with every connection of the bot, in 5 of 10 tries here.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::config::Host;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{CancelToken, Config, Socket};

use super::tls::Connector;

/// The connection to a server: TCP or a Unix socket.
enum Link {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl AsyncRead for Link {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Link::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Link::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Link {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Link::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Link::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Link::Tcp(s) => Pin::new(s).poll_flush(cx),
            Link::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Link::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Link::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Sends the cancel request for `token` to the server `pg` names, the first of its hosts that
/// accepts a connection, as the run's own connection was made; each host tried for at most
/// `within`.
pub(super) async fn direct(
    token: CancelToken,
    pg: Config,
    mut connector: Connector,
    within: Duration,
) -> Result<(), String> {
    let (stream, host) = dial(&pg, within).await?;
    let handshake = <Connector as MakeTlsConnect<Socket>>::make_tls_connect(&mut connector, &host)
        .map_err(|e| e.to_string())?;
    send(&token, stream, handshake).await
}

/// Sends the cancel request for `token` over `stream`, already connected (and, through
/// `tls`, made TLS when the run's connection was), then waits for the server to close it.
pub(super) async fn send<S, T>(token: &CancelToken, stream: S, tls: T) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: TlsConnect<UntilClosed<S>>,
{
    let sent = token.cancel_query_raw(UntilClosed(stream), tls).await;
    sent.map_err(|e| e.to_string())
}

/// Connects to the first of `pg`'s hosts that accepts, with its port (one port for all, or
/// 5432), by its `hostaddr` when given; a Unix socket directory by its `.s.PGSQL.<port>`.
/// With the host's name, for the TLS handshake.
async fn dial(pg: &Config, within: Duration) -> Result<(Link, String), String> {
    let (ports, addrs) = (pg.get_ports(), pg.get_hostaddrs());
    let hosts: Vec<(Host, Option<std::net::IpAddr>, u16)> = (pg.get_hosts().iter().enumerate())
        .map(|(i, host)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            (host.clone(), addrs.get(i).copied(), port)
        })
        .collect();
    let mut last = String::from("no host to send the cancel request to");
    for (host, addr, port) in hosts {
        let attempt = async move {
            let stream = match (&host, addr) {
                (Host::Tcp(_), Some(addr)) => Link::Tcp(TcpStream::connect((addr, port)).await?),
                (Host::Tcp(name), None) => {
                    Link::Tcp(TcpStream::connect((name.as_str(), port)).await?)
                }
                (Host::Unix(dir), _) => {
                    Link::Unix(UnixStream::connect(dir.join(format!(".s.PGSQL.{port}"))).await?)
                }
            };
            let name = match host {
                Host::Tcp(name) => name,
                Host::Unix(_) => String::new(),
            };
            Ok::<_, io::Error>((stream, name))
        };
        match tokio::time::timeout(within, attempt).await {
            Ok(Ok(connected)) => return Ok(connected),
            Ok(Err(error)) => last = error.to_string(),
            Err(_) => last = format!("no connection within {}s", within.as_secs()),
        }
    }
    Err(last)
}

/// A stream whose shutdown waits for the other side to close the connection rather than
/// closing this side first: the server answers a cancel request only by closing it.
pub(super) struct UntilClosed<S>(S);

impl<S: AsyncRead + Unpin> AsyncRead for UntilClosed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for UntilClosed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    /// Reads until the other side closes; a reset counts as closed. The connection is then
    /// dropped, not shut down: there is nothing left to say on it.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let inner = &mut self.get_mut().0;
        let mut scratch = [0; 64];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match ready!(Pin::new(&mut *inner).poll_read(cx, &mut buf)) {
                Ok(()) if !buf.filled().is_empty() => continue,
                _ => return Poll::Ready(Ok(())),
            }
        }
    }
}
