//! Kubeconfig files with the certificates embedded, so that a file stands alone (kubectl, helm,
//! the controller-manager and the webhook can all read it).

use std::path::Path;

use anyhow::{Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::json;

/// Renders a kubeconfig with one cluster, one user and one context, all named `name`, with
/// the server CA and the client certificate and key embedded as `*-data`.
pub fn render(name: &str, server: &str, ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<String> {
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": name,
            "cluster": { "server": server, "certificate-authority-data": STANDARD.encode(ca_pem) },
        }],
        "users": [{
            "name": name,
            "user": {
                "client-certificate-data": STANDARD.encode(cert_pem),
                "client-key-data": STANDARD.encode(key_pem),
            },
        }],
        "contexts": [{ "name": name, "context": { "cluster": name, "user": name } }],
        "current-context": name,
        "preferences": {},
    });
    Ok(serde_saphyr::to_string(&config)?)
}

/// Writes [`render`]'s output to `path`, readable by the owner only (it holds a private key).
pub fn write(path: &Path, name: &str, server: &str, ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<()> {
    imagemap_certs::write(path, &render(name, server, ca_pem, cert_pem, key_pem)?, true)
}

/// Writes to `out` a copy of the kubeconfig at `path` whose users act as `user` (the
/// kubeconfig's `as`, impersonation), readable by the owner only.
pub fn impersonating(path: &Path, user: &str, out: &Path) -> Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut config: serde_json::Value =
        serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let users = config["users"].as_array_mut().with_context(|| format!("{} has no users", path.display()))?;
    for entry in users {
        entry["user"]["as"] = json!(user);
    }
    imagemap_certs::write(out, &serde_saphyr::to_string(&config)?, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeds_base64_data() {
        let text = render("e2e", "https://127.0.0.1:6443", "CA", "CERT", "KEY").expect("render");
        let value: serde_json::Value = serde_saphyr::from_str(&text).expect("yaml");
        assert_eq!(value["current-context"], "e2e");
        assert_eq!(value["clusters"][0]["cluster"]["server"], "https://127.0.0.1:6443");
        assert_eq!(value["clusters"][0]["cluster"]["certificate-authority-data"], "Q0E=");
        assert_eq!(value["users"][0]["user"]["client-key-data"], "S0VZ");
    }

    #[test]
    fn an_impersonating_copy_acts_as_the_user_and_keeps_the_credentials() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (admin, copy) = (dir.path().join("admin"), dir.path().join("copy"));
        write(&admin, "e2e", "https://127.0.0.1:6443", "CA", "CERT", "KEY").expect("write");
        impersonating(&admin, "someone", &copy).expect("copy");
        let value: serde_json::Value =
            serde_saphyr::from_str(&std::fs::read_to_string(&copy).expect("read")).expect("yaml");
        assert_eq!(value["users"][0]["user"]["as"], "someone");
        assert_eq!(value["users"][0]["user"]["client-key-data"], "S0VZ");
    }
}
