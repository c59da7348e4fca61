//! Tests against a live control plane and agent: ignored by `cargo test`
//! (it lists them as ignored); run with `--ignored` they fail, naming what
//! is missing, unless the environment names a stack (tests/harness.sh
//! exports these variables):
//!
//! ```sh
//! . tests/harness.sh && start_stack
//! cargo test -p cmdop --lib live_ -- --ignored
//! ```

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;

use cmdop_proto::ext::IssueTokenRequest;

use super::*;

struct Live {
    host: String,
    port: u16,
    key: String,
    machine: String,
}

/// The stack the environment names; a test run without one fails (it
/// never passes without testing).
fn live() -> Live {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: start a stack with `. tests/harness.sh && start_stack` first"
            )
        })
    };
    let server = var("CMDOP_SERVER");
    let (host, port) = server
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("CMDOP_SERVER '{server}' is not host:port"));
    Live {
        host: host.to_string(),
        port: port
            .parse()
            .unwrap_or_else(|_| panic!("CMDOP_SERVER '{server}' has no port")),
        key: var("CMDOP_API_KEY"),
        machine: var("CMDOP_TEST_HOSTNAME"),
    }
}

fn options(l: &Live, credentials: Credentials) -> ClientOptions {
    let mut o = ClientOptions::local(&l.host, l.port);
    o.credentials = credentials;
    o.timeout = Duration::from_secs(10);
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a live control plane (tests/harness.sh)"]
async fn live_expired_access_token_is_refreshed_and_the_call_retried() {
    let l = live();
    let keyed = Client::connect(options(&l, Credentials::ApiKey(l.key.clone())))
        .await
        .unwrap();
    let conn = keyed.inner.conn.read().clone().unwrap();
    let mut req = tonic::Request::new(IssueTokenRequest {
        access_ttl_seconds: 1,
    });
    keyed.inner.authorize(&mut req).unwrap();
    let pair = conn
        .ext
        .clone()
        .issue_token(req)
        .await
        .unwrap()
        .into_inner();

    let tokens = Credentials::Tokens {
        access: pair.access_token.clone(),
        refresh: pair.refresh_token.clone(),
        auto_refresh: true,
    };
    let client = Client::new(options(&l, tokens)).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    client
        .set_event_handler(
            EventKind::Tokens,
            Some(Box::new(move |e| {
                if let Event::TokensRefreshed { access, .. } = e {
                    s.lock().push(access.clone());
                }
            })),
        )
        .unwrap();
    client.open().await.unwrap();
    client.set_machine(&l.machine).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await; // let the access token expire
    let out = client.execute("echo refreshed", None).await.unwrap();
    assert_eq!(out.output, b"refreshed\n");
    let Credentials::Tokens {
        access, refresh, ..
    } = client.credentials()
    else {
        panic!("credentials changed kind")
    };
    assert_ne!(access, pair.access_token);
    assert_ne!(refresh, pair.refresh_token);
    for _ in 0..100 {
        if !seen.lock().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen.lock().as_slice(), &[access]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a live control plane (tests/harness.sh)"]
async fn live_many_concurrent_executes_share_one_client() {
    let l = live();
    let client = Client::connect(options(&l, Credentials::ApiKey(l.key.clone())))
        .await
        .unwrap();
    client.set_machine(&l.machine).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            c.execute(&format!("echo {i}"), None).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let out = t.await.unwrap().unwrap();
        assert_eq!(out.output, format!("{i}\n").into_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a live control plane (tests/harness.sh)"]
async fn live_wrong_key_is_unauthenticated_at_connect() {
    let l = live();
    let err = Client::connect(options(&l, Credentials::ApiKey("cmdop_wrong".into())))
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");
}
