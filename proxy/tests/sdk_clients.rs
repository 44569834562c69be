//! The official OpenAI and Anthropic Python SDKs run a chat, a stream and an embedding
//! (OpenAI) and a message and a stream (Anthropic, `/v1/messages`) through the proxy.
//! Requires `python3` with `openai`, `anthropic` and `pytest` (installed by
//! `infra/dev/stack.sh install`).

mod common;

use common::{Env, KEY};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_sdks_work_through_the_proxy() {
    let env = Env::start().await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk");
    let out = tokio::process::Command::new("python3")
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(&dir)
        .env("TOLLGATE_SDK_URL", env.proxy.base_url())
        .env("TOLLGATE_SDK_KEY", KEY)
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "SDK tests failed:\n{text}");
    assert!(text.contains("8 passed"), "{text}");
    // 7 SDK calls succeeded plus one deliberate 404; every one was metered.
    let evs = env.events(8).await;
    assert_eq!(evs.iter().filter(|e| e.status_code == 200).count(), 7);
    env.proxy.shutdown().await;
}
