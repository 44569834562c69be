//! Upstream providers: where a request goes and in which wire format.
//!
//! Clients speak OpenAI (`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`) or
//! Anthropic (`/v1/messages`); deployments speak OpenAI (any compatible base URL), Azure OpenAI
//! or Anthropic. [`Endpoint`] names what the client called; [`upstream_request`] builds the
//! HTTP request for one deployment.

pub mod anthropic;
pub mod client;
pub mod openai;
pub mod pool;
pub mod tokens;

use bytes::Bytes;

use crate::entities::Provider;
use crate::http::error::ApiError;
use crate::routing::Deployment;

/// The API a client called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions` (OpenAI).
    ChatCompletions,
    /// `POST /v1/completions` (OpenAI, legacy).
    Completions,
    /// `POST /v1/embeddings` (OpenAI).
    Embeddings,
    /// `POST /v1/messages` (Anthropic).
    Messages,
}

impl Endpoint {
    /// Name in usage events and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat.completions",
            Self::Completions => "completions",
            Self::Embeddings => "embeddings",
            Self::Messages => "messages",
        }
    }

    /// Whether the client speaks Anthropic's format.
    pub fn anthropic_client(self) -> bool {
        self == Self::Messages
    }

    /// Whether the endpoint can stream.
    pub fn can_stream(self) -> bool {
        self != Self::Embeddings
    }
}

/// How a request is carried to one deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Same wire format on both sides (OpenAI⇄OpenAI/Azure, Anthropic⇄Anthropic).
    Passthrough,
    /// OpenAI chat client, Anthropic upstream.
    ChatToAnthropic,
    /// Anthropic client, OpenAI-compatible upstream.
    MessagesToOpenai,
}

/// How `endpoint` reaches a deployment of `provider`, or why it cannot.
pub fn route(endpoint: Endpoint, provider: Provider) -> Result<Route, &'static str> {
    match (endpoint, provider) {
        (Endpoint::Messages, Provider::Anthropic) => Ok(Route::Passthrough),
        (Endpoint::Messages, _) => Ok(Route::MessagesToOpenai),
        (Endpoint::ChatCompletions, Provider::Anthropic) => Ok(Route::ChatToAnthropic),
        (_, Provider::Anthropic) => {
            Err("Anthropic deployments serve chat completions and messages only")
        }
        _ => Ok(Route::Passthrough),
    }
}

/// Anthropic API version header value sent upstream when the client did not send one.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// What every request to a deployment shares, made once per catalog: the upstream URI of each
/// wire endpoint, the provider key's header and the connection pool's origin.
#[derive(Debug, Clone)]
pub struct Target {
    /// By wire endpoint ([`Endpoint`] order); `None`: the URL is invalid (reported per request).
    uris: [Option<http::Uri>; 4],
    /// The provider key as its header (marked sensitive); `Err`: not a valid header value.
    auth: Option<Result<(http::HeaderName, http::HeaderValue), ()>>,
    /// The `host` header (as the HTTP/1.1 client would write it for each request), for
    /// deployments that speak only HTTP/1.1 (HTTP/2 sends `:authority` instead).
    host: Option<http::HeaderValue>,
    /// The pool key of the origin.
    pub origin: pool::Origin,
}

const WIRE: [Endpoint; 4] = [
    Endpoint::ChatCompletions,
    Endpoint::Completions,
    Endpoint::Embeddings,
    Endpoint::Messages,
];

fn wire_index(e: Endpoint) -> usize {
    match e {
        Endpoint::ChatCompletions => 0,
        Endpoint::Completions => 1,
        Endpoint::Embeddings => 2,
        Endpoint::Messages => 3,
    }
}

impl Target {
    /// The target of a deployment of `provider` at `base_url` (no trailing slash).
    pub fn new(
        provider: Provider,
        base_url: &str,
        upstream_model: &str,
        api_version: &str,
        api_key: Option<&str>,
        protocol: pool::Protocol,
    ) -> Self {
        let uris = WIRE.map(|wire| {
            let path = match wire {
                Endpoint::ChatCompletions => "chat/completions",
                Endpoint::Completions => "completions",
                Endpoint::Embeddings => "embeddings",
                Endpoint::Messages => "messages",
            };
            let url = match provider {
                Provider::Openai => format!("{base_url}/{path}"),
                Provider::Azure => {
                    let mut url = reqwest::Url::parse(&format!(
                        "{base_url}/openai/deployments/{upstream_model}/{path}"
                    ))
                    .ok()?;
                    url.query_pairs_mut()
                        .append_pair("api-version", api_version);
                    url.to_string()
                }
                // Anthropic's base URL is the host; the version prefix is part of the path.
                Provider::Anthropic => {
                    format!("{}/v1/{path}", base_url.trim_end_matches("/v1"))
                }
            };
            url.parse::<http::Uri>().ok()
        });
        let auth = api_key.map(|key| {
            let (name, value) = match provider {
                Provider::Openai => (http::header::AUTHORIZATION, format!("Bearer {key}")),
                Provider::Azure => (http::HeaderName::from_static("api-key"), key.to_string()),
                Provider::Anthropic => (X_API_KEY, key.to_string()),
            };
            let mut value = http::HeaderValue::try_from(value).map_err(|_| ())?;
            value.set_sensitive(true);
            Ok((name, value))
        });
        let first = uris.iter().flatten().next();
        let origin = first
            .map(|u| pool::Origin::of(u, protocol))
            .unwrap_or_else(|| pool::Origin::of(&http::Uri::default(), protocol));
        let host = first
            .filter(|_| protocol == pool::Protocol::Http1)
            .and_then(host_header);
        Self {
            uris,
            auth,
            host,
            origin,
        }
    }

    /// Whether requests carry `key` as the provider key (for checks; the key never prints).
    pub fn sends_key(&self, key: &str) -> bool {
        let Some(Ok((name, value))) = &self.auth else {
            return false;
        };
        let sent = value.as_bytes();
        if *name == http::header::AUTHORIZATION {
            sent.strip_prefix(b"Bearer ") == Some(key.as_bytes())
        } else {
            sent == key.as_bytes()
        }
    }
}

/// The `host` header of `uri`: the host, and the port unless it is the scheme's default.
fn host_header(uri: &http::Uri) -> Option<http::HeaderValue> {
    let host = uri.host()?;
    let secure = matches!(uri.scheme_str(), Some("https" | "wss"));
    let value = match uri.port_u16() {
        Some(443) if secure => host.to_string(),
        Some(80) if !secure => host.to_string(),
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    http::HeaderValue::try_from(value).ok()
}

const X_API_KEY: http::HeaderName = http::HeaderName::from_static("x-api-key");
const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
const ANTHROPIC_VERSION_HEADER: http::HeaderName =
    http::HeaderName::from_static("anthropic-version");

/// Build the upstream request for `deployment`. `body` is already in the upstream's format.
pub fn upstream_request(
    deployment: &Deployment,
    endpoint: Endpoint,
    route: Route,
    body: Bytes,
    request_id: &http::HeaderValue,
    anthropic_version: Option<&str>,
) -> Result<http::Request<client::RequestBody>, ApiError> {
    let wire = match route {
        Route::Passthrough => endpoint,
        Route::ChatToAnthropic => Endpoint::Messages,
        Route::MessagesToOpenai => Endpoint::ChatCompletions,
    };
    let bad = |what: &str| ApiError::UpstreamUnavailable(format!("invalid upstream {what}"));
    let target = &deployment.target;
    let uri = target.uris[wire_index(wire)]
        .clone()
        .ok_or_else(|| bad("URL"))?;
    let mut req = http::Request::new(client::RequestBody::new(body));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = uri;
    let h = req.headers_mut();
    h.reserve(5);
    if let Some(host) = &target.host {
        h.insert(http::header::HOST, host.clone());
    }
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    h.insert(X_REQUEST_ID, request_id.clone());
    if deployment.provider == Provider::Anthropic {
        let version = http::HeaderValue::from_str(anthropic_version.unwrap_or(ANTHROPIC_VERSION))
            .map_err(|_| bad("URL or header"))?;
        h.insert(ANTHROPIC_VERSION_HEADER, version);
    }
    match &target.auth {
        Some(Ok((name, value))) => {
            h.insert(name.clone(), value.clone());
        }
        Some(Err(())) => return Err(bad("API key")),
        None => {}
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_made_once_per_deployment() {
        use pool::Protocol;
        let t = Target::new(
            Provider::Openai,
            "http://Mock.local:8090/v1",
            "m",
            "",
            Some("sk-1"),
            Protocol::Http1,
        );
        assert_eq!(
            t.uris[0].as_ref().unwrap(),
            "http://Mock.local:8090/v1/chat/completions"
        );
        assert_eq!(t.host.as_ref().unwrap(), "Mock.local:8090");
        assert_eq!(&*t.origin.authority, "http://mock.local:8090");
        let (name, value) = t.auth.clone().unwrap().unwrap();
        assert_eq!(
            (name.as_str(), value.to_str().unwrap()),
            ("authorization", "Bearer sk-1")
        );
        assert!(value.is_sensitive());
        let a = Target::new(
            Provider::Anthropic,
            "https://api.anthropic.com/v1",
            "claude",
            "",
            Some("bad\nkey"),
            Protocol::Http2,
        );
        assert_eq!(
            a.uris[3].as_ref().unwrap(),
            "https://api.anthropic.com/v1/messages"
        );
        assert!(a.host.is_none(), "HTTP/2 may be spoken: no host header");
        assert_eq!(
            host_header(&"https://api.anthropic.com:443/v1".parse().unwrap()).unwrap(),
            "api.anthropic.com",
            "default port left out"
        );
        assert_eq!(a.auth, Some(Err(())), "an unusable key fails its requests");
        let z = Target::new(
            Provider::Azure,
            "https://x.openai.azure.com",
            "dep 1",
            "2024-06-01",
            None,
            Protocol::Http1,
        );
        assert_eq!(
            z.uris[2].as_ref().unwrap(),
            "https://x.openai.azure.com/openai/deployments/dep%201/embeddings?api-version=2024-06-01"
        );
        assert!(z.auth.is_none());
    }

    #[test]
    fn routes_between_formats() {
        assert_eq!(
            route(Endpoint::ChatCompletions, Provider::Openai),
            Ok(Route::Passthrough)
        );
        assert_eq!(
            route(Endpoint::ChatCompletions, Provider::Anthropic),
            Ok(Route::ChatToAnthropic)
        );
        assert_eq!(
            route(Endpoint::Messages, Provider::Azure),
            Ok(Route::MessagesToOpenai)
        );
        assert_eq!(
            route(Endpoint::Messages, Provider::Anthropic),
            Ok(Route::Passthrough)
        );
        assert!(route(Endpoint::Embeddings, Provider::Anthropic).is_err());
    }
}
