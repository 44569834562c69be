//! Offline checks of the deployment files: the compose file against the compose-spec schema
//! (or `docker compose config` where the plugin exists) and the files it mounts, the Kubernetes
//! manifests against the Kubernetes schemas (`kubernetes-validate --strict`), the Dockerfile's
//! stages, the Prometheus alert rules (`promtool check rules`, catalogue metric names only) and
//! the ClickHouse cluster DDL (parsed by ClickHouse 26 through chdb's `EXPLAIN AST`).
//! The validators are installed by `infra/dev/stack.sh install`.

use std::path::{Path, PathBuf};
use std::process::Command;

use tollgate_schemas::migrate::{migration_statements, MIGRATIONS};
use tollgate_schemas::telemetry::CATALOGUE;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Run a command in the repository root; fail with its output unless it succeeds.
fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
        .map_err(|e| {
            anyhow::anyhow!("{program} not runnable ({e}); run infra/dev/stack.sh install")
        })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(out.status.success(), "{program} {args:?} failed:\n{text}");
    Ok(text)
}

fn read(rel: &str) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(root().join(rel))?)
}

#[test]
fn compose_file_is_valid_and_mounts_the_shared_config() -> anyhow::Result<()> {
    let file = "infra/compose/docker-compose.yml";
    let plugin = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if plugin {
        run("docker", &["compose", "-f", file, "config", "-q"])?;
    } else {
        println!("no docker compose plugin: validating against the compose-spec JSON schema");
    }
    run(
        "check-jsonschema",
        &["--builtin-schema", "vendor.compose-spec", file],
    )?;
    let text = read(file)?;
    // Every bind mount points at a file or directory of this repository.
    let mut mounts = 0;
    for line in text.lines() {
        let item = line.trim().trim_start_matches("- ");
        if item.starts_with("../") || item.starts_with("./") {
            let source = item.split(':').next().unwrap_or_default();
            let path = root().join("infra/compose").join(source);
            assert!(path.exists(), "{file} mounts missing {source}");
            mounts += 1;
        }
    }
    assert!(
        mounts >= 6,
        "expected the shared config mounts, found {mounts}"
    );
    for shared in [
        "../dev/demo-proxy.yaml",
        "../prometheus:",
        "../../dashboards/provisioning/datasources",
        "../../dashboards/provisioning/dashboards",
    ] {
        assert!(text.contains(shared), "{file} does not mount {shared}");
    }
    for service in [
        "kafka:",
        "clickhouse:",
        "redis:",
        "prometheus:",
        "grafana:",
        "mock:",
        "proxy-1:",
        "proxy-2:",
        "lb:",
        "aggregator:",
    ] {
        assert!(
            text.contains(&format!("\n  {service}")),
            "no service {service}"
        );
    }
    assert!(
        text.contains("KAFKA_PROCESS_ROLES: broker,controller"),
        "Kafka in KRaft mode"
    );
    Ok(())
}

#[test]
fn dockerfile_builds_every_binary_in_stages() -> anyhow::Result<()> {
    let text = read("infra/docker/Dockerfile")?;
    assert!(text.contains("AS build") && text.contains("cargo build --release --locked"));
    for (stage, bin) in [
        ("proxy", "tollgate-proxy"),
        ("aggregator", "tollgate-aggregator"),
        ("mock", "tollgate-mock"),
    ] {
        assert!(text.contains(&format!("AS {stage}\n")), "no stage {stage}");
        assert!(text.contains(&format!("/usr/local/bin/{bin}")), "no {bin}");
    }
    let compose = read("infra/compose/docker-compose.yml")?;
    for target in ["target: proxy", "target: aggregator", "target: mock"] {
        assert!(compose.contains(target), "compose does not build {target}");
    }
    Ok(())
}

#[test]
fn kubernetes_manifests_match_the_schemas() -> anyhow::Result<()> {
    let dir = root().join("infra/k8s");
    let mut files: Vec<String> = std::fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    let mut args = vec!["--strict", "--quiet"];
    args.extend(files.iter().map(String::as_str));
    run("kubernetes-validate", &args)?;

    let all = files
        .iter()
        .map(std::fs::read_to_string)
        .collect::<Result<Vec<_>, _>>()?
        .join("\n---\n");
    for needle in [
        "kind: HorizontalPodAutoscaler",
        "kind: PodDisruptionBudget",
        "path: /readyz",
        "preStop:",
        "kind: ConfigMap",
        "kind: Secret",
        "name: tollgate-aggregator",
    ] {
        assert!(all.contains(needle), "manifests lack {needle}");
    }

    // The proxy config in the ConfigMap is a valid proxy config.
    let cm = read("infra/k8s/10-config.yaml")?;
    let start = cm
        .find("proxy.yaml: |\n")
        .ok_or_else(|| anyhow::anyhow!("no proxy.yaml"))?
        + "proxy.yaml: |\n".len();
    let body: String = cm[start..]
        .lines()
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| format!("{}\n", l.get(4..).unwrap_or("")))
        .collect();
    let cfg = tollgate_proxy::ProxyConfig::from_yaml(&body, "infra/k8s/10-config.yaml")?;
    cfg.validate()?;
    Ok(())
}

#[test]
fn alert_rules_pass_promtool_and_use_catalogue_metrics() -> anyhow::Result<()> {
    let file = "infra/prometheus/alerts.yml";
    run("promtool", &["check", "rules", file])?;
    let text = read(file)?;
    let known = |name: &str| {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        CATALOGUE.iter().any(|m| m.name == name || m.name == base)
    };
    let mut used = 0;
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("tollgate_") && word.len() > "tollgate_".len() {
            assert!(
                known(word),
                "{file} uses {word}, which is not in the catalogue"
            );
            used += 1;
        }
    }
    assert!(used >= 10, "only {used} metric references");
    Ok(())
}

#[test]
fn cluster_ddl_parses_on_modern_clickhouse() -> anyhow::Result<()> {
    let statements: Vec<String> = MIGRATIONS
        .iter()
        .flat_map(|m| migration_statements(m, Some("tollgate_cluster"), "tollgate"))
        .collect();
    assert!(statements.iter().any(|s| s.contains("Distributed(")));
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("ddl.json");
    std::fs::write(&path, serde_json::to_string(&statements)?)?;
    let script = "import chdb, json, sys\n\
        for s in json.load(open(sys.argv[1])):\n\
        \x20   try:\n\
        \x20       chdb.query('EXPLAIN AST ' + s, 'CSV')\n\
        \x20   except Exception as e:\n\
        \x20       sys.exit('does not parse: %s\\n%s' % (e, s))\n\
        print('parsed', len(json.load(open(sys.argv[1]))))\n";
    let out = run("python3", &["-c", script, &path.to_string_lossy()])?;
    println!("{out}");
    Ok(())
}
