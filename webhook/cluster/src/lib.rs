//! imagemap-cluster: the cluster calls the webhook's controller and the `kubectl imagemap` plugin
//! share. What to do is decided in `imagemap-core`; this crate only reads and writes objects.
#![deny(missing_docs)]

pub mod pem;
pub mod policy_sync;
pub mod workloads;
