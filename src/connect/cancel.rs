//! The cancel request, sent as libpq sends it: after writing it, the connection stays open
//! until the server closes it, which it does once it has acted on the request. Where the
//! connection settings could name more than one server, tokio-postgres's own request goes
//! instead, to the very address the run's connection used, and closes at once.
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
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
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

/// Sends the cancel request for `token` to the server the run's connection reached. Where
/// `pg` names exactly one address (one host: a Unix socket, an IP address, a `hostaddr`, or
/// a name with one address), over a connection held open as above; where it could name
/// several (hosts to choose from, a name with several addresses), tokio-postgres's own
/// request goes to the very address the connection used, closed at once as before: a cancel
/// sent to another server would cancel nothing there. Connecting takes at most `within`,
/// the server's closing at most [`ANSWER_WITHIN`] more.
pub(super) async fn direct(
    token: CancelToken,
    pg: Config,
    mut connector: Connector,
    within: Duration,
) -> Result<(), String> {
    let found = tokio::time::timeout(within, one_address(&pg)).await;
    let Some(target) = found.ok().flatten() else {
        let sent = tokio::time::timeout(within + ANSWER_WITHIN, token.cancel_query(connector));
        return match sent.await {
            Ok(sent) => sent.map_err(|e| e.to_string()),
            Err(_) => Err(format!(
                "no answer within {}s",
                (within + ANSWER_WITHIN).as_secs()
            )),
        };
    };
    let (stream, host) = match tokio::time::timeout(within, target.connect()).await {
        Ok(connected) => connected.map_err(|e| e.to_string())?,
        Err(_) => return Err(format!("no connection within {}s", within.as_secs())),
    };
    let handshake = <Connector as MakeTlsConnect<Socket>>::make_tls_connect(&mut connector, &host)
        .map_err(|e| e.to_string())?;
    send(&token, stream, handshake).await
}

/// How long the server may take, once connected, to read a cancel request and close the
/// connection (TLS handshake included): the run's grace after a signal is 6 s.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// Sends the cancel request for `token` over `stream`, already connected (and, through
/// `tls`, made TLS when the run's connection was), then waits, at most [`ANSWER_WITHIN`],
/// for the server to close it.
pub(super) async fn send<S, T>(token: &CancelToken, stream: S, tls: T) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: TlsConnect<UntilClosed<S>>,
{
    let sent = tokio::time::timeout(
        ANSWER_WITHIN,
        token.cancel_query_raw(UntilClosed(stream), tls),
    );
    match sent.await {
        Ok(sent) => sent.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "the server did not close the cancel request's connection within {}s",
            ANSWER_WITHIN.as_secs()
        )),
    }
}

/// The one address `pg` names, when it names one.
enum Target {
    Tcp(std::net::SocketAddr, String),
    Unix(std::path::PathBuf),
}

impl Target {
    /// Connects; with the host's name, for the TLS handshake.
    async fn connect(self) -> io::Result<(Link, String)> {
        Ok(match self {
            Target::Tcp(addr, name) => (Link::Tcp(TcpStream::connect(addr).await?), name),
            Target::Unix(path) => (Link::Unix(UnixStream::connect(path).await?), String::new()),
        })
    }
}

/// The one address the run's connection can have reached: one host, with its port (one
/// port for all, or 5432); by its `hostaddr` when given, a Unix socket directory by its
/// `.s.PGSQL.<port>`, a name when it resolves to exactly one address.
async fn one_address(pg: &Config) -> Option<Target> {
    let ([host], addrs) = (pg.get_hosts(), pg.get_hostaddrs()) else {
        return None;
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    match (host, addrs) {
        (Host::Unix(dir), []) => Some(Target::Unix(dir.join(format!(".s.PGSQL.{port}")))),
        (Host::Tcp(name), [addr]) => Some(Target::Tcp((*addr, port).into(), name.clone())),
        (Host::Tcp(name), []) => {
            let found = tokio::net::lookup_host((name.as_str(), port)).await.ok()?;
            let found: Vec<std::net::SocketAddr> = found.collect();
            match found[..] {
                [addr] => Some(Target::Tcp(addr, name.clone())),
                _ => None,
            }
        }
        _ => None,
    }
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

/// The server session's pid as the server announced it when the connection opened (its
/// BackendKeyData), or `None` when it announced none, or one no server process can have.
/// tokio-postgres keeps the pid for the cancel request and offers no getter for it, so the
/// request is written here into memory and read back; nothing is sent. Through a pooler this
/// is the pooler's own number, which no server session has: PgBouncer draws one at random for
/// each client, almost always above Linux's largest pid ([`PID_MAX`]), and then it is not
/// taken at all (a setup checked against it would fail, and put an error in the server's log
/// at every run).
pub async fn announced_pid(token: &CancelToken) -> Option<i32> {
    let mut written = Vec::new();
    token
        .cancel_query_raw(Written(&mut written), Passthrough)
        .await
        .ok()?;
    // The request is its last 16 bytes: length 16, code 80877102, pid, secret key.
    let request = written.get(written.len().checked_sub(16)?..)?;
    let (head, pid) = (&request[..8], &request[8..12]);
    let pid = i32::from_be_bytes(pid.try_into().ok()?);
    (head == [0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e] && (1..=PID_MAX).contains(&pid)).then_some(pid)
}

/// The largest pid Linux gives a process (`PID_MAX_LIMIT` on 64-bit systems).
const PID_MAX: i32 = 1 << 22;

/// A stream that keeps what is written to it and answers a TLS request with yes (`S`), so
/// that the cancel request is written whatever `sslmode` the run's connection has.
struct Written<'a>(&'a mut Vec<u8>);

impl AsyncRead for Written<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        buf.put_slice(b"S");
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Written<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().0.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl TlsStream for Written<'_> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

/// The "TLS" of [`announced_pid`]'s request: none, the bytes stay readable.
struct Passthrough;

impl<'a> TlsConnect<Written<'a>> for Passthrough {
    type Stream = Written<'a>;
    type Error = io::Error;
    type Future = std::future::Ready<Result<Written<'a>, io::Error>>;

    fn connect(self, stream: Written<'a>) -> Self::Future {
        std::future::ready(Ok(stream))
    }
}
