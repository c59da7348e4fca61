//! Credentials on the wire: the `authorization` header every call carries,
//! and the one-at-a-time refresh of an expired access token.

use cmdop_proto::ext::RefreshTokenRequest;
use tonic::metadata::MetadataValue;

use super::Conn;
use crate::client::{Credentials, Error, Event, Inner, LogLevel, Result};

impl Inner {
    /// Put the `authorization` header on `request`; returns the access token
    /// used (to detect a concurrent refresh).
    pub(crate) fn authorize<T>(&self, request: &mut tonic::Request<T>) -> Result<Option<String>> {
        let token = match &*self.creds.lock() {
            Credentials::ApiKey(k) => Some(k.clone()),
            Credentials::Tokens { access, .. } => Some(access.clone()),
            Credentials::None => None,
        };
        if let Some(t) = &token {
            let value: MetadataValue<_> = format!("Bearer {t}").parse().map_err(|_| {
                Error::InvalidArgument(
                    "the API key or token contains characters that cannot be sent in a header"
                        .into(),
                )
            })?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(token)
    }

    pub(crate) fn can_refresh(&self) -> bool {
        matches!(
            &*self.creds.lock(),
            Credentials::Tokens {
                auto_refresh: true,
                ..
            }
        )
    }

    /// Trade the refresh token for a new pair, unless another call already
    /// did since `used_access` was sent.
    pub(crate) async fn refresh_tokens(
        &self,
        used_access: Option<&str>,
        conn: &Conn,
    ) -> Result<()> {
        let _guard = self.refresh_lock.lock().await;
        let refresh = match &*self.creds.lock() {
            Credentials::Tokens {
                access, refresh, ..
            } => {
                if Some(access.as_str()) != used_access {
                    return Ok(()); // someone refreshed meanwhile
                }
                refresh.clone()
            }
            _ => {
                return Err(Error::Unauthenticated(
                    "access token expired and no refresh token is set".into(),
                ))
            }
        };
        self.log(LogLevel::Info, || {
            "access token expired: refreshing it".into()
        });
        let mut request = tonic::Request::new(RefreshTokenRequest {
            refresh_token: refresh,
        });
        request.set_timeout(self.opts.timeout);
        let mut ext = conn.ext.clone();
        let pair = match tokio::time::timeout(self.opts.timeout, ext.refresh_token(request)).await {
            Ok(Ok(r)) => r.into_inner(),
            // The server could not answer (its database is down, it is
            // shutting down…): the refresh token may still be good, so this
            // is worth retrying, not a reason to sign in again.
            Ok(Err(status))
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                ) =>
            {
                return Err(Error::from_status(
                    "refreshing the expired access token (retry in a moment; the tokens are kept)",
                    &status,
                ));
            }
            Ok(Err(status)) => {
                let e = Error::Unauthenticated(format!(
                    "access token expired and refreshing it failed ({}): sign in again for new tokens",
                    status.message()
                ));
                return Err(e);
            }
            Err(_) => return Err(Error::timeout("RefreshToken", self.opts.timeout)),
        };
        if pair.access_token.is_empty() || pair.refresh_token.is_empty() {
            return Err(Error::Protocol(
                "RefreshToken answered an empty token".into(),
            ));
        }
        {
            let mut creds = self.creds.lock();
            if let Credentials::Tokens {
                access, refresh, ..
            } = &mut *creds
            {
                access.clone_from(&pair.access_token);
                refresh.clone_from(&pair.refresh_token);
            }
        }
        self.log(LogLevel::Info, || "tokens refreshed".into());
        self.emit(Event::TokensRefreshed {
            access: pair.access_token,
            refresh: pair.refresh_token,
        });
        Ok(())
    }
}
