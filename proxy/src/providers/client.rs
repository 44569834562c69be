//! The upstream HTTP client: hyper-util's pooled client over rustls (HTTP/1.1, or HTTP/2 when
//! the upstream offers it by ALPN), Mozilla's roots, the ring provider.
//!
//! Used directly rather than through reqwest so that each upstream connection's HTTP/1 read
//! buffer has a fixed size ([`READ_BUF_BYTES`]): hyper's adaptive buffer otherwise grows up to
//! about 400 KB per connection while large bodies are read, and every open stream holds one
//! connection. It also skips reqwest's per-request layers (URL parsing, boxed timeouts); the
//! request's deadline is enforced here, body included ([`BodyStream`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::{Instant, Sleep};
use tokio_rustls::rustls;

use crate::http::error::ApiError;

/// Body of an upstream request (always complete before sending: the proxy parsed it).
pub type RequestBody = Full<Bytes>;

/// Size of each upstream connection's HTTP/1 read buffer. Also the largest response head an
/// upstream may send (providers send 1-3 KB).
pub const READ_BUF_BYTES: usize = 8 * 1024;

/// Pooled upstream client (cheap to clone: clones share the pool).
#[derive(Clone, Debug)]
pub struct Upstream {
    inner: Client<HttpsConnector<HttpConnector>, RequestBody>,
}

impl Upstream {
    /// A client whose connection attempts give up after `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> Result<Self, rustls::Error> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let provider = rustls::crypto::ring::default_provider();
        let https = HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(provider)?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http1_read_buf_exact_size(READ_BUF_BYTES)
            .build(https);
        Ok(Self { inner })
    }

    /// Send `req`; resolves with the response head (the body streams afterwards).
    pub async fn send(
        &self,
        req: http::Request<RequestBody>,
    ) -> Result<http::Response<Incoming>, ApiError> {
        self.inner.request(req).await.map_err(|e| classify(&e))
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
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::Timeout => ApiError::UpstreamTimeout,
            BodyError::Broken(_) => ApiError::UpstreamUnavailable("response body broken".into()),
        }
    }
}

/// An upstream response body as a stream of data chunks that fails with
/// [`BodyError::Timeout`] at the request's deadline (trailers are skipped).
#[derive(Debug)]
pub struct BodyStream {
    body: Incoming,
    deadline: Pin<Box<Sleep>>,
    done: bool,
}

impl BodyStream {
    /// Stream `body` until `deadline`.
    pub fn new(body: Incoming, deadline: Instant) -> Self {
        Self {
            body,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            done: false,
        }
    }

    /// Read the whole body (up to the deadline).
    pub async fn collect(self) -> Result<Bytes, BodyError> {
        let deadline = self.deadline.deadline();
        match tokio::time::timeout_at(deadline, BodyExt::collect(self.body)).await {
            Ok(Ok(body)) => Ok(body.to_bytes()),
            Ok(Err(e)) => Err(BodyError::Broken(e)),
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
                    if self.deadline.as_mut().poll(cx).is_ready() {
                        self.done = true;
                        return Poll::Ready(Some(Err(BodyError::Timeout)));
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

    #[tokio::test]
    async fn builds_with_ring_and_webpki_roots() {
        assert!(Upstream::new(Duration::from_millis(100)).is_ok());
    }

    #[tokio::test]
    async fn refused_connection_is_an_upstream_error_without_the_url() {
        let client = Upstream::new(Duration::from_millis(500)).unwrap();
        // Port 9 (discard) on loopback: nothing listens there.
        let req = http::Request::post("http://user:secret@127.0.0.1:9/v1/chat/completions")
            .body(RequestBody::new(Bytes::from_static(b"{}")))
            .unwrap();
        let err = client.send(req).await.unwrap_err();
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

    async fn response(url: &str) -> http::Response<Incoming> {
        let client = Upstream::new(Duration::from_secs(1)).unwrap();
        let req = http::Request::post(url)
            .body(RequestBody::new(Bytes::from_static(b"{}")))
            .unwrap();
        client.send(req).await.unwrap()
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
}
