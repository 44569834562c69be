//! Reference proxies of the benchmark: the same comparison through a proxy that is not
//! Tollgate, at the same load, so that the report shows what one proxy hop costs on the
//! machine at hand whatever the proxy.
//!
//! * `nginx`: nginx as a reverse proxy (workers per core, keep-alive upstream connections,
//!   no buffering, no logs), when it is installed (`infra/dev/stack.sh install` installs it);
//! * `forwarder`: [`crate::forward`], hyper's server and client with nothing in between: what
//!   Tollgate's HTTP stack alone costs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::spawn::{http_url, Launch, Service};
use super::Comparison;

/// A reference proxy of the plan (`references:`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReferenceSpec {
    /// Name in the report.
    pub name: String,
    /// What it is.
    pub kind: ReferenceKind,
    /// Where it listens (`host:port`).
    pub listen: String,
    /// The mock it forwards to (a name under `mocks`).
    pub mock: String,
}

/// The kind of a reference proxy.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReferenceKind {
    /// nginx as a reverse proxy.
    Nginx,
    /// `tollgate-loadtest forward`.
    Forwarder,
}

/// The same comparison through a reference proxy.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ReferenceRun {
    /// The reference's name.
    pub name: String,
    /// Its comparison (the reference on the `proxy` side).
    pub comparison: Comparison,
}

/// A running reference proxy.
#[derive(Debug)]
pub struct Running {
    /// Its spec.
    pub spec: ReferenceSpec,
    /// Its process (nginx: the master, whose workers do the work).
    pub service: Service,
}

impl Running {
    /// Its base URL.
    pub fn url(&self) -> String {
        http_url(&self.spec.listen)
    }

    /// Its pid, when its own process serves the requests (not nginx's master).
    pub fn serving_pid(&self) -> Option<u32> {
        match self.spec.kind {
            ReferenceKind::Forwarder => self.service.pid(),
            ReferenceKind::Nginx => None,
        }
    }
}

/// Where nginx is, if installed.
fn nginx() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// nginx's configuration for a reverse proxy on `listen` to `upstream` (`host:port`), its
/// files under `dir`.
pub fn nginx_config(listen: &str, upstream: &str, dir: &Path) -> String {
    let d = dir.display();
    format!(
        "# Written by tollgate-loadtest bench: nginx as the reference reverse proxy.\n\
         worker_processes auto;\n\
         daemon off;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\n\
         events {{ worker_connections 16384; }}\n\
         http {{\n\
         \x20 access_log off;\n\
         \x20 client_body_temp_path {d}/body;\n\
         \x20 proxy_temp_path {d}/proxy;\n\
         \x20 fastcgi_temp_path {d}/fastcgi;\n\
         \x20 uwsgi_temp_path {d}/uwsgi;\n\
         \x20 scgi_temp_path {d}/scgi;\n\
         \x20 upstream mock {{ server {upstream}; keepalive 512; }}\n\
         \x20 server {{\n\
         \x20   listen {listen} reuseport;\n\
         \x20   client_body_buffer_size 64k;\n\
         \x20   location / {{\n\
         \x20     proxy_pass http://mock;\n\
         \x20     proxy_http_version 1.1;\n\
         \x20     proxy_set_header Connection \"\";\n\
         \x20     proxy_buffering off;\n\
         \x20   }}\n\
         \x20 }}\n\
         }}\n"
    )
}

/// Start `spec` in front of the mock at `upstream` (`host:port`); `None` (with a note on
/// stderr) when it is nginx and nginx is not installed.
pub async fn start(
    spec: &ReferenceSpec,
    upstream: &str,
    bin_dir: &Path,
    logs: &Path,
) -> anyhow::Result<Option<Running>> {
    let name = format!("reference-{}", spec.name);
    let start = |program: &Path, args: Vec<String>| {
        Service::start(Launch {
            name: &name,
            program,
            args,
            env: vec![("RUST_LOG".into(), "warn".into())],
            log_dir: logs,
        })
    };
    let mut service = match spec.kind {
        ReferenceKind::Forwarder => start(
            &bin_dir.join("tollgate-loadtest"),
            vec![
                "forward".into(),
                "--listen".into(),
                spec.listen.clone(),
                "--upstream".into(),
                http_url(upstream),
            ],
        )?,
        ReferenceKind::Nginx => {
            let Some(program) = nginx() else {
                eprintln!(
                    "reference {}: nginx is not installed (infra/dev/stack.sh install); skipped",
                    spec.name
                );
                return Ok(None);
            };
            let dir = std::path::absolute(logs.join(&name))?;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let conf = dir.join("nginx.conf");
            std::fs::write(&conf, nginx_config(&spec.listen, upstream, &dir))
                .with_context(|| format!("writing {}", conf.display()))?;
            let args = vec![
                "-c".into(),
                conf.display().to_string(),
                "-p".into(),
                dir.display().to_string(),
            ];
            start(&program, args)?
        }
    };
    service
        .wait_healthy(
            &format!("{}/healthz", http_url(&spec.listen)),
            Duration::from_secs(30),
        )
        .await
        .with_context(|| format!("reference {}", spec.name))?;
    Ok(Some(Running {
        spec: spec.clone(),
        service,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn nginx_config_proxies_to_the_mock_without_buffering() {
        let c = nginx_config("127.0.0.1:18086", "127.0.0.1:18090", Path::new("/tmp/x"));
        assert!(c.contains("listen 127.0.0.1:18086 reuseport;"));
        assert!(c.contains("upstream mock { server 127.0.0.1:18090; keepalive 512; }"));
        assert!(c.contains("proxy_buffering off;"));
        assert!(c.contains("pid /tmp/x/nginx.pid;"));
        let spec: ReferenceSpec =
            serde_yaml::from_str("{name: nginx, kind: nginx, listen: '127.0.0.1:1', mock: fast}")
                .unwrap();
        assert_eq!(spec.kind, ReferenceKind::Nginx);
        assert!(serde_yaml::from_str::<ReferenceSpec>(
            "{name: x, kind: envoy, listen: '127.0.0.1:1', mock: fast}"
        )
        .is_err());
    }
}
