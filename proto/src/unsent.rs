//! Telling a call that never left from one that may have reached its
//! peer, by the transport error that ended it. Shared by the library (may it
//! resend?) and the control plane's forwarding (may it say "nothing ran"?).

/// True when some error in `err`'s chain shows that the connection or the
/// stream was never opened: the connection refused, or the stream refused
/// by a peer that is stopping (HTTP/2 REFUSED_STREAM). Anything else may
/// have reached the peer.
///
/// hyper and tonic do not expose these cases as types through their error
/// chains, so beyond `io::ErrorKind::ConnectionRefused` the texts they use
/// are matched.
pub fn never_sent(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        let text = e.to_string().to_ascii_lowercase();
        if text.contains("tcp connect error")
            || text.contains("error trying to connect")
            || text.contains("refused stream")
            || text.contains("refused_stream")
        {
            return true;
        }
        next = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_connections_and_streams_were_never_sent() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(never_sent(&refused));
        let other = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(!never_sent(&other));
        let text = std::io::Error::other(
            "stream error received: refused stream before processing any application logic",
        );
        assert!(never_sent(&text));
    }
}
