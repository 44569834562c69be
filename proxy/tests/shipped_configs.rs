//! Every proxy configuration the repository ships (demo, benchmarks) parses and validates, so a
//! renamed or removed key breaks this test instead of `make demo` or `make bench`.

use std::path::Path;

use tollgate_proxy::config::ProxyConfig;

#[test]
fn shipped_proxy_configs_validate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let files = [
        "infra/dev/demo-proxy.yaml",
        "loadtest/scenarios/bench-proxy.yaml",
        "loadtest/scenarios/bench-proxy-off.yaml",
    ];
    for f in files {
        let cfg = ProxyConfig::load(&root.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        cfg.validate().unwrap_or_else(|e| panic!("{f}: {e}"));
    }
    let off = ProxyConfig::load(&root.join("loadtest/scenarios/bench-proxy-off.yaml")).unwrap();
    assert!(
        !off.kafka.enabled && off.redis.is_none(),
        "the off config must be off"
    );
    let on = ProxyConfig::load(&root.join("loadtest/scenarios/bench-proxy.yaml")).unwrap();
    assert!(on.kafka.enabled && on.redis.is_some() && on.budgets.enabled);
}
