//! TLS to PostgreSQL, with libpq's `sslmode` meanings (what psycopg2, and so Synapse, gives
//! its admins), over rustls.
//!
//! | `sslmode` | TLS | server certificate checked |
//! |---|---|---|
//! | `disable` | never | - |
//! | `allow`, `prefer` (the default) | when the server offers it | no |
//! | `require` | always | no, or as `verify-ca` when `sslrootcert` is given (as libpq) |
//! | `verify-ca` | always | chains to `sslrootcert` |
//! | `verify-full` | always | chains to `sslrootcert` and names the host |
//!
//! `sslrootcert` defaults to `~/.postgresql/root.crt`, as libpq's; `system` means the usual
//! public roots (and implies `verify-full`, as libpq 16's). `sslcert` and `sslkey` give a
//! client certificate, for `cert` authentication.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use postgres::Socket;
use postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::{Result, StorageError};

use super::PgOptions;

/// The `sslmode` values libpq accepts.
pub const SSL_MODES: [&str; 6] = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"];

/// How connections are made secure: given to every `connect` of the client.
#[derive(Clone)]
pub struct PgTls {
    /// None when `sslmode` is `disable` (the client then never asks for TLS).
    config: Option<Arc<ClientConfig>>,
}

/// How much of the server's certificate is checked.
enum Verify {
    Nothing,
    Chain(PathBuf),
    ChainAndName(PathBuf),
    PublicRoots,
}

impl PgTls {
    /// The connector for `options`, and the client's own TLS setting. Fails when a
    /// certificate or key file cannot be read, naming it.
    pub(super) fn new(options: &PgOptions) -> Result<(Self, postgres::config::SslMode)> {
        use postgres::config::SslMode;
        let mode = options.sslmode.as_deref().unwrap_or("prefer");
        let root = options.sslrootcert.as_deref();
        let default_root = || std::env::var_os("HOME").map(|home| Path::new(&home).join(".postgresql/root.crt"));
        let (client_mode, verify) = match (mode, root) {
            ("disable", _) => return Ok((PgTls { config: None }, SslMode::Disable)),
            (_, Some("system")) => (SslMode::Require, Verify::PublicRoots),
            ("allow" | "prefer", _) => (SslMode::Prefer, Verify::Nothing),
            ("require", None) => (SslMode::Require, Verify::Nothing),
            ("require" | "verify-ca", Some(root)) => (SslMode::Require, Verify::Chain(root.into())),
            ("verify-full", Some(root)) => (SslMode::Require, Verify::ChainAndName(root.into())),
            ("verify-ca" | "verify-full", None) => {
                let root = default_root().filter(|p| p.exists()).ok_or_else(|| {
                    config_error(format!(
                        "sslmode '{mode}' checks the server's certificate, but there is no root certificate: \
                         name one with sslrootcert (or 'system' for the public roots), or use sslmode require"
                    ))
                })?;
                let verify = if mode == "verify-ca" { Verify::Chain(root) } else { Verify::ChainAndName(root) };
                (SslMode::Require, verify)
            }
            (other, _) => {
                return Err(config_error(format!(
                    "invalid sslmode value: \"{other}\" (expected one of {})",
                    SSL_MODES.join(", ")
                )));
            }
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| config_error(e.to_string()))?;
        let roots = |path: &Path| -> Result<Arc<RootCertStore>> {
            let mut store = RootCertStore::empty();
            for cert in read_certs(path)? {
                store.add(cert).map_err(|e| config_error(format!("sslrootcert {}: {e}", path.display())))?;
            }
            Ok(Arc::new(store))
        };
        let webpki = |store: Arc<RootCertStore>| {
            WebPkiServerVerifier::builder_with_provider(store, provider.clone())
                .build()
                .map_err(|e| config_error(format!("sslrootcert: {e}")))
        };
        let verifier: Arc<dyn ServerCertVerifier> = match verify {
            Verify::Nothing => Arc::new(AnyCertificate(provider.clone())),
            Verify::Chain(path) => Arc::new(ChainOnly(webpki(roots(&path)?)?)),
            Verify::ChainAndName(path) => webpki(roots(&path)?)?,
            Verify::PublicRoots => webpki(Arc::new(RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() }))?,
        };
        let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
        let config = match (&options.sslcert, &options.sslkey) {
            (Some(cert), Some(key)) => {
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| config_error(format!("sslkey {key}: could not read a private key: {e}")))?;
                builder
                    .with_client_auth_cert(read_certs(Path::new(cert))?, key)
                    .map_err(|e| config_error(format!("sslcert {cert} and sslkey: {e}")))?
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(config_error("sslcert and sslkey go together: give both or neither".into()));
            }
            (None, None) => builder.with_no_client_auth(),
        };
        Ok((PgTls { config: Some(Arc::new(config)) }, client_mode))
    }
}

fn config_error(message: String) -> StorageError {
    StorageError::Backend(message)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| config_error(format!("could not read certificates from {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(config_error(format!("no certificate in {}", path.display())));
    }
    Ok(certs)
}

/// `verify-ca`: the chain must lead to a trusted root; the name in it is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require` without a root certificate: encrypted, but whoever answers is
/// trusted (libpq's meaning of those modes). The handshake's signatures are still checked, so
/// the session is with the holder of the certificate shown.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl MakeTlsConnect<Socket> for PgTls {
    type Stream = PgTlsStream;
    type TlsConnect = PgTlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, host: &str) -> io::Result<PgTlsConnect> {
        // Called for every host, even a Unix socket's directory or with TLS off: a name that is
        // no server name fails only if a handshake is attempted.
        Ok(PgTlsConnect { config: self.config.clone(), name: ServerName::try_from(host.to_owned()).ok() })
    }
}

/// One connection's handshake.
pub struct PgTlsConnect {
    config: Option<Arc<ClientConfig>>,
    name: Option<ServerName<'static>>,
}

impl TlsConnect<Socket> for PgTlsConnect {
    type Stream = PgTlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PgTlsStream>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let config = self.config.ok_or_else(|| io::Error::other("TLS is off (sslmode disable)"))?;
            let name = self.name.ok_or_else(|| io::Error::other("the host is no name to check a certificate for"))?;
            let stream = tokio_rustls::TlsConnector::from(config).connect(name, stream).await?;
            Ok(PgTlsStream(Box::new(stream)))
        })
    }
}

/// A TLS session with the database.
pub struct PgTlsStream(Box<tokio_rustls::client::TlsStream<Socket>>);

impl TlsStream for PgTlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM authenticates without binding to the channel (libpq's `channel_binding=prefer`
        // falls back the same way).
        ChannelBinding::none()
    }
}

impl AsyncRead for PgTlsStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PgTlsStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}
