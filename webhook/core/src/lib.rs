//! imagemap-core: the ImageMap API (`tilt.dev/v1alpha1`) and everything decided from it, with no
//! cluster client and no runtime.
//!
//! Reference grammar, maps, the injection engine, the admission decision, the gate, the restart
//! rule and the policy compiler are shared by the webhook (`imagemap-webhook`) and the
//! `kubectl imagemap` plugin, so a preview never disagrees with the webhook. Cluster calls live
//! in `imagemap-cluster`; the HTTPS server, the watch and metrics in `imagemap-webhook`.
#![deny(missing_docs)]

pub mod admission;
pub mod duration;
pub mod gate;
pub mod guards;
pub mod inject;
pub(crate) mod json;
// The writer's former path, still used by `admission` and `patch`.
pub(crate) use json::writer as json_writer;
/// Appends a string as JSON (quoted, escaped as serde_json escapes it): for log lines.
pub use json::writer::string as json_string;
pub mod manifests;
pub mod maps;
pub mod mapsfile;
pub mod patch;
pub(crate) mod pod_view;
pub mod policy;
pub mod rebuild;
pub mod reference;
pub mod registry;
pub(crate) mod review_reader;
pub mod scope;
pub mod stale;
pub mod types;
pub mod yaml;
