//! TLS for the driver, in rustls: one certificate verifier that does what
//! libpq's `sslmode` asks (nothing, the chain, or the chain and the host
//! name), the root certificates it checks against, and the translation of
//! a failed handshake into one [`Error::Tls`] that names the host.
//!
//! Whatever is checked, the server's handshake signatures always are: the
//! connection is bound to the key of the certificate presented, which
//! channel binding (SCRAM-SHA-256-PLUS) relies on.

use std::path::PathBuf;
use std::sync::Arc;

use postgres::config::Host;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{Error, Result, TlsFailure};
use crate::store::connect::SslMode;

/// Where the root certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Roots {
    /// A PEM file.
    File(PathBuf),
    /// The platform's trusted authorities.
    System,
}

/// What the server's certificate must satisfy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verify {
    /// Anything: encryption only (`prefer`, `require`).
    Nothing,
    /// A chain to `roots` (`verify-ca`), and the host name when `host_name`
    /// (`verify-full`).
    Chain {
        /// The trusted authorities.
        roots: Roots,
        /// Whether the certificate must name the host.
        host_name: bool,
    },
}

/// The driver's TLS connector for `verify`. Root certificates are read
/// here, once: a file that is missing or holds no certificate is an
/// [`Error::Config`] naming it.
pub(crate) fn connector(verify: &Verify) -> Result<MakeRustlsConnect> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = match verify {
        Verify::Nothing => None,
        Verify::Chain { roots, .. } => Some(Arc::new(load(roots)?)),
    };
    let verifier = Verifier {
        roots,
        host_name: matches!(
            verify,
            Verify::Chain {
                host_name: true,
                ..
            }
        ),
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    // PostgreSQL 17 requires it for direct TLS (`sslnegotiation=direct`);
    // earlier servers ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(MakeRustlsConnect::new(config))
}

fn load(roots: &Roots) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::File(path) => {
            let cannot = |e: &dyn std::fmt::Display| {
                Error::Config(format!(
                    "sslrootcert {}: cannot read: {e}; give a PEM file of the certificate authority that signed the server's certificate",
                    path.display()
                ))
            };
            let bytes = std::fs::read(path).map_err(|e| cannot(&e))?;
            let mut found = 0;
            for cert in CertificateDer::pem_slice_iter(&bytes) {
                let cert = cert.map_err(|e| cannot(&e))?;
                store.add(cert).map_err(|e| {
                    Error::Config(format!(
                        "sslrootcert {}: certificate {} is not usable as a root: {e}",
                        path.display(),
                        found + 1
                    ))
                })?;
                found += 1;
            }
            if found == 0 {
                return Err(Error::Config(format!(
                    "sslrootcert {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                    path.display()
                )));
            }
        }
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map_or_else(|| "none found".to_string(), ToString::to_string);
                return Err(Error::Config(format!(
                    "sslrootcert=system: the platform's trusted certificate authorities cannot be read ({why}); give sslrootcert a PEM file instead"
                )));
            }
        }
    }
    Ok(store)
}

/// Checks the server's certificate as far as the mode asks. Chain and
/// name checks are webpki's (through rustls), the same as rustls's own
/// verifier, which cannot check a chain without the name.
#[derive(Debug)]
struct Verifier {
    roots: Option<Arc<RootCertStore>>,
    host_name: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
            if self.host_name {
                rustls::client::verify_server_name(&cert, server_name)?;
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The hosts and ports of `config`, for messages: `db.internal:5432`, or
/// several separated by commas.
pub(crate) fn hosts(config: &postgres::Config) -> String {
    let ports = config.get_ports();
    let port = |i: usize| ports.get(i).or(ports.first()).copied().unwrap_or(5432);
    let mut names: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| match h {
            Host::Tcp(name) if name.contains(':') => format!("[{name}]:{}", port(i)),
            Host::Tcp(name) => format!("{name}:{}", port(i)),
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    if names.is_empty() {
        names = config
            .get_hostaddrs()
            .iter()
            .enumerate()
            .map(|(i, a)| match a {
                std::net::IpAddr::V6(a) => format!("[{a}]:{}", port(i)),
                a => format!("{a}:{}", port(i)),
            })
            .collect();
    }
    names.join(",")
}

/// A failed connection as the library reports it: a TLS failure becomes
/// [`Error::Tls`] naming the host and what failed; anything else stays the
/// driver's error.
pub(crate) fn connect_error(e: postgres::Error, config: &postgres::Config, mode: SslMode) -> Error {
    match tls_failure(&e, mode) {
        Some((kind, reason)) => Error::Tls {
            host: hosts(config),
            kind,
            reason,
        },
        None => e.into(),
    }
}

/// The TLS failure among the causes of `e`, if any: what kind, and in
/// words.
fn tls_failure(e: &postgres::Error, mode: SslMode) -> Option<(TlsFailure, String)> {
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        // rustls's errors reach the driver inside an I/O error, whose
        // `source` skips the error it wraps: look inside it.
        let inner = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map_or(c, |inner| inner as &(dyn std::error::Error + 'static));
        if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
            return Some(describe(tls, mode));
        }
        // The driver's own words when the server answers a TLS request
        // with "no" (tokio-postgres 0.7, connect_tls.rs); the TLS tests
        // run against a server that refuses, so a change of wording fails
        // them.
        if inner.to_string() == "server does not support TLS" {
            return Some((
                TlsFailure::NotOffered,
                format!(
                    "the server does not accept TLS connections, and sslmode={mode} requires TLS"
                ),
            ));
        }
        cause = c.source();
    }
    None
}

fn describe(e: &rustls::Error, mode: SslMode) -> (TlsFailure, String) {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => (
            TlsFailure::UntrustedCertificate,
            format!(
                "the server's certificate is not signed by a certificate authority in sslrootcert (sslmode={mode})"
            ),
        ),
        E::InvalidCertificate(CertificateError::NotValidForNameContext { expected, presented }) => (
            TlsFailure::WrongHostName,
            format!(
                "the server's certificate is not valid for the host name {:?} (it names {}; sslmode={mode} checks the name)",
                expected.to_str(),
                match presented.as_slice() {
                    [] => "no host name".to_string(),
                    names => names.iter().map(|n| presented_name(n)).collect::<Vec<_>>().join(", "),
                }
            ),
        ),
        E::InvalidCertificate(CertificateError::NotValidForName) => (
            TlsFailure::WrongHostName,
            format!(
                "the server's certificate is not valid for the host name connected to (sslmode={mode} checks the name)"
            ),
        ),
        E::InvalidCertificate(other) => (
            TlsFailure::InvalidCertificate,
            format!("the server's certificate is not acceptable: {other}"),
        ),
        other => (TlsFailure::Handshake, format!("TLS handshake: {other}")),
    }
}

/// A name from the certificate as webpki lists it (`DnsName("db.internal")`),
/// as an operator writes it (`db.internal`).
fn presented_name(name: &str) -> &str {
    name.strip_prefix("DnsName(\"")
        .and_then(|n| n.strip_suffix("\")"))
        .unwrap_or(name)
}
