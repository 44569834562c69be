//! Prepaid credits on the real stack: a new credit account is blocked at zero; forged,
//! unsigned, stale and replayed payment webhooks change no balance; a valid one credits
//! exactly once and unblocks the account within a second; usage debits the balance until it
//! blocks again; admin top-ups are idempotent; the CSV statement's totals equal ClickHouse.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod budget_support;

use std::time::{Duration, Instant};

use budget_support as support;
use serde_json::json;
use tollgate_e2e::{TestStack, EXTRA_KEYS, WEBHOOK_SECRET};
use tollgate_loadtest::MockConfig;

const ACCOUNT: &str = "acct_test_3";

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// POST a payment to the aggregator's webhook with `signature` (None: unsigned).
async fn webhook(
    http: &reqwest::Client,
    agg: &str,
    body: &str,
    signature: Option<String>,
) -> (u16, serde_json::Value) {
    let mut req = http
        .post(format!("{agg}/webhooks/payments"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(s) = signature {
        req = req.header("tollgate-signature", s);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

async fn balance(admin: &support::Admin) -> i64 {
    let v = admin
        .get(&format!("/admin/v1/credit-accounts/{ACCOUNT}"))
        .await
        .unwrap();
    v["balance"]["balance_nanos"].as_i64().unwrap()
}

/// `amount_nanos` of the CSV row of `section`.
fn csv_amount(csv: &str, section: &str) -> i64 {
    csv.lines()
        .find(|l| l.starts_with(&format!("{section},")))
        .and_then(|l| l.split(',').nth(8))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no {section} row in\n{csv}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_credit_once_and_unblock_within_a_second() {
    let stack = TestStack::start_budgets("bcred", 2, MockConfig::default())
        .await
        .unwrap();
    let agg = stack.aggregator(&tollgate_e2e::unique("g")).await.unwrap();
    let agg_url = format!("http://{}", agg.local_addr());
    let admin = support::Admin::new(&stack);
    let http = reqwest::Client::new();
    let key = EXTRA_KEYS[3];

    // A prepaid account starts at zero: blocked.
    admin
        .post("/admin/v1/credit-accounts", json!({"id": ACCOUNT}), 201)
        .await
        .unwrap();
    support::wait_until("blocked at zero", Duration::from_secs(10), || async {
        Ok(support::chat(&http, &stack, key, 10).await?.status == 429)
    })
    .await
    .unwrap();
    let r = support::chat(&http, &stack, key, 10).await.unwrap();
    assert_eq!(r.code(), "budget_exceeded");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("prepaid credit balance"),
        "{}",
        r.body
    );

    // Unsigned, forged and stale payments change nothing.
    let pay = json!({"type": "payment.succeeded", "payment_id": "pay_001", "account_id": ACCOUNT,
                     "amount_usd": 0.01, "currency": "usd", "reference": "invoice 1"})
    .to_string();
    let sign = |secret: &str, t: i64, body: &str| {
        tollgate_aggregator::webhook::sign(secret.as_bytes(), t, body.as_bytes())
    };
    let (s, v) = webhook(&http, &agg_url, &pay, None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (401, Some("unsigned")));
    let (s, v) = webhook(&http, &agg_url, &pay, Some(sign("wrong", now_secs(), &pay))).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("bad_signature"))
    );
    let tampered = pay.replace("0.01", "10.0");
    let (s, _) = webhook(
        &http,
        &agg_url,
        &tampered,
        Some(sign(WEBHOOK_SECRET, now_secs(), &pay)),
    )
    .await;
    assert_eq!(s, 401);
    let stale = sign(WEBHOOK_SECRET, now_secs() - 3_600, &pay);
    let (s, v) = webhook(&http, &agg_url, &pay, Some(stale)).await;
    assert_eq!((s, v["error"]["code"].as_str()), (401, Some("stale")));
    assert_eq!(balance(&admin).await, 0);

    // A valid payment credits once and unblocks the account within a second.
    let valid = sign(WEBHOOK_SECRET, now_secs(), &pay);
    let (s, v) = webhook(&http, &agg_url, &pay, Some(valid.clone())).await;
    let credited = Instant::now();
    assert_eq!((s, v["status"].as_str()), (200, Some("applied")), "{v}");
    let mut first_ok = None;
    while credited.elapsed() < Duration::from_secs(3) {
        if support::chat(&http, &stack, key, 10).await.unwrap().status == 200 {
            first_ok = Some(credited.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let unblocked = first_ok.expect("unblocked after the top-up");
    eprintln!("unblocked {unblocked:?} after the top-up");
    assert!(unblocked < Duration::from_secs(1), "{unblocked:?}");
    // The replay (same body and signature) is a duplicate: no second credit.
    let (s, v) = webhook(&http, &agg_url, &pay, Some(valid)).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("duplicate")), "{v}");

    // Usage debits the balance until the account blocks again.
    let replies = support::load_until_refused(&stack, key, 2, 100, Duration::from_secs(30))
        .await
        .unwrap();
    // A request of the other worker may still finish (200) after the first refusal.
    let refused = replies.iter().find(|r| r.status == 429);
    assert_eq!(refused.map(|r| r.code()), Some("budget_exceeded"));
    support::wait_rows_settled(&stack, Duration::from_secs(30))
        .await
        .unwrap();
    // Admin top-ups are idempotent on the entry id.
    let topup = json!({"account_id": ACCOUNT, "amount_usd": 0.5, "entry_id": "adm-1",
                       "reference": "goodwill"});
    let v = admin
        .post("/admin/v1/credit-topups", topup.clone(), 201)
        .await
        .unwrap();
    assert_eq!(v["status"], "applied");
    let v = admin
        .post("/admin/v1/credit-topups", topup, 200)
        .await
        .unwrap();
    assert_eq!(v["status"], "duplicate");
    support::wait_until(
        "unblocked by the admin top-up",
        Duration::from_secs(3),
        || async { Ok(support::chat(&http, &stack, key, 10).await?.status == 200) },
    )
    .await
    .unwrap();
    support::wait_rows_settled(&stack, Duration::from_secs(30))
        .await
        .unwrap();

    // Ledger, balance and statement agree with ClickHouse.
    let db = stack.db();
    let ledger: i64 = db
        .query(
            "SELECT sum(a) FROM (SELECT any(amount_nanos) AS a FROM credit_ledger \
             WHERE account_id = ? GROUP BY entry_id)",
        )
        .bind(ACCOUNT)
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(ledger, 10_000_000 + 500_000_000, "two payments, each once");
    let used = support::stored_cost(&stack, "account_id", ACCOUNT)
        .await
        .unwrap();
    assert!(used > 10_000_000, "usage passed the first payment: {used}");
    support::wait_until("balance settled", Duration::from_secs(10), || async {
        Ok(balance(&admin).await == ledger - used)
    })
    .await
    .unwrap();
    let csv = admin
        .get_text(&format!("/admin/v1/credit-statements/{ACCOUNT}"))
        .await
        .unwrap();
    assert!(csv.starts_with("section,date,model,"), "{csv}");
    assert_eq!(csv_amount(&csv, "opening_balance"), 0, "{csv}");
    assert_eq!(csv_amount(&csv, "total_topups"), ledger, "{csv}");
    assert_eq!(csv_amount(&csv, "total_usage"), -used, "{csv}");
    assert_eq!(csv_amount(&csv, "closing_balance"), ledger - used, "{csv}");
    let usage_rows: i64 = csv
        .lines()
        .filter(|l| l.starts_with("usage,"))
        .map(|l| l.split(',').nth(8).unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(usage_rows, -used, "{csv}");
    assert_eq!(
        csv.lines().filter(|l| l.starts_with("topup,")).count(),
        2,
        "{csv}"
    );
    agg.shutdown().await;
}
