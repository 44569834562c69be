//! Serving HTTP (the proxy's public and admin APIs, the aggregator's listener): an accept loop
//! serving HTTP/1.1 and HTTP/2 with a header read timeout, so clients that send their headers
//! too slowly (slowloris) are disconnected, and optional TLS; graceful shutdown waits for every
//! open connection.
//!
//! The protocol is chosen before hyper sees the connection: by ALPN over TLS, by peeking at
//! the HTTP/2 preface over plain TCP (h2c with prior knowledge). hyper-util's auto builder
//! would read the preface itself and hand HTTP/1 its first 24 bytes as a separate read, which
//! makes every HTTP/1 connection's read buffer grow from 8 to 16 KB; with thousands of open
//! streams that was a fifth of the proxy's memory.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper::body::{Body, Incoming};
use hyper::server::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// Default of `header_read_timeout_ms`.
pub fn default_header_read_timeout_ms() -> u64 {
    30_000
}

/// A hyper service the listener can serve: an axum [`Router`] (through [`spawn`] / [`serve`])
/// or a hand-written one, such as the proxy's public API.
pub trait AppService:
    hyper::service::Service<
        Request<Incoming>,
        Response = Response<Self::Body>,
        Error = Self::Fail,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
    /// Response body.
    type Body: Body<Data: Send, Error: Into<BoxError>> + Send + 'static;
    /// Error of a call.
    type Fail: Into<BoxError>;
}

impl<S, B, E> AppService for S
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = E>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data: Send, Error: Into<BoxError>> + Send + 'static,
    E: Into<BoxError>,
{
    type Body = B;
    type Fail = E;
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// [`serve`] on its own task until `true` is sent on the returned sender.
pub fn spawn(
    listener: TcpListener,
    app: Router,
    header_read_timeout: Duration,
    tls: Option<TlsAcceptor>,
) -> (
    watch::Sender<bool>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    spawn_service(
        listener,
        TowerToHyperService::new(app),
        header_read_timeout,
        tls,
    )
}

/// [`serve_service`] on its own task until `true` is sent on the returned sender.
pub fn spawn_service<S: AppService>(
    listener: TcpListener,
    app: S,
    header_read_timeout: Duration,
    tls: Option<TlsAcceptor>,
) -> (
    watch::Sender<bool>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(serve_service(
        listener,
        app,
        header_read_timeout,
        tls,
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        },
    ));
    (stop, task)
}

/// Serve the axum `app` on `listener`; see [`serve_service`].
pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_read_timeout: Duration,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = TowerToHyperService::new(app);
    serve_service(listener, app, header_read_timeout, tls, shutdown).await
}

/// Serve `app` on `listener` (over TLS when `tls` is set) until `shutdown` resolves, then
/// wait for open connections to finish (each is told to close once its in-flight request is
/// done). A TLS handshake must also complete within `header_read_timeout`.
///
/// The connections are tasks of a [`JoinSet`] owned by this future: dropping it (aborting
/// the task that serves, when a grace period is over) cancels every connection, so nothing
/// of theirs (a usage meter, a rate-limit lease) outlives the server.
pub async fn serve_service<S: AppService>(
    listener: TcpListener,
    app: S,
    header_read_timeout: Duration,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, _peer) = tokio::select! {
            () = &mut shutdown => break,
            // Reap finished connections so the set holds only open ones.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let app = app.clone();
        let stop = stop_rx.clone();
        // Separate tasks: a plain connection's task is not sized for the TLS path's futures.
        match tls.clone() {
            None => {
                conns.spawn(async move {
                    let h2 = match tokio::time::timeout(header_read_timeout, h2_preface(&tcp)).await
                    {
                        Ok(Ok(h2)) => h2,
                        Ok(Err(e)) => return tracing::debug!(error = %e, "connection failed"),
                        Err(_) => return tracing::debug!("no request within the header timeout"),
                    };
                    serve_conn(tcp, h2, app, header_read_timeout, stop).await;
                });
            }
            Some(acceptor) => {
                conns.spawn(async move {
                    match tokio::time::timeout(header_read_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(io)) => {
                            let h2 = io.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
                            serve_conn(io, h2, app, header_read_timeout, stop).await;
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                });
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while conns.join_next().await.is_some() {}
    Ok(())
}

/// The client preface of HTTP/2 (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a plain connection opens with the HTTP/2 preface (h2c with prior knowledge), looked
/// at without consuming it. Anything else, including an early close, is HTTP/1.
async fn h2_preface(tcp: &tokio::net::TcpStream) -> std::io::Result<bool> {
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let n = tcp.peek(&mut buf).await?;
        if n == 0 || buf[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // A partial preface (rare: it is sent in one piece): peek again shortly.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn serve_conn<I, S: AppService>(
    io: I,
    h2: bool,
    service: S,
    header_read_timeout: Duration,
    stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    if h2 {
        let conn = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .serve_connection(io, service);
        drive(conn, stop).await;
    } else {
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout)
            .serve_connection(io, service);
        drive(conn, stop).await;
    }
}

/// Run a connection; once `stop` turns true, tell it to close after its in-flight requests.
async fn drive<C>(conn: C, mut stop: watch::Receiver<bool>)
where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            return;
        }
        _ = stop.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
    }
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn plain_listener() -> (std::net::SocketAddr, watch::Sender<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/", axum::routing::get(|| async { "hello" }));
        let (stop, _task) = spawn(listener, app, Duration::from_millis(300), None);
        (addr, stop)
    }

    #[tokio::test]
    async fn plain_connections_speak_http1_or_h2c_by_their_first_bytes() {
        let (addr, stop) = plain_listener().await;
        let url = format!("http://{addr}/");
        for h2c in [false, true] {
            let mut builder = reqwest::Client::builder();
            if h2c {
                builder = builder.http2_prior_knowledge();
            }
            let resp = builder.build().unwrap().get(&url).send().await.unwrap();
            let want = if h2c {
                reqwest::Version::HTTP_2
            } else {
                reqwest::Version::HTTP_11
            };
            assert_eq!(resp.version(), want);
            assert_eq!(resp.text().await.unwrap(), "hello");
        }
        let _ = stop.send(true);
    }

    #[tokio::test]
    async fn a_silent_or_slow_client_is_disconnected_after_the_header_timeout() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (addr, stop) = plain_listener().await;
        // Silent: nothing sent at all. Slow: a partial request line or HTTP/2 preface.
        for first in [&b""[..], &b"GET / HT"[..], &b"PRI * HTTP/2.0"[..]] {
            let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
            sock.write_all(first).await.unwrap();
            let mut buf = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut buf));
            assert!(read.await.is_ok(), "still open after 5 s");
        }
        let _ = stop.send(true);
    }
}
