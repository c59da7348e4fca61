//! TLS on side connections (capability [`CAPABILITY`]): see "Side
//! connections" at the end of `cmdop_ext.proto`.
//!
//! Agent and caller each hold a throwaway [`Identity`] (an ECDSA P-256 key
//! and a self-signed certificate, in memory only) and learn the other's
//! [`Pin`] (SHA-256 of its certificate's DER) through the Exec stream, which
//! is itself TLS. Right after the control plane's ACCEPTED byte they run
//! TLS 1.3 over the spliced connection: the agent as server, requiring the
//! caller's certificate, the caller accepting only the agent's. The control
//! plane in between forwards ciphertext and never holds a key.
//!
//! Certificates are checked by pin alone (no names, no dates, no chain);
//! the handshake signatures are still verified with the provider's
//! algorithms, so only the holder of the pinned key can complete it.

use std::{io, sync::Arc, time::Duration};

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig,
    SignatureScheme,
};
use sha2::{Digest, Sha256};
use tokio::{io::BufReader, net::TcpStream};
pub use tokio_rustls::rustls;

/// Capability name, in ServerInfo (TLS control planes) and AgentHello.
pub use crate::caps::EXEC_RAW_TLS as CAPABILITY;

/// Bytes of a [`Pin`].
pub const PIN_LEN: usize = 32;
/// SHA-256 of a certificate's DER: how a side connection knows its peer.
pub type Pin = [u8; PIN_LEN];
/// How long either end waits for the TLS handshake to complete.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The caller reads the socket in pieces this large (one system call each)
/// and feeds them to TLS from memory.
pub const CALLER_READ_BUFFER: usize = 512 * 1024;
/// Name in the certificates and in the caller's hello. Nobody checks it:
/// the pin is the identity.
const SERVER_NAME: &str = "cmdop-side-connection";

/// The caller's end once the handshake is done: read stdout from it until
/// EOF (an EOF without the agent's close_notify is an error).
pub type CallerStream = tokio_rustls::client::TlsStream<BufReader<TcpStream>>;

/// The pin of the certificate `der`.
pub fn pin_of(der: &[u8]) -> Pin {
    Sha256::digest(der).into()
}

/// `bytes` as a pin, when it is exactly [`PIN_LEN`] long.
pub fn parse_pin(bytes: &[u8]) -> Option<Pin> {
    bytes.try_into().ok()
}

/// One end's key and self-signed certificate, made once and kept in memory.
pub struct Identity {
    cert: CertificateDer<'static>,
    key: Vec<u8>,
    pin: Pin,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Identity")
            .field("pin", &hex_pin(&self.pin))
            .finish_non_exhaustive()
    }
}

fn hex_pin(pin: &Pin) -> String {
    pin.iter().map(|b| format!("{b:02x}")).collect()
}

impl Identity {
    /// A fresh ECDSA P-256 key with a self-signed certificate.
    pub fn generate() -> io::Result<Identity> {
        let made = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
            .map_err(|e| io::Error::other(format!("cannot make a side-connection key: {e}")))?;
        let cert = made.cert.der().clone();
        let pin = pin_of(&cert);
        Ok(Identity {
            cert,
            key: made.signing_key.serialize_der(),
            pin,
        })
    }

    /// The pin the other end must see.
    pub fn pin(&self) -> Pin {
        self.pin
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()))
    }

    /// The agent's TLS configuration for one side connection: TLS 1.3 only,
    /// a client certificate with `caller` as pin required.
    pub fn server_config(&self, caller: Pin) -> io::Result<Arc<ServerConfig>> {
        let provider = provider();
        let verifier = Arc::new(PinnedClient {
            pin: caller,
            algs: provider.signature_verification_algorithms,
        });
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(io::Error::other)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.cert.clone()], self.key())
            .map_err(io::Error::other)?;
        // One connection per exec, never resumed: no tickets to send.
        config.send_tls13_tickets = 0;
        Ok(Arc::new(config))
    }

    /// The caller's TLS configuration for one side connection: TLS 1.3
    /// only, the server certificate must have `agent` as pin.
    pub fn client_config(&self, agent: Pin) -> io::Result<Arc<ClientConfig>> {
        let provider = provider();
        let verifier = Arc::new(PinnedServer {
            pin: agent,
            algs: provider.signature_verification_algorithms,
        });
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(io::Error::other)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(vec![self.cert.clone()], self.key())
            .map_err(io::Error::other)?;
        config.resumption = rustls::client::Resumption::disabled();
        config.enable_sni = false;
        Ok(Arc::new(config))
    }
}

/// ring with AES-128-GCM first (AES-NI makes it the cheapest per byte on
/// the machines we run on), TLS 1.3 suites only.
fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![
        TLS13_AES_128_GCM_SHA256,
        TLS13_AES_256_GCM_SHA384,
        TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(provider)
}

fn timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the side connection's TLS handshake did not finish in time",
    )
}

/// The agent's handshake on a paired side connection: TLS server,
/// requiring the certificate pinned as `caller`. Gives back the socket and
/// the TLS state, for a blocking writer.
pub async fn accept(
    identity: &Identity,
    caller: Pin,
    socket: TcpStream,
) -> io::Result<(TcpStream, rustls::ServerConnection)> {
    let acceptor = tokio_rustls::TlsAcceptor::from(identity.server_config(caller)?);
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket))
        .await
        .map_err(|_| timed_out())??;
    Ok(stream.into_inner())
}

/// The caller's handshake on a paired side connection: TLS client with
/// `identity`'s certificate, accepting only the server pinned as `agent`.
pub async fn connect(
    identity: &Identity,
    agent: Pin,
    socket: TcpStream,
) -> io::Result<CallerStream> {
    let connector = tokio_rustls::TlsConnector::from(identity.client_config(agent)?);
    let name = ServerName::try_from(SERVER_NAME).map_err(io::Error::other)?;
    let socket = BufReader::with_capacity(CALLER_READ_BUFFER, socket);
    tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, socket))
        .await
        .map_err(|_| timed_out())?
}

fn check_pin(pin: &Pin, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
    if pin_of(cert) == *pin {
        Ok(())
    } else {
        Err(rustls::Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        ))
    }
}

/// The caller's check of the agent: the pinned certificate, nothing else.
#[derive(Debug)]
struct PinnedServer {
    pin: Pin,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        check_pin(&self.pin, end_entity).map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The agent's check of the caller: a certificate is required, and only
/// the pinned one passes.
#[derive(Debug)]
struct PinnedClient {
    pin: Pin,
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for PinnedClient {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        check_pin(&self.pin, end_entity).map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    /// A connected pair of loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    #[test]
    fn pins_are_sha256_of_the_der_and_differ_per_identity() {
        let a = Identity::generate().unwrap();
        let b = Identity::generate().unwrap();
        assert_ne!(a.pin(), b.pin());
        assert_eq!(a.pin(), pin_of(&a.cert));
        assert_eq!(parse_pin(&a.pin()), Some(a.pin()));
        assert_eq!(parse_pin(&[0u8; 31]), None);
        assert!(!format!("{a:?}").contains("key"));
    }

    #[tokio::test]
    async fn pinned_ends_talk_and_close_cleanly() {
        let (agent_id, caller_id) = (Identity::generate().unwrap(), Identity::generate().unwrap());
        let (agent_sock, caller_sock) = pair().await;
        let caller_pin = caller_id.pin();
        let agent_pin = agent_id.pin();
        let server = tokio::spawn(async move {
            let (mut sock, mut conn) = accept(&agent_id, caller_pin, agent_sock).await.unwrap();
            assert_eq!(
                conn.negotiated_cipher_suite().map(|s| s.suite()),
                Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
            );
            io::Write::write_all(&mut conn.writer(), b"hello").unwrap();
            conn.send_close_notify();
            let mut out = Vec::new();
            while conn.wants_write() {
                conn.write_tls(&mut out).unwrap();
            }
            sock.write_all(&out).await.unwrap();
            sock.shutdown().await.unwrap();
        });
        let mut caller = connect(&caller_id, agent_pin, caller_sock).await.unwrap();
        let mut got = Vec::new();
        caller.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        server.await.unwrap();
    }

    /// A connection cut without close_notify (agent killed, connection
    /// reset on the way) is an error for the caller, not a clean end.
    #[tokio::test]
    async fn a_cut_without_close_notify_is_an_error() {
        let (agent_id, caller_id) = (Identity::generate().unwrap(), Identity::generate().unwrap());
        let (agent_sock, caller_sock) = pair().await;
        let (caller_pin, agent_pin) = (caller_id.pin(), agent_id.pin());
        let server = tokio::spawn(async move {
            let (mut sock, mut conn) = accept(&agent_id, caller_pin, agent_sock).await.unwrap();
            io::Write::write_all(&mut conn.writer(), b"partial").unwrap();
            let mut out = Vec::new();
            while conn.wants_write() {
                conn.write_tls(&mut out).unwrap();
            }
            sock.write_all(&out).await.unwrap();
            sock.shutdown().await.unwrap();
        });
        let mut caller = connect(&caller_id, agent_pin, caller_sock).await.unwrap();
        let mut got = Vec::new();
        let err = caller.read_to_end(&mut got).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
        assert_eq!(got, b"partial", "what came before the cut is delivered");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_caller_without_the_pinned_key_gets_nothing() {
        let agent_id = Identity::generate().unwrap();
        let expected = Identity::generate().unwrap();
        let intruder = Identity::generate().unwrap();
        let (agent_sock, caller_sock) = pair().await;
        let agent_pin = agent_id.pin();
        let server =
            tokio::spawn(async move { accept(&agent_id, expected.pin(), agent_sock).await.err() });
        // The intruder knows the agent's pin (it is no secret) but not the
        // expected caller's key.
        let attempt = async {
            let mut stream = connect(&intruder, agent_pin, caller_sock).await?;
            let mut got = Vec::new();
            stream.read_to_end(&mut got).await?;
            Ok::<_, io::Error>(got)
        };
        assert!(attempt.await.is_err(), "the intruder's read must fail");
        assert!(
            server.await.unwrap().is_some(),
            "the agent refuses the handshake"
        );
    }

    #[tokio::test]
    async fn a_caller_rejects_an_agent_with_another_key() {
        let agent_id = Identity::generate().unwrap();
        let caller_id = Identity::generate().unwrap();
        let someone_else = Identity::generate().unwrap();
        let (agent_sock, caller_sock) = pair().await;
        let caller_pin = caller_id.pin();
        let server =
            tokio::spawn(async move { accept(&agent_id, caller_pin, agent_sock).await.err() });
        let Err(err) = connect(&caller_id, someone_else.pin(), caller_sock).await else {
            panic!("the handshake with the wrong agent succeeded");
        };
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(server.await.unwrap().is_some());
    }
}
