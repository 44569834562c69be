//! The upstream HTTP client: hyper-util's pooled client over rustls (HTTP/1.1 by default; for
//! deployments that set `http2`, HTTP/2 when the upstream accepts it by ALPN; for those that
//! set `http2_prior_knowledge`, HTTP/2 without negotiation), Mozilla's roots, the ring
//! provider. Requests are spread over
//! shards of pools ([`super::pool`]) so that no HTTP/2 connection carries more streams than
//! the provider allows.
//!
//! Used directly rather than through reqwest so that each upstream connection's HTTP/1 read
//! buffer has a fixed size ([`READ_BUF_BYTES`]): hyper's adaptive buffer otherwise grows up to
//! about 400 KB per connection while large bodies are read, and every open stream holds one
//! connection. It also skips reqwest's per-request layers (URL parsing, boxed timeouts); the
//! request's deadline is enforced here, body included ([`BodyStream`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::{Instant, Sleep};
use tokio_rustls::rustls;

use super::pool::{Origin, Protocol, Shards, Slot};
use crate::http::error::ApiError;

/// Body of an upstream request (always complete before sending: the proxy parsed it).
pub type RequestBody = Full<Bytes>;

/// Size of each upstream connection's HTTP/1 read buffer. Also the largest response head an
/// upstream may send (providers send 1-3 KB).
pub const READ_BUF_BYTES: usize = 8 * 1024;

type Pooled = Client<HttpsConnector<HttpConnector>, RequestBody>;

/// Flow-control window of one HTTP/2 upstream stream: how much of a response the proxy buffers
/// for a slow client before the provider has to wait (over HTTP/1 TCP's buffers bound this).
pub const H2_STREAM_WINDOW_BYTES: u32 = 256 * 1024;

/// Flow-control window of one HTTP/2 upstream connection (shared by its streams).
pub const H2_CONN_WINDOW_BYTES: u32 = 2 * 1024 * 1024;

/// Upstream client (cheap to clone: clones share the pools). Requests are spread over
/// [`Shards`] so that no HTTP/2 connection carries more than `max_streams` at once.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// Offers only `http/1.1` by ALPN.
    http1: HttpsConnector<HttpConnector>,
    /// Offers `h2` and `http/1.1` by ALPN.
    http2: HttpsConnector<HttpConnector>,
    shards: Arc<Shards<Pooled>>,
}

impl Upstream {
    /// A client whose connection attempts give up after `connect_timeout` and that opens at
    /// most `max_streams` concurrent streams on one HTTP/2 connection.
    pub fn new(connect_timeout: Duration, max_streams: usize) -> Result<Self, rustls::Error> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let builder = || {
            HttpsConnectorBuilder::new()
                .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
                .map(|b| b.https_or_http().enable_http1())
        };
        Ok(Self {
            http1: builder()?.wrap_connector(http.clone()),
            http2: builder()?.enable_http2().wrap_connector(http),
            shards: Arc::new(Shards::new(max_streams)),
        })
    }

    /// The pooled client of a new shard for `protocol`.
    fn pool(&self, protocol: Protocol) -> Pooled {
        let (connector, http2_only) = match protocol {
            Protocol::Http1 => (&self.http1, false),
            Protocol::Http2 => (&self.http2, false),
            Protocol::Http2PriorKnowledge => (&self.http2, true),
        };
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http1_read_buf_exact_size(READ_BUF_BYTES)
            .http2_only(http2_only)
            .http2_initial_stream_window_size(H2_STREAM_WINDOW_BYTES)
            .http2_initial_connection_window_size(H2_CONN_WINDOW_BYTES)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .http2_keep_alive_timeout(Duration::from_secs(10))
            .build(connector.clone())
    }

    /// Send `req` to `origin` (its scheme and authority, and the protocol spoken); resolves
    /// with the response head (the body streams afterwards and holds the request's place on
    /// its connection).
    pub async fn send(
        &self,
        req: http::Request<RequestBody>,
        origin: &Origin,
    ) -> Result<http::Response<UpstreamBody>, ApiError> {
        let (client, slot) = self.shards.checkout(origin, || self.pool(origin.protocol));
        let resp = client.request(req).await.map_err(|e| classify(&e))?;
        Ok(resp.map(|body| UpstreamBody { body, _slot: slot }))
    }
}

/// Upstream clients by connect timeout (a model's `timeouts.connect_ms`), built on first use.
#[derive(Debug)]
pub struct Clients {
    max_streams: usize,
    by_connect_ms: Mutex<foldhash::HashMap<u64, Upstream>>,
}

impl Clients {
    /// Clients that open at most `max_streams` streams on one HTTP/2 connection
    /// (`upstream_http2_max_streams`).
    pub fn new(max_streams: usize) -> Self {
        Self {
            max_streams,
            by_connect_ms: Mutex::new(foldhash::HashMap::default()),
        }
    }

    /// The client for a connect timeout.
    pub fn get(&self, connect_ms: u64) -> Result<Upstream, ApiError> {
        let mut map = self.by_connect_ms.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(&connect_ms) {
            return Ok(c.clone());
        }
        let c = Upstream::new(Duration::from_millis(connect_ms), self.max_streams)
            .map_err(|e| ApiError::UpstreamUnavailable(format!("TLS setup failed: {e}")))?;
        map.insert(connect_ms, c.clone());
        Ok(c)
    }
}

/// An upstream response body; holds the request's place on its connection until dropped.
#[derive(Debug)]
pub struct UpstreamBody {
    body: Incoming,
    _slot: Slot,
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Map a transport error to the API error a client sees (never echoing the URL, which may
/// carry credentials in unusual setups).
fn classify(e: &hyper_util::client::legacy::Error) -> ApiError {
    let kind = if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    ApiError::UpstreamUnavailable(kind.to_string())
}

/// Error while reading an upstream body.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The request's total timeout passed while the body was still arriving.
    #[error("upstream total timeout")]
    Timeout,
    /// The connection broke or the framing was invalid.
    #[error("upstream response body broken")]
    Broken(#[source] hyper::Error),
    /// A non-streamed response over [`MAX_RESPONSE_BYTES`].
    #[error("upstream response larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
}

/// Largest non-streamed upstream response read (an answer, not a download): a broken or
/// hostile upstream cannot make the proxy buffer without bound.
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::Timeout => ApiError::UpstreamTimeout,
            BodyError::Broken(_) => ApiError::UpstreamUnavailable("response body broken".into()),
            BodyError::TooLarge => ApiError::UpstreamUnavailable(format!(
                "response larger than {} MiB",
                MAX_RESPONSE_BYTES >> 20
            )),
        }
    }
}

/// An upstream response body as a stream of data chunks that fails with
/// [`BodyError::Timeout`] at the request's deadline (trailers are skipped).
#[derive(Debug)]
pub struct BodyStream {
    body: UpstreamBody,
    deadline: Pin<Box<Sleep>>,
    /// The waker the deadline's timer last registered: it wakes that task once elapsed, so
    /// it is polled again only for another waker (a poll per chunk was ~2 % of a stream's
    /// instructions).
    armed: Option<Waker>,
    done: bool,
}

impl BodyStream {
    /// Stream `body` until `deadline`.
    pub fn new(body: UpstreamBody, deadline: Instant) -> Self {
        Self {
            body,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            armed: None,
            done: false,
        }
    }

    /// Read the whole body (up to the deadline and [`MAX_RESPONSE_BYTES`]).
    pub async fn collect(self) -> Result<Bytes, BodyError> {
        self.collect_at_most(MAX_RESPONSE_BYTES).await
    }

    async fn collect_at_most(self, max: usize) -> Result<Bytes, BodyError> {
        let deadline = self.deadline.deadline();
        let body = http_body_util::Limited::new(self.body, max);
        match tokio::time::timeout_at(deadline, BodyExt::collect(body)).await {
            Ok(Ok(body)) => Ok(body.to_bytes()),
            Ok(Err(e)) => match e.downcast::<hyper::Error>() {
                Ok(e) => Err(BodyError::Broken(*e)),
                // `LengthLimitError`, the only other error of `Limited`.
                Err(_) => Err(BodyError::TooLarge),
            },
            Err(_) => Err(BodyError::Timeout),
        }
    }
}

impl Stream for BodyStream {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.deadline.is_elapsed() {
            self.done = true;
            return Poll::Ready(Some(Err(BodyError::Timeout)));
        }
        loop {
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        if !data.is_empty() {
                            return Poll::Ready(Some(Ok(data)));
                        }
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(BodyError::Broken(e))));
                }
                Poll::Ready(None) => {
                    self.done = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    // Once elapsed, the timer wakes the armed task and the check above ends
                    // the body.
                    if !self.armed.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        if self.deadline.as_mut().poll(cx).is_ready() {
                            self.done = true;
                            return Poll::Ready(Some(Err(BodyError::Timeout)));
                        }
                        self.armed = Some(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `POST {}` to `url`.
    fn post(url: &str) -> http::Request<RequestBody> {
        http::Request::post(url)
            .body(RequestBody::new(Bytes::from_static(b"{}")))
            .unwrap()
    }

    #[tokio::test]
    async fn builds_with_ring_and_webpki_roots() {
        assert!(Upstream::new(Duration::from_millis(100), 100).is_ok());
    }

    #[tokio::test]
    async fn refused_connection_is_an_upstream_error_without_the_url() {
        let client = Upstream::new(Duration::from_millis(500), 100).unwrap();
        // Port 9 (discard) on loopback: nothing listens there.
        let req = post("http://user:secret@127.0.0.1:9/v1/chat/completions");
        let err = client
            .send(
                req,
                &Origin::of(&"http://127.0.0.1:9".parse().unwrap(), Protocol::Http1),
            )
            .await
            .unwrap_err();
        let text = format!("{err:?}");
        assert!(matches!(err, ApiError::UpstreamUnavailable(_)), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }

    /// A one-connection upstream that writes `head_and_body` raw, then keeps the socket open.
    async fn raw_upstream(head_and_body: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = sock.read(&mut buf).await;
            sock.write_all(head_and_body.as_bytes()).await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        format!("http://{addr}/v1/chat/completions")
    }

    async fn response(url: &str) -> http::Response<UpstreamBody> {
        let client = Upstream::new(Duration::from_secs(1), 100).unwrap();
        let origin = Origin::of(&url.parse().unwrap(), Protocol::Http1);
        client.send(post(url), &origin).await.unwrap()
    }

    #[tokio::test]
    async fn a_stalled_stream_ends_with_a_timeout_at_the_deadline() {
        use futures::StreamExt;
        let url = raw_upstream(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n6\r\ndata: \r\n",
        )
        .await;
        let resp = response(&url).await;
        let started = Instant::now();
        let mut body = BodyStream::new(resp.into_body(), started + Duration::from_millis(200));
        assert_eq!(body.next().await.unwrap().unwrap(), "data: ");
        assert!(matches!(body.next().await, Some(Err(BodyError::Timeout))));
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(body.next().await.is_none(), "ends after the timeout");
        assert!(matches!(
            ApiError::from(BodyError::Timeout),
            ApiError::UpstreamTimeout
        ));
    }

    #[tokio::test]
    async fn collect_reads_a_whole_body_in_pieces() {
        let url = raw_upstream(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n",
        )
        .await;
        let resp = response(&url).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        let body = BodyStream::new(resp.into_body(), deadline)
            .collect()
            .await
            .unwrap();
        assert_eq!(body, r#"{"a":1}"#);
    }

    #[tokio::test]
    async fn collect_stops_at_its_limit() {
        let url = raw_upstream("HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n{\"a\":123456}").await;
        let resp = response(&url).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        let err = BodyStream::new(resp.into_body(), deadline)
            .collect_at_most(8)
            .await
            .unwrap_err();
        assert!(matches!(err, BodyError::TooLarge), "{err:?}");
        assert!(matches!(
            ApiError::from(err),
            ApiError::UpstreamUnavailable(m) if m.contains("64 MiB")
        ));
    }

    /// An h2c server whose responses send their head and then stay open; counts connections
    /// and HTTP/2 requests.
    async fn h2c_upstream() -> (
        String,
        Arc<std::sync::atomic::AtomicUsize>,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let h2_requests = Arc::new(AtomicUsize::new(0));
        let (c, r) = (Arc::clone(&conns), Arc::clone(&h2_requests));
        tokio::spawn(async move {
            loop {
                let (sock, _) = listener.accept().await.unwrap();
                c.fetch_add(1, Ordering::SeqCst);
                let r = Arc::clone(&r);
                let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    if req.version() == http::Version::HTTP_2 {
                        r.fetch_add(1, Ordering::SeqCst);
                    }
                    let body = http_body_util::StreamBody::new(futures::stream::pending::<
                        Result<Frame<Bytes>, std::convert::Infallible>,
                    >());
                    async move { Ok::<_, std::convert::Infallible>(http::Response::new(body)) }
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(sock), svc),
                );
            }
        });
        (
            format!("http://{addr}/v1/chat/completions"),
            conns,
            h2_requests,
        )
    }

    #[tokio::test]
    async fn h2c_streams_are_spread_over_connections_of_at_most_max_streams() {
        use std::sync::atomic::Ordering;
        let (url, conns, h2_requests) = h2c_upstream().await;
        let client = Upstream::new(Duration::from_secs(1), 2).unwrap();
        let origin = Origin::of(&url.parse().unwrap(), Protocol::Http2PriorKnowledge);
        let send = || client.send(post(&url), &origin);
        let a = send().await.unwrap();
        let b = send().await.unwrap();
        let c = send().await.unwrap();
        assert_eq!(conns.load(Ordering::SeqCst), 2, "2 streams per connection");
        drop(a);
        let d = send().await.unwrap();
        assert_eq!(
            conns.load(Ordering::SeqCst),
            2,
            "the freed stream is reused"
        );
        assert_eq!(h2_requests.load(Ordering::SeqCst), 4, "all over HTTP/2");
        assert!([&b, &c, &d]
            .iter()
            .all(|r| r.version() == http::Version::HTTP_2));
    }
}
