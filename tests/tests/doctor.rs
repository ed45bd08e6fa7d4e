//! `kubectl imagemap doctor` on a healthy install and on broken ones, through the real kubectl
//! and API server: each failure is reported with its fix and exits 1.

use std::process::Output;

use imagemap_e2e::plugin::kubectl_imagemap;
use imagemap_e2e::{shared, ControlPlane, ServedWebhook, WebhookOptions};

fn doctor(plane: &ControlPlane, args: &[&str]) -> Output {
    let mut all = vec!["doctor"];
    all.extend_from_slice(args);
    kubectl_imagemap(plane.kubeconfig_path(), &all, None)
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn healthy_install_passes_every_check_including_the_dry_run_swap() {
    let plane = shared();
    let served = ServedWebhook::start(plane, "doctor-ok", WebhookOptions::default()).expect("webhook");
    let ns = served.create_namespace("doctor-ok");
    let out = doctor(plane, &["--webhook-config", served.registration().name(), "-n", &ns]);
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    for check in [
        "[PASS] API server",
        "[PASS] CRD",
        "[PASS] webhook configuration",
        "certificate: caBundle verifies the serving certificate",
        "[PASS] endpoint",
        "[PASS] namespace:",
        "[PASS] dry-run swap",
    ] {
        assert!(report.contains(check), "missing {check}:\n{report}");
    }
    assert!(report.contains("expires in 1 days"), "a 1-day test certificate is reported with its expiry: {report}");
    assert!(report.contains("[WARN] certificate"), "expiring within 14 days is a warning: {report}");
}

#[test]
fn webhook_down_fails_with_the_fix() {
    let plane = shared();
    let mut served = ServedWebhook::start(plane, "doctor-down", WebhookOptions::default()).expect("webhook");
    let ns = served.create_namespace("doctor-down");
    served.webhook_mut().kill();
    let out = doctor(plane, &["--webhook-config", served.registration().name(), "-n", &ns]);
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("[FAIL] endpoint") && report.contains("does not answer"), "{report}");
    assert!(report.contains("fix: start the webhook"), "{report}");
}

#[test]
fn wrong_ca_bundle_fails_with_the_fix() {
    let plane = shared();
    let served = ServedWebhook::start(plane, "doctor-ca", WebhookOptions::default()).expect("webhook");
    let ns = served.create_namespace("doctor-ca");
    let other_ca = imagemap_certs::CertificateAuthority::new("some other CA", 1).expect("ca");
    let bundle = base64_encode(other_ca.cert_pem.as_bytes());
    let name = served.registration().name();
    let patch = format!(r#"[{{"op":"replace","path":"/webhooks/0/clientConfig/caBundle","value":"{bundle}"}}]"#);
    plane.kubectl_ok(["patch", "mutatingwebhookconfiguration", name, "--type=json", "-p", &patch]);
    let out = doctor(plane, &["--webhook-config", name, "-n", &ns, "--no-dry-run"]);
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("[FAIL] certificate: caBundle does not verify the serving certificate"), "{report}");
    assert!(report.contains("fix: set caBundle"), "{report}");
}

#[test]
fn unserved_namespace_fails_with_the_fix() {
    let plane = shared();
    let served = ServedWebhook::start(plane, "doctor-ns", WebhookOptions::default()).expect("webhook");
    let ns = plane.create_namespace("doctor-unserved");
    let out = doctor(plane, &["--webhook-config", served.registration().name(), "-n", &ns, "--no-dry-run"]);
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains(&format!("[FAIL] namespace: {ns} is not served")), "{report}");
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
