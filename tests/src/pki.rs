//! The certificates and keys a throw-away control plane needs, minted at start with
//! `imagemap-certs` (ECDSA P-256) and written into the plane's temporary folder.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use imagemap_certs::{write, CertificateAuthority, LeafCertificate, Sans};
use rcgen::KeyPair;

/// Validity of every certificate: long enough for any test run, short enough to be obviously
/// throw-away.
const DAYS: i64 = 2;

/// The ClusterIP the apiserver gives the `kubernetes` Service: the first address of
/// `--service-cluster-ip-range=10.0.0.0/24`. It is a SAN only; nothing connects to it.
const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

/// A certificate (or public key) and its private key, both as PEM text and as files on disk.
#[derive(Clone, Debug)]
pub struct KeyPairFiles {
    /// The certificate (or, for the service-account key, the public key) in PEM.
    pub cert_pem: String,
    /// The private key in PEM (PKCS#8).
    pub key_pem: String,
    /// Where `cert_pem` is written.
    pub cert_path: PathBuf,
    /// Where `key_pem` is written (mode 0600).
    pub key_path: PathBuf,
}

/// Everything TLS for one control plane.
///
/// Two CAs keep the trust directions apart as in a real cluster: the *server* CA signs the
/// apiserver's serving certificate (clients trust it; the controller-manager publishes it as
/// `kube-root-ca.crt`), the *client* CA signs the client certificates the apiserver accepts.
#[derive(Debug)]
pub struct Pki {
    /// The server CA certificate (`ca.crt`) and its key.
    pub server_ca: KeyPairFiles,
    /// The client CA certificate (`client-ca.crt`) and its key.
    pub client_ca: KeyPairFiles,
    /// The apiserver's serving certificate: SANs 127.0.0.1, localhost and the in-cluster names.
    pub apiserver: KeyPairFiles,
    /// Client certificate `CN=admin, O=system:masters` for kubectl, helm and the tests.
    pub admin: KeyPairFiles,
    /// Client certificate `CN=system:kube-controller-manager, O=system:masters`.
    pub controller_manager: KeyPairFiles,
    /// The service-account token signing key pair (`sa.key`, public half in `sa.pub`).
    pub service_account: KeyPairFiles,
}

impl Pki {
    /// Mints every certificate and key and writes them into `dir`.
    pub fn generate(dir: &Path) -> Result<Pki> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let server_ca = CertificateAuthority::new("imagemap-e2e server CA", DAYS)?;
        let client_ca = CertificateAuthority::new("imagemap-e2e client CA", DAYS)?;

        let mut sans = Sans {
            dns: vec!["localhost".to_string()],
            ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V4(KUBERNETES_SERVICE_IP)],
        };
        for name in
            ["kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"]
        {
            sans.dns.push(name.to_string());
        }
        let apiserver = server_ca.serving("kube-apiserver", &sans, DAYS)?;
        let admin = client_ca.client("admin", &["system:masters"], DAYS)?;
        let controller_manager = client_ca.client("system:kube-controller-manager", &["system:masters"], DAYS)?;

        let sa_key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("generating the service-account key")?;

        Ok(Pki {
            server_ca: save(dir, "ca", &server_ca.cert_pem, &server_ca.key_pem)?,
            client_ca: save(dir, "client-ca", &client_ca.cert_pem, &client_ca.key_pem)?,
            apiserver: save_leaf(dir, "apiserver", &apiserver)?,
            admin: save_leaf(dir, "admin", &admin)?,
            controller_manager: save_leaf(dir, "controller-manager", &controller_manager)?,
            service_account: save_named(
                dir,
                ("sa.pub", &sa_key.public_key_pem()),
                ("sa.key", &sa_key.serialize_pem()),
            )?,
        })
    }
}

fn save_leaf(dir: &Path, name: &str, leaf: &LeafCertificate) -> Result<KeyPairFiles> {
    save(dir, name, &leaf.cert_pem, &leaf.key_pem)
}

fn save(dir: &Path, name: &str, cert_pem: &str, key_pem: &str) -> Result<KeyPairFiles> {
    save_named(dir, (&format!("{name}.crt"), cert_pem), (&format!("{name}.key"), key_pem))
}

fn save_named(
    dir: &Path,
    (cert_name, cert_pem): (&str, &str),
    (key_name, key_pem): (&str, &str),
) -> Result<KeyPairFiles> {
    let cert_path = dir.join(cert_name);
    let key_path = dir.join(key_name);
    write(&cert_path, cert_pem, false)?;
    write(&key_path, key_pem, true)?;
    Ok(KeyPairFiles { cert_pem: cert_pem.to_string(), key_pem: key_pem.to_string(), cert_path, key_path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_every_file_as_pem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::generate(dir.path()).expect("generate");
        for files in
            [&pki.server_ca, &pki.client_ca, &pki.apiserver, &pki.admin, &pki.controller_manager, &pki.service_account]
        {
            let cert = std::fs::read_to_string(&files.cert_path).expect("read cert");
            let key = std::fs::read_to_string(&files.key_path).expect("read key");
            assert!(cert.starts_with("-----BEGIN "), "{} is PEM", files.cert_path.display());
            assert!(
                key.starts_with(&format!("-----BEGIN {}-----", "PRIVATE KEY")),
                "{} is PKCS#8",
                files.key_path.display()
            );
        }
        assert!(pki.service_account.cert_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
    }
}
