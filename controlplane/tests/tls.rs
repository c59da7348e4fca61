//! The control plane serves TLS when given PEM files.

mod support;

use cmdop_controlplane::{store::Store, ServerConfig, TlsFiles};
use cmdop_proto::{
    ext::{cmdop_client::CmdopClient, ServerInfoRequest},
    raw,
    terminal::{
        terminal_streaming_service_client::TerminalStreamingServiceClient, ListSessionsRequest,
    },
};
use support::{authed, TestServer};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// A self-signed certificate for "localhost", made with the openssl CLI.
fn self_signed(dir: &std::path::Path) -> Option<TlsFiles> {
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&files.key)
        .arg("-out")
        .arg(&files.cert)
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?;
    status.success().then_some(files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_tls() {
    let dir = tempfile::tempdir().unwrap();
    let Some(tls) = self_signed(dir.path()) else {
        eprintln!("skipping: the openssl CLI is not available to make a test certificate");
        return;
    };
    let store = Store::open(dir.path()).unwrap();
    let ws = store.create_workspace("acme").unwrap();
    let key = store.create_api_key(&ws.id, "").unwrap();
    drop(store);

    let ca = Certificate::from_pem(std::fs::read(&tls.cert).unwrap());
    let config = ServerConfig {
        tls: Some(tls),
        ..ServerConfig::default()
    };
    let server = TestServer::start_configured(dir, config).await;
    let addr = server.addr;

    let channel = Endpoint::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(ca)
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .expect("TLS handshake");
    let list = TerminalStreamingServiceClient::new(channel.clone())
        .list_sessions(authed(ListSessionsRequest::default(), &key))
        .await
        .expect("call over TLS")
        .into_inner();
    assert_eq!(list.workspace_name, "acme");
    // Side connections would carry command output unencrypted: not offered.
    let info = CmdopClient::new(channel)
        .server_info(authed(ServerInfoRequest {}, &key))
        .await
        .expect("server info over TLS")
        .into_inner();
    assert!(info.capabilities.contains(&"exec.v1".to_string()));
    assert!(!info.capabilities.contains(&raw::CAPABILITY.to_string()));

    let plain = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let err = TerminalStreamingServiceClient::new(plain)
        .list_sessions(authed(ListSessionsRequest::default(), &key))
        .await;
    assert!(err.is_err(), "plaintext is refused on a TLS port");

    server.stop().await;
}
