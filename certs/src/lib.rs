//! Minting a CA and a serving certificate for the webhook (ECDSA P-256), for development, tests
//! and the `certs` tool. Production installs use the chart's modes (see `certs/README.md`).

use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

/// A CA certificate with its key, able to sign leaf certificates.
pub struct CertificateAuthority {
    /// The CA certificate in PEM.
    pub cert_pem: String,
    /// The CA private key in PEM.
    pub key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf certificate and its private key, in PEM.
#[derive(Clone, Debug)]
pub struct LeafCertificate {
    /// The certificate in PEM.
    pub cert_pem: String,
    /// The private key in PEM (PKCS#8).
    pub key_pem: String,
}

/// Subject alternative names for a serving certificate: DNS names and IP addresses.
#[derive(Clone, Debug, Default)]
pub struct Sans {
    /// DNS names, e.g. `imagemap-webhook.imagemap-system.svc`.
    pub dns: Vec<String>,
    /// IP addresses, e.g. `127.0.0.1`.
    pub ips: Vec<IpAddr>,
}

impl Sans {
    /// Parses `host` as an IP address if it is one, else as a DNS name.
    pub fn add_host(&mut self, host: &str) {
        match host.trim_matches(['[', ']']).parse::<IpAddr>() {
            Ok(ip) => self.ips.push(ip),
            Err(_) => self.dns.push(host.to_string()),
        }
    }

    /// The DNS names a Kubernetes Service answers to inside the cluster.
    pub fn for_service(service: &str, namespace: &str) -> Self {
        Sans {
            dns: vec![
                service.to_string(),
                format!("{service}.{namespace}"),
                format!("{service}.{namespace}.svc"),
                format!("{service}.{namespace}.svc.cluster.local"),
            ],
            ips: Vec::new(),
        }
    }
}

impl CertificateAuthority {
    /// Creates a new self-signed CA valid for `days` days.
    pub fn new(common_name: &str, days: i64) -> Result<Self> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params, days);
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(CertificateAuthority { cert_pem: cert.pem(), key_pem, issuer: Issuer::new(params, key) })
    }

    /// Signs a serving certificate (server auth) for `sans`, valid for `days` days.
    pub fn serving(&self, common_name: &str, sans: &Sans, days: i64) -> Result<LeafCertificate> {
        self.leaf(common_name, &[], sans, ExtendedKeyUsagePurpose::ServerAuth, days)
    }

    /// Signs a client certificate (client auth) for `common_name` in `organizations`.
    pub fn client(&self, common_name: &str, organizations: &[&str], days: i64) -> Result<LeafCertificate> {
        self.leaf(common_name, organizations, &Sans::default(), ExtendedKeyUsagePurpose::ClientAuth, days)
    }

    fn leaf(
        &self,
        common_name: &str,
        organizations: &[&str],
        sans: &Sans,
        usage: ExtendedKeyUsagePurpose,
        days: i64,
    ) -> Result<LeafCertificate> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, common_name);
        for org in organizations {
            params.distinguished_name.push(DnType::OrganizationName, *org);
        }
        for dns in &sans.dns {
            params
                .subject_alt_names
                .push(SanType::DnsName(dns.clone().try_into().with_context(|| format!("invalid DNS name {dns:?}"))?));
        }
        for ip in &sans.ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![usage];
        set_validity(&mut params, days);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(LeafCertificate { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

fn set_validity(params: &mut CertificateParams, days: i64) {
    let now = std::time::SystemTime::now();
    params.not_before = (now - std::time::Duration::from_secs(3600)).into();
    params.not_after = (now + std::time::Duration::from_secs(days.max(1) as u64 * 86_400)).into();
}

/// Writes `ca.crt`, `tls.crt` and `tls.key` (the key readable by the owner only) into `dir`.
pub fn write_serving_set(dir: &Path, ca: &CertificateAuthority, leaf: &LeafCertificate) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write(&dir.join("ca.crt"), &ca.cert_pem, false)?;
    write(&dir.join("tls.crt"), &leaf.cert_pem, false)?;
    write(&dir.join("tls.key"), &leaf.key_pem, true)?;
    Ok(())
}

/// Writes `contents` to `path`, replacing it atomically: the text goes to a new file beside it
/// that is then renamed over `path`, so a reader (the webhook's certificate reload) never sees
/// a half-written file. A private file (a key) is created with mode 0600 on Unix from the
/// start, never readable by others even for a moment; an existing file with wider permissions
/// is replaced by it, not reused. Other files get the default mode (0666 less the umask).
pub fn write(path: &Path, contents: &str, private: bool) -> Result<()> {
    let name = path.file_name().with_context(|| format!("{} names no file", path.display()))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".tmp-{}", std::process::id()));
    let temp = path.with_file_name(temp_name);
    let written = write_new(&temp, contents.as_bytes(), private)
        .and_then(|()| std::fs::rename(&temp, path))
        .with_context(|| format!("writing {}", path.display()));
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

/// Creates `path` (which must not exist, so a planted file or symlink is never written
/// through; a leftover of an interrupted write is removed first), writes and syncs it.
fn write_new(path: &Path, contents: &[u8], private: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o666 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = match options.open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(path)?;
            options.open(path)?
        }
        other => other?,
    };
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_ca_and_a_serving_pair_with_ip_and_dns_sans() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = CertificateAuthority::new("imagemap test CA", 1).expect("ca");
        let mut sans = Sans::for_service("imagemap-webhook", "imagemap-system");
        sans.add_host("127.0.0.1");
        let leaf = ca.serving("imagemap-webhook", &sans, 1).expect("leaf");
        write_serving_set(dir.path(), &ca, &leaf).expect("write");
        for f in ["ca.crt", "tls.crt", "tls.key"] {
            let text = std::fs::read_to_string(dir.path().join(f)).expect("read");
            assert!(text.starts_with("-----BEGIN "), "{f} is PEM");
        }
        assert_eq!(sans.ips, vec!["127.0.0.1".parse::<IpAddr>().expect("ip")]);
        assert_eq!(sans.dns.len(), 4);
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    #[cfg(unix)]
    #[test]
    fn the_key_is_created_owner_only_and_certificates_keep_the_default_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = CertificateAuthority::new("imagemap test CA", 1).expect("ca");
        let mut sans = Sans::default();
        sans.add_host("127.0.0.1");
        let leaf = ca.serving("imagemap-webhook", &sans, 1).expect("leaf");
        write_serving_set(dir.path(), &ca, &leaf).expect("write");
        assert_eq!(mode(&dir.path().join("tls.key")), 0o600);
        assert_eq!(std::fs::read_to_string(dir.path().join("tls.key")).expect("key"), leaf.key_pem);
        // Certificates are public: the default mode, whatever the umask makes of 0666.
        assert_ne!(mode(&dir.path().join("tls.crt")) & 0o400, 0);
        let names: Vec<_> =
            std::fs::read_dir(dir.path()).expect("dir").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names.len(), 3, "no temporary file is left behind: {names:?}");
    }

    #[cfg(unix)]
    #[test]
    fn an_existing_key_with_wider_permissions_is_replaced_by_an_owner_only_file() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("tls.key");
        std::fs::write(&key, "old key").expect("write");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let old_inode = std::fs::metadata(&key).expect("metadata").ino();
        write(&key, "new key", true).expect("write");
        assert_eq!(mode(&key), 0o600);
        assert_eq!(std::fs::read_to_string(&key).expect("read"), "new key");
        assert_ne!(
            std::fs::metadata(&key).expect("metadata").ino(),
            old_inode,
            "a new file, never the old one widened"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_planted_at_the_temporary_name_is_not_written_through() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "untouched").expect("write");
        let key = dir.path().join("tls.key");
        let temp = dir.path().join(format!(".tls.key.tmp-{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &temp).expect("symlink");
        write(&key, "secret", true).expect("write");
        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "untouched");
        assert_eq!(std::fs::read_to_string(&key).expect("read"), "secret");
        assert_eq!(mode(&key), 0o600);
    }
}
