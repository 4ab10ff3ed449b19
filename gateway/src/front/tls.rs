//! TLS for the device front (rustls, ring): the gateway presents its
//! certificate; with `client_ca` set a device may instead present a client
//! certificate signed by that CA, whose subject CN is its device id — the
//! certificate is then its credential, no password needed.

use std::{path::Path, sync::Arc};

use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio_rustls::TlsAcceptor;

use crate::config::MqttTlsConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("config field `{field}`: reading {path}: {problem}")]
    File {
        field: &'static str,
        path: String,
        problem: String,
    },
    #[error("config field `{field}`: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
}

fn certs(path: &Path, field: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_error = |problem: String| TlsError::File {
        field,
        path: path.display().to_string(),
        problem,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(file_error("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// Builds the acceptor from the config; errors name the field.
pub fn acceptor(tls: &MqttTlsConfig) -> Result<TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs(&tls.cert, "mqtt.tls.cert")?;
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| TlsError::File {
        field: "mqtt.tls.key",
        path: tls.key.display().to_string(),
        problem: e.to_string(),
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid {
            field: "mqtt.tls",
            problem: e.to_string(),
        })?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs(ca, "mqtt.tls.client_ca")? {
                roots.add(cert).map_err(|e| TlsError::Invalid {
                    field: "mqtt.tls.client_ca",
                    problem: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if tls.require_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier.build().map_err(|e| TlsError::Invalid {
                field: "mqtt.tls.client_ca",
                problem: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Invalid {
            field: "mqtt.tls.key",
            problem: format!("does not match mqtt.tls.cert: {e}"),
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The device a verified client certificate names: its subject CN.
pub fn device_of(certificate: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?.as_str().ok()?;
    (!cn.is_empty()).then(|| cn.to_string())
}
