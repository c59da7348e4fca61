//! Tests of side connections: server addresses, when a command may switch,
//! the capabilities a link offers, and stopping a copy.

use super::*;

#[test]
fn only_http_and_https_urls_give_an_address() {
    let addr = |url| ServerAddr::from_url(url).map(|a| (a.host, a.port));
    assert_eq!(
        addr("http://127.0.0.1:50051"),
        Some(("127.0.0.1".into(), 50051))
    );
    assert_eq!(addr("http://cp.example/"), Some(("cp.example".into(), 80)));
    assert_eq!(addr("http://[::1]:7000"), Some(("::1".into(), 7000)));
    assert_eq!(
        addr("https://127.0.0.1:50051"),
        Some(("127.0.0.1".into(), 50051))
    );
    assert!(ServerAddr::from_url("https://cp.example").unwrap().tls);
    assert!(!ServerAddr::from_url("http://cp.example").unwrap().tls);
    assert_eq!(addr("unix:///run/cmdop.sock"), None);
    assert_eq!(addr("not a url"), None);
    assert_eq!(addr(""), None);
}

#[test]
fn no_switch_without_a_good_ticket_and_never_plain_over_tls() {
    let ticket = raw::new_ticket();
    let http = Some("http://127.0.0.1:1");
    let https = Some("https://127.0.0.1:1");
    let pin = [5u8; 32];
    let linux = cfg!(target_os = "linux");
    let switch = |ticket: &str, pin: &[u8], url| RawSwitch::new("e", ticket, pin, url);
    assert_eq!(switch(&ticket, &[], http).is_some(), linux);
    assert!(switch(&ticket, &[], http).is_none_or(|s| s.target.tls.is_none()));
    assert!(switch("", &[], http).is_none());
    assert!(switch("short", &[], http).is_none());
    assert!(switch(&ticket, &[], None).is_none());
    // Over TLS only with the caller's pin, and then as TLS.
    assert!(switch(&ticket, &[], https).is_none());
    assert!(switch(&ticket, &pin[..31], https).is_none());
    assert!(switch(&ticket, &pin[..31], http).is_none());
    let tls = switch(&ticket, &pin, https);
    assert_eq!(tls.is_some(), linux);
    assert!(tls.is_none_or(|s| s.target.tls == Some(pin)));
    assert!(switch(&ticket, &pin, http).is_none_or(|s| s.target.tls == Some(pin)));
}

#[test]
fn capabilities_follow_the_link() {
    let linux = cfg!(target_os = "linux");
    let plain = capabilities_for("http://127.0.0.1:1");
    let tls = capabilities_for("https://127.0.0.1:1");
    if linux {
        assert_eq!(plain, [CAPABILITY, CAPABILITY_TLS]);
        assert_eq!(tls, [CAPABILITY_TLS]);
    } else {
        assert!(plain.is_empty() && tls.is_empty());
    }
    assert!(capabilities_for("unix:///x").is_empty());
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn dropping_the_copy_stops_it_even_when_blocked_on_a_full_socket() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let socket = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    // The reader never reads: the copy ends up blocked in splice.
    let (_reader, _) = listener.accept().unwrap();
    let mut child = tokio::process::Command::new("cat")
        .arg("/dev/zero")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (exited_tx, exited) = watch::channel(false);
    let moved = Arc::new(AtomicU64::new(0));
    let copy = tokio::spawn(send_rest(
        stdout,
        SideConn::Plain(socket),
        exited,
        Duration::from_secs(1),
        Arc::clone(&moved),
    ));
    let mut last = u64::MAX;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = moved.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    assert!(last > 0 && last != u64::MAX, "the copy never stalled");
    copy.abort();
    // The copy thread holds the last receiver of `exited`.
    tokio::time::timeout(Duration::from_secs(2), exited_tx.closed())
        .await
        .expect("the copy thread ended");
}
