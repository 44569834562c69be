//! A bare HTTP/1.1 forwarder: hyper's server and hyper-util's pooled client with nothing in
//! between, the reference hop of `make bench`.
//!
//! It is what any proxy on Tollgate's HTTP stack pays for one hop on the machine at hand
//! before doing anything of its own: no parsing, no routing, no metering. Requests go to one
//! upstream with their method, path, query, headers (hop-by-hop ones dropped, `host`
//! rewritten) and body streamed; responses come back streamed, so SSE passes as it arrives.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context as _;
use http::header::{self, HeaderName};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Headers that belong to one connection and are not forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 5] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

type Body = BoxBody<bytes::Bytes, hyper::Error>;

/// The upstream side: where requests go and the pooled client that takes them there.
#[derive(Clone, Debug)]
struct Upstream {
    client: Client<HttpConnector, Incoming>,
    /// `scheme://authority` of the upstream.
    origin: String,
    host: HeaderValue,
}

impl Upstream {
    fn new(upstream: &str) -> anyhow::Result<Self> {
        let uri: Uri = upstream
            .parse()
            .with_context(|| format!("upstream {upstream:?} is not a URL"))?;
        let authority = uri
            .authority()
            .with_context(|| format!("upstream {upstream:?} has no host"))?;
        if uri.scheme_str() != Some("http") {
            anyhow::bail!("upstream {upstream:?}: only http:// is forwarded");
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            origin: format!("http://{authority}"),
            host: HeaderValue::from_str(authority.as_str())?,
        })
    }

    async fn forward(&self, req: Request<Incoming>) -> Response<Body> {
        let (mut parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = match format!("{}{path}", self.origin).parse() {
            Ok(u) => u,
            Err(_) => return status(StatusCode::BAD_REQUEST),
        };
        for h in &HOP_BY_HOP {
            parts.headers.remove(h);
        }
        parts.headers.insert(header::HOST, self.host.clone());
        match self.client.request(Request::from_parts(parts, body)).await {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                for h in &HOP_BY_HOP {
                    parts.headers.remove(h);
                }
                Response::from_parts(parts, body.boxed())
            }
            Err(e) => {
                tracing::debug!(error = %e, "upstream request failed");
                status(StatusCode::BAD_GATEWAY)
            }
        }
    }
}

fn status(code: StatusCode) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(bytes::Bytes::new())
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = code;
    resp
}

/// Forward every connection accepted on `listener` to `upstream` (`http://host:port`) until
/// `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    upstream: &str,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let up = Upstream::new(upstream)?;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, _) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => accepted.context("accepting a connection")?,
        };
        let _ = tcp.set_nodelay(true);
        let up = up.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let up = up.clone();
                async move { Ok::<_, Infallible>(up.forward(req).await) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await
            {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}

/// Bind `listen` and [`serve`] on it.
pub async fn run(
    listen: SocketAddr,
    upstream: &str,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    serve(listener, upstream, shutdown).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{MockConfig, MockServer};

    #[tokio::test]
    async fn forwards_json_and_streams_to_the_upstream() {
        let mock = MockServer::start("127.0.0.1:0".parse().unwrap(), MockConfig::default())
            .await
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let upstream = mock.base_url();
        let task = tokio::spawn(async move {
            serve(listener, &upstream, async {
                let _ = stopped.await;
            })
            .await
        });
        let http = reqwest::Client::new();
        let url = format!("http://{addr}/v1/chat/completions");
        for stream in [false, true] {
            let body = serde_json::json!({"model": "m", "max_tokens": 3, "stream": stream,
                "messages": [{"role": "user", "content": "hi"}]});
            let resp = http.post(&url).json(&body).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            let text = resp.text().await.unwrap();
            if stream {
                assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
            } else {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["usage"]["completion_tokens"], 3);
            }
        }
        let missing = http
            .get(format!("http://{addr}/nope"))
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), 404, "the upstream's answer, as it is");
        assert_eq!(mock.stats().requests, 2);
        let _ = stop.send(());
        task.await.unwrap().unwrap();
        assert!(Upstream::new("https://x").is_err());
    }
}
