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

/// Writes `contents` to `path`; a private file gets mode 0600 on Unix.
pub fn write(path: &Path, contents: &str, private: bool) -> Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("setting permissions on {}", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = private;
    Ok(())
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
}
