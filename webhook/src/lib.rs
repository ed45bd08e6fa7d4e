//! imagemap: the ImageMap API (`tilt.dev/v1alpha1`) brought to any cluster.
//!
//! The pure core (reference grammar, maps, injection engine, admission decision) is shared by the
//! webhook and the `kubectl imagemap` plugin, so a preview never disagrees with the webhook. The
//! HTTPS server, the cluster watch and metrics sit behind the `server` feature.
#![deny(missing_docs)]

pub mod admission;
// Releasing gated Pods is the controller's (the `server` feature); gating is the engine's.
pub mod duration;
#[cfg_attr(not(feature = "server"), allow(dead_code))]
pub(crate) mod gate;
pub mod inject;
mod json_scan;
pub(crate) mod json_writer;
pub mod manifests;
pub mod maps;
pub mod mapsfile;
pub mod patch;
pub(crate) mod pod_view;
pub mod policy;
pub mod rebuild;
pub mod reference;
pub(crate) mod review_reader;
pub mod scope;
pub mod types;
pub mod yaml;

#[cfg(feature = "client")]
pub mod policy_sync;
#[cfg(feature = "client")]
pub mod workloads;

#[cfg(feature = "server")]
pub mod server;
