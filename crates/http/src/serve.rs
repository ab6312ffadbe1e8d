//! Accepting and serving connections, plain or TLS, so that no client can hold the server's
//! connections hostage.
//!
//! - Every connection has [`Connections::header_timeout`] to send each request's headers,
//!   the wait on an idle kept-alive connection included (hyper's header read timeout starts
//!   as soon as the connection is ready for its next request): slowloris clients and idle
//!   connections are cut.
//! - At most [`Connections::max`] connections are served at once, for the whole process:
//!   beyond that a connection gets a 503 `M_UNKNOWN` and is closed, rather than exhausting the
//!   process's file descriptors (which would lock every client out, and the database too).
//! - A connection whose client stops reading its answer for [`Connections::header_timeout`] is
//!   cut too (hyper has no write timeout; [`WriteStallGuard`]).
//! - On shutdown no new connection is accepted; in-flight requests are given ten seconds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::task::Poll;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, watch};

/// How long in-flight requests may run on after shutdown begins.
const DRAIN_ON_SHUTDOWN: Duration = Duration::from_secs(10);

/// How many refused connections are answered at once; beyond that they are closed unanswered.
const MAX_REFUSING: usize = 64;

/// The connection limits of one process, shared by all its listeners.
#[derive(Clone)]
pub struct Connections {
    /// How long a connection may take to send a request's headers (idle time included).
    pub header_timeout: Duration,
    /// How many connections are served at once.
    pub max: usize,
    slots: Arc<Semaphore>,
    refusing: Arc<Semaphore>,
}

impl Connections {
    /// Limits for a process serving at most `max` connections at once.
    pub fn new(max: usize, header_timeout: Duration) -> Self {
        Connections {
            header_timeout,
            max,
            slots: Arc::new(Semaphore::new(max)),
            refusing: Arc::new(Semaphore::new(MAX_REFUSING)),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then finishes in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    connections: Connections,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    accept_loop(listener, connections, true, shutdown, move |stream, peer, limits, stopping| {
        let app = app.clone();
        async move { serve_connection(stream, peer, app, limits.header_timeout, stopping).await }
    })
    .await
}

/// [`serve`] over TLS: each accepted connection is handshaken, then served over HTTP/1.1. A
/// failed handshake closes only that connection.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
    connections: Connections,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    accept_loop(listener, connections, false, shutdown, move |stream, peer, limits, stopping| {
        let (acceptor, app) = (acceptor.clone(), app.clone());
        async move {
            let tls = match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            serve_connection(tls, peer, app, limits.header_timeout, stopping).await
        }
    })
    .await
}

/// Accepts connections until `shutdown`, handing each to `handle` while a slot is free and
/// refusing it otherwise: with a plain-text 503 when `answer_refusals` (a TLS client would
/// need a handshake first: it sees the connection closed).
async fn accept_loop<H, F>(
    listener: tokio::net::TcpListener,
    connections: Connections,
    answer_refusals: bool,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    handle: H,
) -> std::io::Result<()>
where
    H: Fn(tokio::net::TcpStream, SocketAddr, Connections, watch::Receiver<bool>) -> F,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let mut shutdown = std::pin::pin!(shutdown);
    let (stop_tx, stopping) = watch::channel(false);
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for some to close.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        match connections.slots.clone().try_acquire_owned() {
            Ok(slot) => {
                let served = handle(stream, peer, connections.clone(), stopping.clone());
                tasks.spawn(async move {
                    served.await;
                    drop(slot);
                });
            }
            Err(_) => match connections.refusing.clone().try_acquire_owned() {
                Ok(permit) if answer_refusals => {
                    tracing::warn!(%peer, max = connections.max, "too many connections: refusing one with 503");
                    tokio::spawn(async move {
                        refuse(stream).await;
                        drop(permit);
                    });
                }
                _ => {
                    tracing::warn!(%peer, max = connections.max, "too many connections: closing one");
                    drop(stream)
                }
            },
        }
    }
    let _ = stop_tx.send(true);
    tasks.close();
    let _ = tokio::time::timeout(DRAIN_ON_SHUTDOWN, tasks.wait()).await;
    Ok(())
}

/// Serves one connection over HTTP/1.1 until the client closes it, it idles past
/// `header_timeout`, or shutdown (which lets the request in flight finish).
async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    app: Router,
    header_timeout: Duration,
    mut stopping: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        let mut app = app.clone();
        async move { tower::Service::call(&mut app, request.map(Body::new)).await }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
    let connection = builder.serve_connection(TokioIo::new(WriteStallGuard::new(io, header_timeout)), service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = async { stopping.wait_for(|stop| *stop).await.map(|_| ()) } => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// A connection's IO whose writes may not stall longer than `limit`: a client that stops
/// reading its answer would otherwise hold its connection (and its slot) for ever.
struct WriteStallGuard<I> {
    io: I,
    limit: Duration,
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<I> WriteStallGuard<I> {
    fn new(io: I, limit: Duration) -> Self {
        WriteStallGuard { io, limit, stalled: None }
    }

    /// After a write or flush attempt: `Pending` starts (or keeps) the stall clock, and past
    /// the limit becomes an error; anything else stops the clock.
    fn watch<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        polled: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let limit = self.limit;
        let clock = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if clock.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the client stopped reading")));
        }
        Poll::Pending
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WriteStallGuard<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WriteStallGuard<I> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = std::pin::Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Answers a connection over the limit with 503 and closes it. What the client sent is read
/// first (briefly): closing with unread data would reset the connection, and the client would
/// see the reset instead of the answer.
async fn refuse(mut stream: tokio::net::TcpStream) {
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        // Up to the end of the request's headers, or whatever arrives in time.
        let mut seen = Vec::new();
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if seen.windows(4).any(|w| w == b"\r\n\r\n") || seen.len() > 64 * 1024 {
                break;
            }
        }
    })
    .await;
    let body = r#"{"errcode":"M_UNKNOWN","error":"The server is serving too many connections; try again shortly"}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
