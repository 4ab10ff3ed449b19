//! How a replica reaches PostgreSQL: `store.url` read the way libpq reads
//! it, with TLS on rustls (no OpenSSL build). tokio-postgres itself knows
//! `sslmode` `disable`, `prefer` and `require` only; `verify-full` (the
//! server's certificate chains to the CA and names the host) and
//! `verify-ca` (chains to the CA) are taken here, with the CA file named
//! by the URL's `sslrootcert` — as libpq, `pg_dump` and `psql` read the
//! same URL, one setting serves the replicas and the backups.
//!
//! | sslmode | encrypted | server verified |
//! |---|---|---|
//! | `disable` | no | — |
//! | `prefer` (libpq's default) | if the server offers it | no |
//! | `require` | yes, or no connection | no |
//! | `verify-ca` | yes | certificate chains to the CA |
//! | `verify-full` | yes | chains to the CA and names the host |

use std::{path::Path, sync::Arc};

use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::store::StoreError;

/// A parsed `store.url` and the TLS connector it asks for.
#[derive(Clone)]
pub struct Target {
    pub config: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
    /// The mode as written (for logs): `verify-full`, `require`, ….
    pub mode: String,
}

fn invalid(problem: String) -> StoreError {
    StoreError::Database(format!("store.url: {problem}"))
}

/// Reads `url` (a `postgres://` URL or a `key=value` string) with its
/// `sslmode` and `sslrootcert`.
pub fn target(url: &str) -> Result<Target, StoreError> {
    let (rest, params) = take_tls_params(url);
    let mode = params.sslmode.unwrap_or_else(|| "prefer".to_string());
    let mut config: tokio_postgres::Config = rest
        .parse()
        .map_err(|e| invalid(format!("does not parse: {e}")))?;
    let ca = params.sslrootcert.as_deref().map(Path::new);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("TLS set-up: {e}")))?;
    let verified = |check_name: bool| -> Result<ClientConfig, StoreError> {
        let ca = ca.ok_or_else(|| {
            invalid(format!(
                "sslmode={mode} needs the CA that signed the database's certificate: \
                 add sslrootcert=<PEM file> to the URL"
            ))
        })?;
        let roots = roots(ca)?;
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| invalid(format!("the CA in {}: {e}", ca.display())))?;
        let verifier: Arc<dyn ServerCertVerifier> = if check_name {
            webpki
        } else {
            Arc::new(AnyName(webpki))
        };
        Ok(builder
            .clone()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth())
    };
    let (ssl_mode, client) = match mode.as_str() {
        "disable" => (SslMode::Disable, unverified(builder.clone(), &provider)),
        "prefer" | "allow" => (SslMode::Prefer, unverified(builder.clone(), &provider)),
        "require" => (SslMode::Require, unverified(builder.clone(), &provider)),
        "verify-ca" => (SslMode::Require, verified(false)?),
        "verify-full" => (SslMode::Require, verified(true)?),
        other => {
            return Err(invalid(format!(
                "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
            )));
        }
    };
    config.ssl_mode(ssl_mode);
    Ok(Target {
        config,
        tls: MakeRustlsConnect::new(client),
        mode,
    })
}

impl Target {
    /// Says how the database is reached; warns when the session is not
    /// encrypted or the server not verified and the database is not on
    /// this host.
    pub fn log(&self) {
        let local = self.config.get_hosts().iter().all(|host| match host {
            tokio_postgres::config::Host::Tcp(name) => {
                name == "localhost"
                    || name
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
            tokio_postgres::config::Host::Unix(_) => true,
        });
        if self.mode.starts_with("verify-") || local {
            tracing::info!(sslmode = %self.mode, "reaching PostgreSQL");
        } else {
            tracing::warn!(
                sslmode = %self.mode,
                "the database is on another host and its certificate is not verified: health data \
                 may be read or changed on the way. Use sslmode=verify-full with sslrootcert \
                 (docs/security.md)"
            );
        }
    }
}

fn roots(ca: &Path) -> Result<RootCertStore, StoreError> {
    let mut roots = RootCertStore::empty();
    let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(ca)
        .and_then(|certs| certs.collect())
        .map_err(|e| invalid(format!("reading the CA file {}: {e}", ca.display())))?;
    if certs.is_empty() {
        return Err(invalid(format!("no certificate in {}", ca.display())));
    }
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| invalid(format!("the CA file {}: {e}", ca.display())))?;
    }
    Ok(roots)
}

#[derive(Default)]
struct TlsParams {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

/// Takes `sslmode` and `sslrootcert` out of a URL's query or a key=value
/// string, so tokio-postgres (which knows neither `verify-*` nor
/// `sslrootcert`) parses the rest.
fn take_tls_params(url: &str) -> (String, TlsParams) {
    let mut params = TlsParams::default();
    let mut take = |key: &str, value: &str| match key {
        "sslmode" => {
            params.sslmode = Some(value.to_string());
            true
        }
        "sslrootcert" => {
            params.sslrootcert = Some(value.to_string());
            true
        }
        _ => false,
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return (url.to_string(), params);
        };
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                let value = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
                !take(key, &value)
            })
            .collect();
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        (rest, params)
    } else {
        let kept: Vec<&str> = url
            .split_whitespace()
            .filter(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                !take(key.trim(), value.trim_matches('\''))
            })
            .collect();
        (kept.join(" "), params)
    }
}

/// Encrypts without checking who answers (`prefer`, `require`): what
/// libpq does in these modes. Handshake signatures are still checked, so
/// the session key is the peer's.
fn unverified(
    builder: rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>,
    provider: &Arc<CryptoProvider>,
) -> ClientConfig {
    builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Unverified(
            provider.signature_verification_algorithms,
        )))
        .with_no_client_auth()
}

#[derive(Debug)]
struct Unverified(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to the CA; the name is not checked.
#[derive(Debug)]
struct AnyName(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A plain connection to `url`, TLS as its `sslmode` says.
pub async fn connect(
    url: &str,
) -> Result<
    (
        tokio_postgres::Client,
        impl std::future::Future<Output = Result<(), tokio_postgres::Error>> + use<>,
    ),
    String,
> {
    let target = target(url).map_err(|e| e.to_string())?;
    target
        .config
        .connect(target.tls)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_out_of_both_url_forms() {
        let (rest, p) = take_tls_params(
            "postgres://a@db.internal:5432/anxin?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&target_session_attrs=read-write",
        );
        assert_eq!(
            rest,
            "postgres://a@db.internal:5432/anxin?target_session_attrs=read-write"
        );
        assert_eq!(p.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(p.sslrootcert.as_deref(), Some("/etc/ca.pem"));
        let (rest, p) = take_tls_params("host=db user=a sslmode=require dbname=anxin");
        assert_eq!(rest, "host=db user=a dbname=anxin");
        assert_eq!(p.sslmode.as_deref(), Some("require"));
    }

    #[test]
    fn verify_full_without_a_ca_and_unknown_modes_are_refused() {
        let err = target("postgres://a@db/anxin?sslmode=verify-full")
            .err()
            .unwrap();
        assert!(err.to_string().contains("sslrootcert"), "{err}");
        let err = target("postgres://a@db/anxin?sslmode=verify-everything")
            .err()
            .unwrap();
        assert!(err.to_string().contains("verify-everything"), "{err}");
        assert_eq!(target("postgres://a@db/anxin").unwrap().mode, "prefer");
    }
}
