//! The Helm chart (`charts/imagemap`) with the real Helm 4 (`helm4`, v4.3.2, which applies
//! server-side by default) against a real kube-apiserver (DESIGN §9): it lints and renders in every certificate mode and with every option, the
//! rendered objects pass the API server's own validation (server-side dry-run), an installed
//! release with `webhook.url` pointing at a locally started `imagemap-webhook` (serving the
//! certificate the chart generated) swaps Pods, keeps its CA across `helm upgrade`, and leaves
//! nothing behind after `helm uninstall`; bad values are refused with a message naming them.
//!
//! Trust (docs/security.md): for each mode and feature, the admission server's ServiceAccount may
//! read ImageMaps and nothing else, and the controller's exactly what its features write (the
//! API server's `can-i --list`, compared line by line); acting as the controller's ServiceAccount,
//! the chart's ValidatingAdmissionPolicies refuse what RBAC cannot narrow (Pods created for
//! real, ungated Pods updated, workloads changed beyond their restart annotations, the webhook
//! configuration changed beyond its match conditions); ImageMaps outside the admin guards are
//! refused when written (on a plane of its own: the guards bind every ImageMap write).
//!
//! No kubelet runs, so the chart's Deployments never get Pods: the webhook the API server calls
//! is the binary these tests start, with the chart's certificate and Secret. Every
//! MutatingWebhookConfiguration installed here selects only namespaces labelled
//! `imagemap-e2e/chart=<its release>`, so parallel tests never serve each other's Pods.
//!
//! The chart installed in a cluster with its real image, with Helm 4 and Helm 3: `in_cluster.rs`.
//!
//! Needs the webhook binary: `cargo build --workspace --bins` first (`make test` does).
//!
//! One test binary (`--test chart`), by concern: [`render`] (rendering, values, lint),
//! [`install`] (certificates served for real, install, upgrade, uninstall) and [`rbac`] (the
//! ServiceAccounts' rights and the chart's admission policies). Their helpers are in
//! `imagemap_e2e::{helm, manifests, local_webhook}`.

mod install;
mod rbac;
mod render;

/// The chart's default opt-out label (namespaces and Pods).
const OPT_OUT_LABEL: &str = "imagemap.tilt.dev/disabled";
