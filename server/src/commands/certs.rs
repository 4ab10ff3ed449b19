//! `anxin-server certs`: a small certificate authority and the certificates
//! of a test or pilot deployment — the server's (for the gRPC port and
//! HTTPS), each gateway's client certificate (subject CN = gateway id) and,
//! optionally, devices' client certificates for the gateways' MQTT TLS.
//! A city's production PKI is its own; this is the quick, correct start.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("making a certificate: {0}")]
    Make(#[from] rcgen::Error),
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} already exists; remove it or choose another --dir (a CA is never overwritten)")]
    Exists(String),
}

/// What to make.
pub struct Request<'a> {
    pub dir: &'a Path,
    /// DNS names and IP addresses the server is reached by.
    pub server_names: &'a [String],
    pub gateways: &'a [String],
    pub devices: &'a [String],
    /// Validity in days.
    pub days: u32,
}

fn write(path: PathBuf, text: &str, private: bool) -> Result<PathBuf, CertsError> {
    let fail = |source| CertsError::Write {
        path: path.display().to_string(),
        source,
    };
    std::fs::write(&path, text).map_err(fail)?;
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
    }
    Ok(path)
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = std::time::SystemTime::now();
    params.not_before = now.into();
    params.not_after = (now + std::time::Duration::from_secs(u64::from(days) * 86_400)).into();
}

/// Makes the CA and every certificate asked for; returns the files written.
pub fn make(request: &Request) -> Result<Vec<PathBuf>, CertsError> {
    let ca_path = request.dir.join("ca.pem");
    if ca_path.exists() {
        return Err(CertsError::Exists(ca_path.display().to_string()));
    }
    std::fs::create_dir_all(request.dir).map_err(|source| CertsError::Write {
        path: request.dir.display().to_string(),
        source,
    })?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "Anxin deployment CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut ca, request.days);
    let ca_key = KeyPair::generate()?;
    let issuer = CertifiedIssuer::self_signed(ca, ca_key)?;
    let mut written = vec![
        write(ca_path, &issuer.pem(), false)?,
        write(
            request.dir.join("ca.key"),
            &issuer.key().serialize_pem(),
            true,
        )?,
    ];
    let mut issue = |file: String,
                     names: Vec<String>,
                     cn: &str,
                     usage: ExtendedKeyUsagePurpose|
     -> Result<(), CertsError> {
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        validity(&mut params, request.days);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        written.push(write(
            request.dir.join(format!("{file}.pem")),
            &cert.pem(),
            false,
        )?);
        written.push(write(
            request.dir.join(format!("{file}.key")),
            &key.serialize_pem(),
            true,
        )?);
        Ok(())
    };
    issue(
        "server".into(),
        request.server_names.to_vec(),
        "anxin-server",
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    for gateway in request.gateways {
        issue(
            format!("gateway-{gateway}"),
            Vec::new(),
            gateway,
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
    }
    for device in request.devices {
        issue(
            format!("device-{device}"),
            Vec::new(),
            device,
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
    }
    Ok(written)
}
