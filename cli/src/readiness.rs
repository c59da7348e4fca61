//! Telling whoever started us that we are ready: the ready file (written
//! atomically) and, for `cmdop dev`, waiting until its agent is connected.

use std::net::SocketAddr;

use anyhow::Context;

/// Writes `contents` to `path` atomically (temp file + rename), so readers
/// polling for the file never see it half written.
pub fn write_ready_file(path: &std::path::Path, contents: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Waits until the agent shows up as a connected session, so that whoever
/// reads the env file can select the machine right away.
pub async fn wait_for_agent(server: SocketAddr, api_key: &str) -> anyhow::Result<()> {
    use cmdop_proto::terminal::{
        terminal_streaming_service_client::TerminalStreamingServiceClient, ListSessionsRequest,
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let auth: tonic::metadata::MetadataValue<_> = format!("Bearer {api_key}").parse()?;
    loop {
        if let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{server}"))?
            .connect()
            .await
        {
            let mut client = TerminalStreamingServiceClient::new(channel);
            let mut req = tonic::Request::new(ListSessionsRequest {
                status_filter: "connected".into(),
                limit: 1,
                ..Default::default()
            });
            req.metadata_mut().insert("authorization", auth.clone());
            if let Ok(resp) = client.list_sessions(req).await {
                if !resp.into_inner().sessions.is_empty() {
                    return Ok(());
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("the agent did not connect within 20 s; run `cmdop -v dev` to see why");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Tells the service manager (systemd, `Type=notify`) that the service is
/// ready or stopping; does nothing when it was not started by one
/// (`$NOTIFY_SOCKET` unset).
pub fn notify_service_manager(stopping: bool) {
    let state = if stopping {
        sd_notify::NotifyState::Stopping
    } else {
        sd_notify::NotifyState::Ready
    };
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!(error = %e, "cannot notify the service manager ($NOTIFY_SOCKET)");
    }
}
