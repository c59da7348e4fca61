//! First start: trade the one-time enrollment token for a machine identity
//! and persist it, so later starts need no token.

use std::time::Duration;

use anyhow::Context;
use cmdop_proto::ext::{agent_link_client::AgentLinkClient, EnrollRequest};
use tonic::Code;

use crate::{config::AgentConfig, state::AgentState, transport};
use cmdop_proto::backoff::{Backoff, AGENT_RECONNECT};

/// Loads the identity from the state file or enrolls to obtain one.
///
/// Transport problems and server-side failures are retried with backoff
/// (the control plane may still be starting, or its database busy); only a
/// refused token is returned as an error because retrying cannot fix it.
pub async fn load_or_enroll(config: &AgentConfig, hostname: &str) -> anyhow::Result<AgentState> {
    if let Some(state) = AgentState::load(&config.state_file)? {
        let servers = config.servers();
        if !servers.contains(&state.server) {
            tracing::info!(
                enrolled_with = %state.server,
                connecting_to = %servers.join(","),
                "connecting to a different server URL than the one used at enrollment"
            );
        }
        return Ok(state);
    }
    let token = config.enrollment_token.as_deref().filter(|t| !t.is_empty()).with_context(|| {
        format!(
            "no agent state at {} and no enrollment token: create one with `cmdop admin enroll-token` and pass it with --token (or CMDOP_ENROLL_TOKEN)",
            config.state_file.display()
        )
    })?;

    let servers = config.servers();
    let endpoints = servers
        .iter()
        .map(|s| transport::endpoint(s, config.ca_cert.as_deref()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut backoff = Backoff::new(AGENT_RECONNECT, config.reconnect_base, config.reconnect_max);
    // Any server of the list may enroll the machine (they share one
    // database): a failed attempt moves on to the next one.
    let mut current = 0;
    let response = loop {
        let server = &servers[current];
        match try_enroll(&endpoints[current], token, hostname).await {
            Ok(resp) => break resp,
            Err(EnrollError::Refused(status)) => {
                anyhow::bail!("enrollment refused by {server}: {}", status.message())
            }
            Err(EnrollError::Transient(msg)) => {
                current = (current + 1) % servers.len();
                let delay = backoff.next_delay();
                tracing::warn!(server = %server, error = %msg, retry_in = ?delay, "enrollment attempt failed");
                tokio::time::sleep(delay).await;
            }
        }
    };
    let state = AgentState {
        machine_id: response.machine_id,
        agent_secret: response.agent_secret,
        server: servers[current].clone(),
        workspace_name: response.workspace_name,
    };
    state.save(&config.state_file)?;
    tracing::info!(machine_id = %state.machine_id, workspace = %state.workspace_name, "enrolled");
    Ok(state)
}

enum EnrollError {
    /// The server answered and said no; do not retry.
    Refused(tonic::Status),
    /// Connection trouble or an overloaded server; retry.
    Transient(String),
}

async fn try_enroll(
    endpoint: &tonic::transport::Endpoint,
    token: &str,
    hostname: &str,
) -> Result<cmdop_proto::ext::EnrollResponse, EnrollError> {
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| EnrollError::Transient(error_chain(&e)))?;
    let mut client = AgentLinkClient::new(channel);
    let mut request = tonic::Request::new(EnrollRequest {
        enrollment_token: token.to_owned(),
        hostname: hostname.to_owned(),
    });
    request.set_timeout(Duration::from_secs(30));
    match client.enroll(request).await {
        Ok(resp) => Ok(resp.into_inner()),
        Err(status) => Err(classify(status)),
    }
}

/// Only an explicit refusal of the token (or of the request itself) ends
/// enrollment; anything else (UNAVAILABLE, a busy database, INTERNAL, a
/// transport error surfacing as UNKNOWN) may pass and is retried.
fn classify(status: tonic::Status) -> EnrollError {
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied | Code::InvalidArgument => {
            EnrollError::Refused(status)
        }
        _ => EnrollError::Transient(status.to_string()),
    }
}

/// Formats an error with its sources, e.g. "transport error: connection refused".
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_explicit_refusal_stops_enrollment() {
        for code in [
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::InvalidArgument,
        ] {
            assert!(
                matches!(
                    classify(tonic::Status::new(code, "no")),
                    EnrollError::Refused(_)
                ),
                "{code:?} must be a refusal"
            );
        }
        for code in [
            Code::Unavailable,
            Code::Internal,
            Code::Unknown,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::Aborted,
            Code::FailedPrecondition,
        ] {
            assert!(
                matches!(
                    classify(tonic::Status::new(code, "busy")),
                    EnrollError::Transient(_)
                ),
                "{code:?} must be retried"
            );
        }
    }
}
