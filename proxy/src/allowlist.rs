//! Upstream base-URL allow-list (`upstream_allowlist` in the proxy config): when set, every
//! deployment's `base_url` (config file, admin API, config store) must match one pattern.
//!
//! A pattern is `scheme://host[:port|:*][/path]`: the scheme and host must be equal (a host
//! `*.example.com` matches any subdomain, not `example.com` itself), the port equal (the
//! scheme's default when absent; `*` for any), and the URL's path must start with the
//! pattern's path at a `/` boundary. URLs are parsed first, so `http://127.0.0.1@evil.com`
//! is host `evil.com`, and user info in a base URL is refused outright.

use reqwest::Url;

use crate::entities::{FieldError, Model};

/// One parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    scheme: String,
    host: String,
    /// `None`: any port.
    port: Option<u16>,
    path: String,
}

/// A parsed allow-list; empty allows everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    patterns: Vec<Pattern>,
}

/// A pattern that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("upstream_allowlist[{index}] `{pattern}`: {reason}")]
pub struct PatternError {
    /// Position in the list.
    pub index: usize,
    /// The pattern.
    pub pattern: String,
    /// Why it is invalid.
    pub reason: String,
}

const ANY_PORT: &str = ":*";

impl Allowlist {
    /// Parse patterns (see the module docs).
    pub fn parse(patterns: &[String]) -> Result<Self, PatternError> {
        let mut out = Vec::with_capacity(patterns.len());
        for (index, raw) in patterns.iter().enumerate() {
            let err = |reason: &str| PatternError {
                index,
                pattern: raw.clone(),
                reason: reason.into(),
            };
            let (scheme, rest) = raw
                .split_once("://")
                .ok_or_else(|| err("expected scheme://host"))?;
            if scheme != "http" && scheme != "https" {
                return Err(err("the scheme must be http or https"));
            }
            let (authority, path) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            let (authority, any_port) = match authority.strip_suffix(ANY_PORT) {
                Some(a) => (a, true),
                None => (authority, false),
            };
            let (authority, wildcard) = match authority.strip_prefix("*.") {
                Some(a) => (a, true),
                None => (authority, false),
            };
            if authority.contains('@') || authority.contains('*') || authority.is_empty() {
                return Err(err(
                    "expected a host, `*.domain`, and optionally :port or :*",
                ));
            }
            let url = Url::parse(&format!("{scheme}://{authority}{path}"))
                .map_err(|e| err(&e.to_string()))?;
            let host = url
                .host_str()
                .ok_or_else(|| err("no host"))?
                .to_ascii_lowercase();
            let host = if wildcard { format!("*.{host}") } else { host };
            out.push(Pattern {
                scheme: scheme.to_string(),
                host,
                port: if any_port {
                    None
                } else {
                    url.port_or_known_default()
                },
                path: url.path().trim_end_matches('/').to_string(),
            });
        }
        Ok(Self { patterns: out })
    }

    /// Whether the list is empty (everything allowed).
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether `base_url` may be used as an upstream.
    pub fn allows(&self, base_url: &str) -> bool {
        if self.patterns.is_empty() {
            return true;
        }
        let Ok(url) = Url::parse(base_url) else {
            return false;
        };
        if !url.username().is_empty() || url.password().is_some() {
            return false;
        }
        let Some(host) = url.host_str().map(str::to_ascii_lowercase) else {
            return false;
        };
        let port = url.port_or_known_default();
        let path = url.path();
        self.patterns.iter().any(|p| {
            let host_ok = match p.host.strip_prefix("*.") {
                Some(domain) => host
                    .strip_suffix(domain)
                    .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
                None => host == p.host,
            };
            let path_ok = p.path.is_empty()
                || path
                    .strip_prefix(p.path.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
            url.scheme() == p.scheme && host_ok && (p.port.is_none() || p.port == port) && path_ok
        })
    }

    /// Check every deployment of `model`; the error names `deployments[i].base_url`.
    pub fn check_model(&self, model: &Model) -> Result<(), FieldError> {
        for (i, d) in model.deployments.iter().enumerate() {
            if !self.allows(&d.base_url) {
                return Err(FieldError::new(
                    "base_url",
                    format!(
                        "`{}` is not in the proxy's upstream_allowlist; ask the operator to add it",
                        d.base_url
                    ),
                )
                .within(&format!("deployments[{i}]")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(p: &[&str]) -> Allowlist {
        Allowlist::parse(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn matches_scheme_host_port_and_path_prefix() {
        let l = list(&[
            "https://api.openai.com",
            "http://127.0.0.1:*",
            "https://*.openai.azure.com",
            "https://gw.example.com/team-a",
        ]);
        assert!(l.allows("https://api.openai.com/v1"));
        assert!(l.allows("https://API.openai.com:443/v1"));
        assert!(!l.allows("https://api.openai.com:8443/v1"));
        assert!(!l.allows("http://api.openai.com/v1"));
        assert!(!l.allows("https://api.openai.com.evil.com/v1"));
        assert!(!l.allows("https://api.openai.com@evil.com/v1"));
        assert!(!l.allows("https://user:pw@api.openai.com/v1"));
        assert!(l.allows("http://127.0.0.1:8090/v1"));
        assert!(l.allows("http://127.0.0.1/v1"));
        assert!(!l.allows("http://127.0.0.2:8090/v1"));
        assert!(l.allows("https://my-res.openai.azure.com"));
        assert!(!l.allows("https://openai.azure.com"));
        assert!(!l.allows("https://evilopenai.azure.com"));
        assert!(l.allows("https://gw.example.com/team-a/v1"));
        assert!(!l.allows("https://gw.example.com/team-ab/v1"));
        assert!(!l.allows("https://gw.example.com/v1"));
        assert!(!l.allows("not a url"));
        assert!(list(&[]).allows("http://anything/v1"));
    }

    #[test]
    fn the_config_file_is_checked_too() {
        let yaml = |allow: &str| {
            format!(
                "upstream_allowlist: [{allow}]\nmodels:\n  - {{name: m, deployments: [{{base_url: 'http://127.0.0.1:1/v1'}}, {{base_url: 'https://evil.example/v1'}}]}}\nkafka: {{brokers: x, topic: t}}\n"
            )
        };
        let cfg = crate::ProxyConfig::from_yaml(&yaml("'http://127.0.0.1:*'"), "t").unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("models[0].deployments[1].base_url"), "{err}");
        let cfg = crate::ProxyConfig::from_yaml(&yaml(""), "t").unwrap();
        assert!(cfg.validate().is_ok());
        assert!(crate::ProxyConfig::from_yaml(&yaml("'nope'"), "t").is_err());
    }

    #[test]
    fn bad_patterns_are_refused() {
        for p in [
            "api.openai.com",
            "ftp://x",
            "https://*",
            "https://a*b.com",
            "https://u@h",
        ] {
            assert!(Allowlist::parse(&[p.to_string()]).is_err(), "{p}");
        }
    }
}
