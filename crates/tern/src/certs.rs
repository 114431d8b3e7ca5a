//! `tern certs dev`: a throwaway certificate authority, a server certificate for
//! localhost/127.0.0.1/::1 (plus any extra names), and a client certificate for mutual TLS.
//! For development and tests only: the CA's key is not kept, so nothing more can be signed
//! with it, and every run makes a new CA.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

/// Server and client certificates are valid this long: within the 825 days Apple platforms
/// accept for TLS server certificates.
const LEAF_DAYS: i64 = 820;
const CA_DAYS: i64 = 3650;

/// The names every dev server certificate carries.
pub const DEFAULT_SANS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Generated PEM texts.
#[derive(Debug, Clone)]
pub struct DevCerts {
    pub ca_pem: String,
    pub server_pem: String,
    pub server_key: String,
    pub client_pem: String,
    pub client_key: String,
}

/// The files `write` produced.
#[derive(Debug, Clone)]
pub struct DevCertFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl DevCertFiles {
    /// The file names inside `dir`.
    pub fn in_dir(dir: &Path) -> DevCertFiles {
        DevCertFiles {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        }
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "tern development");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // A day of slack for clocks that are a little behind.
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(days);
}

/// Makes a CA, a server certificate for [`DEFAULT_SANS`] plus `extra_sans` (host names or IP
/// addresses), and a client certificate (common name `tern-dev-client`).
pub fn generate(extra_sans: &[String]) -> Result<DevCerts, rcgen::Error> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name = name("tern development CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut ca, CA_DAYS);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;

    let mut sans: Vec<String> = DEFAULT_SANS.iter().map(|s| s.to_string()).collect();
    for san in extra_sans {
        if !sans.contains(san) {
            sans.push(san.clone());
        }
    }
    let mut server = CertificateParams::new(sans)?;
    server.distinguished_name = name("tern development server");
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.use_authority_key_identifier_extension = true;
    validity(&mut server, LEAF_DAYS);
    let server_key = KeyPair::generate()?;
    let server_cert = server.signed_by(&server_key, &ca)?;

    let mut client = CertificateParams::new(Vec::<String>::new())?;
    client.distinguished_name = name("tern-dev-client");
    client.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    client.use_authority_key_identifier_extension = true;
    validity(&mut client, LEAF_DAYS);
    let client_key = KeyPair::generate()?;
    let client_cert = client.signed_by(&client_key, &ca)?;

    Ok(DevCerts {
        ca_pem: ca.pem(),
        server_pem: server_cert.pem(),
        server_key: server_key.serialize_pem(),
        client_pem: client_cert.pem(),
        client_key: client_key.serialize_pem(),
    })
}

/// Writes a new set into `dir` (created if missing). Refuses to replace existing files unless
/// `force`. Private keys are written readable by the owner only.
pub fn write(dir: &Path, extra_sans: &[String], force: bool) -> anyhow::Result<DevCertFiles> {
    use anyhow::Context as _;
    let files = DevCertFiles::in_dir(dir);
    let all = [
        &files.ca,
        &files.server_cert,
        &files.server_key,
        &files.client_cert,
        &files.client_key,
    ];
    if !force && let Some(existing) = all.iter().find(|p| p.exists()) {
        anyhow::bail!(
            "{} exists; pass --force to replace the certificates in {}",
            existing.display(),
            dir.display()
        );
    }
    let certs = generate(extra_sans).context("cannot generate certificates")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_file(&files.ca, &certs.ca_pem, false)?;
    write_file(&files.server_cert, &certs.server_pem, false)?;
    write_file(&files.server_key, &certs.server_key, true)?;
    write_file(&files.client_cert, &certs.client_pem, false)?;
    write_file(&files.client_key, &certs.client_key, true)?;
    Ok(files)
}

/// Writes through a temporary file and a rename, so a server reloading on SIGHUP never reads
/// a half-written file.
fn write_file(path: &Path, text: &str, private: bool) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 });
    let mut f = options
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_net::{ClientAuth, TlsFiles};

    #[test]
    fn generated_files_load_as_a_server_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let files = write(dir.path(), &["tern.example".to_string()], false).unwrap();
        let tls = TlsFiles {
            cert: files.server_cert.clone(),
            key: files.server_key.clone(),
            client_ca: Some(files.ca.clone()),
            client_auth: ClientAuth::Required,
        };
        tern_net::tls::server_config(&tls).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&files.server_key)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // A second run does not overwrite without --force.
        let err = write(dir.path(), &[], false).unwrap_err();
        assert!(err.to_string().contains("pass --force"), "{err}");
        write(dir.path(), &[], true).unwrap();
    }
}
