//! Command-line flags (with environment-variable fallbacks) for `imagemap-webhook`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use super::http::Limits;
use super::listener::Timeouts;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// Which of the two processes this is (docs/security.md): the admission server only reads
/// ImageMaps; the controller holds every write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// Answer admission reviews on `POST /mutate` (the Pods behind the webhook's Service). Reads
    /// ImageMaps and nothing else.
    Serve,
    /// Leader-elected writer: scopes the webhook configuration, releases gated Pods, restarts
    /// workloads, keeps policies in step. Serves only `/healthz`, `/readyz` and `/metrics`.
    Controller,
}

/// Which maps may replace a container's `command` and `args` (`--allow-overrides`).
pub use imagemap_core::guards::Overrides;

/// What the process does with the maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Serve admission reviews (registered by a MutatingWebhookConfiguration).
    Webhook,
    /// Keep MutatingAdmissionPolicies compiled from the maps in step (leader only); the API
    /// server applies them itself and no webhook is registered.
    Policy,
}

/// The imagemap mutating admission webhook: swaps Pod images for the ones ImageMaps name.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "imagemap-webhook",
    version,
    after_help = "`imagemap-webhook check --help`: the installation check that the chart's `helm test` runs."
)]
pub struct Config {
    /// `serve`: answer admission reviews (reads ImageMaps only). `controller`: the writer
    /// (scope, gate, restarts, policies), not called by the API server.
    #[arg(long, env = "IMAGEMAP_ROLE", value_enum, default_value = "serve")]
    pub role: Role,
    /// Address and port to serve HTTPS on.
    #[arg(long, env = "IMAGEMAP_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// PEM certificate chain to serve (reloaded when it changes).
    #[arg(long, env = "IMAGEMAP_TLS_CERT_FILE")]
    pub tls_cert_file: PathBuf,
    /// PEM private key of the certificate (reloaded when it changes).
    #[arg(long, env = "IMAGEMAP_TLS_PRIVATE_KEY_FILE")]
    pub tls_private_key_file: PathBuf,
    /// PEM CA certificates whose client certificates may call POST /mutate (the API server's
    /// webhook client certificate, set in its AdmissionConfiguration). Clients without one still
    /// get /healthz, /readyz and /metrics (the kubelet's HTTPS probes present none); a
    /// certificate from another CA fails the handshake. Read once at start.
    #[arg(long, env = "IMAGEMAP_CLIENT_CA_FILE")]
    pub client_ca_file: Option<PathBuf>,
    /// Global static maps: an ImageMap, a List/ImageMapList, or multi-document YAML/JSON.
    #[arg(long, env = "IMAGEMAP_IMAGEMAPS_FILE")]
    pub imagemaps_file: Option<PathBuf>,
    /// Namespace whose ImageMaps apply to every namespace, below local maps.
    #[arg(long, env = "IMAGEMAP_GLOBAL_NAMESPACE")]
    pub global_namespace: Option<String>,
    /// Serve only the maps of --imagemaps-file; no Kubernetes API server needed.
    #[arg(long, env = "IMAGEMAP_NO_CLUSTER")]
    pub no_cluster: bool,
    /// Kubeconfig to watch ImageMaps with (default: in-cluster, then $KUBECONFIG or ~/.kube/config).
    #[arg(long, env = "IMAGEMAP_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "IMAGEMAP_LOG_FORMAT", value_enum, default_value = "plain")]
    pub log_format: LogFormat,
    /// Log level or filter (e.g. info, debug, imagemap_webhook=debug).
    #[arg(long, env = "IMAGEMAP_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// How often to check the certificate files for changes.
    #[arg(long, value_parser = parse_positive_duration, default_value = "2s")]
    pub tls_reload_interval: Duration,
    /// How often to check --imagemaps-file for changes.
    #[arg(long, value_parser = parse_positive_duration, default_value = "2s")]
    pub maps_reload_interval: Duration,
    /// Time allowed for a TLS handshake.
    #[arg(long, value_parser = parse_positive_duration, default_value = "5s")]
    pub tls_handshake_timeout: Duration,
    /// Time allowed from a request's first byte until its headers have arrived.
    #[arg(long, value_parser = parse_positive_duration, default_value = "5s")]
    pub header_timeout: Duration,
    /// Time allowed to receive a request's body.
    #[arg(long, value_parser = parse_positive_duration, default_value = "10s")]
    pub body_timeout: Duration,
    /// Idle keep-alive connections are closed after this long.
    #[arg(long, value_parser = parse_positive_duration, default_value = "90s")]
    pub idle_timeout: Duration,
    /// Largest request body accepted, in bytes (larger ones get 413 before buffering). The
    /// default is the API server's own request limit (3 MiB): it never sends more.
    #[arg(long, default_value_t = 3 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Request-body bytes buffered at once across every connection; past it, reading waits
    /// (bounds memory under clients that stall mid-body).
    #[arg(long, default_value_t = 32 * 1024 * 1024, value_parser = parse_positive_count)]
    pub max_buffered_body_bytes: usize,
    /// Only targets under one of these prefixes are injected (repeatable), e.g.
    /// `localhost:5000/` or `registry.example.com/team/`; a prefix without `/` names a registry
    /// host. A map whose target is elsewhere is unusable: Pods are left as written, with a
    /// warning. Empty: any registry.
    #[arg(long = "allowed-registry", env = "IMAGEMAP_ALLOWED_REGISTRIES", value_delimiter = ',')]
    pub allowed_registries: Vec<String>,
    /// Which maps may replace `command`/`args`: `none`; `local` (maps of the Pod's own
    /// namespace only, not global maps); `all`. A map whose overrides are not allowed is
    /// unusable where they are not (left as written, with a warning).
    #[arg(long, env = "IMAGEMAP_ALLOW_OVERRIDES", default_value = "all")]
    pub allow_overrides: Overrides,
    /// Namespaces never swapped (repeatable), besides kube-system, kube-public,
    /// kube-node-lease and this process's own namespace ($POD_NAMESPACE).
    #[arg(long = "protected-namespace", env = "IMAGEMAP_PROTECTED_NAMESPACES", value_delimiter = ',')]
    pub protected_namespaces: Vec<String>,
    /// Reviews decided at once (counted once their body has arrived); more get 503 immediately.
    #[arg(long, default_value_t = 512)]
    pub max_concurrent_reviews: usize,
    /// Connections open at once; more wait in the kernel's accept queue. Bounds what clients
    /// that stall mid-request can hold (each up to --max-body-bytes).
    #[arg(long, default_value_t = 4096, value_parser = parse_positive_count)]
    pub max_connections: usize,
    /// After SIGTERM, keep serving (with readiness failing) this long before draining.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub shutdown_delay: Duration,
    /// After draining starts, in-flight requests get this long to finish.
    #[arg(long, value_parser = parse_duration, default_value = "20s")]
    pub shutdown_timeout: Duration,
    /// Hold Pods whose image matches a map without a build yet (scheduling gate tilt.dev/imagemap);
    /// a leader-elected controller swaps the image in and removes the gate once it is built.
    #[arg(long, env = "IMAGEMAP_GATE_UNBUILT")]
    pub gate_unbuilt: bool,
    /// Release gated Pods unchanged (with an Event) after this long.
    #[arg(long, value_parser = parse_positive_duration, default_value = "10m")]
    pub gate_timeout: Duration,
    /// Converge (`--role controller`): restart the Deployment, StatefulSet or DaemonSet of every
    /// stale Pod (one the maps would change now: never swapped, or an older build), once per map
    /// and build, like `kubectl rollout restart`; bare Pods and Jobs get a Warning Event.
    #[arg(long = "converge", visible_alias = "restart-on-rebuild", env = "IMAGEMAP_CONVERGE")]
    pub restart_on_rebuild: bool,
    /// The label that opts a namespace or a Pod out (any value): never swapped, never restarted.
    #[arg(long, env = "IMAGEMAP_OPT_OUT_LABEL", default_value = "imagemap.tilt.dev/disabled")]
    pub opt_out_label: String,
    /// Namespace of the controller's leader-election Lease (default: $POD_NAMESPACE, else default).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub leader_election_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "imagemap-controller")]
    pub leader_election_id: String,
    /// This replica's identity in the Lease (default: $POD_NAME, else hostname and pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// The MutatingWebhookConfiguration that registers this webhook: when set, the controller
    /// keeps it scoped to the namespaces that hold ImageMaps (every namespace when global maps
    /// exist) with a match condition, beside the admin's own selectors.
    #[arg(long, env = "IMAGEMAP_WEBHOOK_CONFIGURATION")]
    pub webhook_configuration: Option<String>,
    /// `webhook` serves reviews; `policy` keeps MutatingAdmissionPolicies compiled from the maps
    /// in step instead (no webhook registration; not with --gate-unbuilt or --imagemaps-file).
    #[arg(long, env = "IMAGEMAP_MODE", value_enum, default_value = "webhook")]
    pub mode: Mode,
    /// Policy mode: the ClusterRole (the chart's, of the controller) that owns every policy and
    /// binding the controller writes, so that `helm uninstall`, which deletes it, has the
    /// garbage collector delete them too.
    #[arg(long, env = "IMAGEMAP_POLICY_OWNER")]
    pub policy_owner: Option<String>,
    /// How often the controller looks at gated Pods.
    #[arg(long, value_parser = parse_positive_duration, default_value = "1s")]
    pub controller_interval: Duration,
}

impl Config {
    /// Request limits from the flags.
    pub fn limits(&self) -> Limits {
        Limits {
            max_buffered_body_bytes: self.max_buffered_body_bytes.max(self.max_body_bytes),
            max_body_bytes: self.max_body_bytes,
            body_timeout: self.body_timeout,
            max_concurrent_reviews: self.max_concurrent_reviews.max(1),
        }
    }

    /// Controller settings from the flags.
    pub fn controller_options(&self) -> super::controller::Options {
        let identity = self.identity.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
            format!("{host}-{}", std::process::id())
        });
        super::controller::Options {
            gate_unbuilt: self.gate_unbuilt,
            gate_timeout: self.gate_timeout,
            converge: self.restart_on_rebuild,
            opt_out_label: self.opt_out_label.clone(),
            webhook_configuration: self.webhook_configuration.clone(),
            policies: self.mode == Mode::Policy,
            policy_owner: self.policy_owner.clone(),
            lease_namespace: self.leader_election_namespace.clone(),
            lease_name: self.leader_election_id.clone(),
            identity,
            interval: self.controller_interval,
        }
    }

    /// The admin guards from the flags: `--allowed-registry`, `--allow-overrides`, and the
    /// protected namespaces (the flag's, the system ones, and `$POD_NAMESPACE`: imagemap never
    /// swaps its own Pods).
    pub fn guards(&self) -> imagemap_core::guards::Guards {
        let mut protected = self.protected_namespaces.clone();
        if let Ok(own) = std::env::var("POD_NAMESPACE") {
            protected.push(own);
        }
        imagemap_core::guards::Guards::new(self.allowed_registries.clone(), self.allow_overrides, &protected)
    }

    /// Flags that cannot go together, with the reason.
    pub fn check(&self) -> Result<(), String> {
        for prefix in &self.allowed_registries {
            if prefix.is_empty() || prefix.starts_with('/') || prefix.chars().any(char::is_whitespace) {
                return Err(format!(
                    "--allowed-registry {prefix:?} is not a registry prefix (e.g. localhost:5000/ or registry.example.com/team/)"
                ));
            }
        }
        match self.role {
            Role::Serve => self.check_serve()?,
            Role::Controller => self.check_controller()?,
        }
        if self.mode != Mode::Policy {
            return Ok(());
        }
        let conflict = |flag: &str, why: &str| Err(format!("--mode policy cannot be used with {flag}: {why}"));
        if self.gate_unbuilt {
            return conflict("--gate-unbuilt", "a policy cannot hold Pods until their image is built");
        }
        if self.imagemaps_file.is_some() {
            return conflict("--imagemaps-file", "policies are compiled from the cluster's ImageMaps only");
        }
        if self.no_cluster {
            return conflict("--no-cluster", "policies are written to the cluster");
        }
        if self.webhook_configuration.is_some() {
            return conflict("--webhook-configuration", "no webhook is registered in policy mode");
        }
        Ok(())
    }

    /// The admission server only reads: the flags that make it write belong to the controller.
    fn check_serve(&self) -> Result<(), String> {
        let writes = [
            ("--converge", self.restart_on_rebuild),
            ("--webhook-configuration", self.webhook_configuration.is_some()),
            ("--mode policy", self.mode == Mode::Policy),
        ];
        match writes.iter().find(|(_, on)| *on) {
            Some((flag, _)) => Err(format!(
                "{flag} is a controller job: run it in a second process with --role controller (the admission server only reads ImageMaps)"
            )),
            None => Ok(()),
        }
    }

    /// The controller writes to the cluster and reads only the cluster's maps.
    fn check_controller(&self) -> Result<(), String> {
        if self.no_cluster {
            return Err("--role controller cannot be used with --no-cluster: the controller acts on the cluster".into());
        }
        if self.imagemaps_file.is_some() {
            return Err(
                "--role controller cannot be used with --imagemaps-file: give the file to the --role serve process"
                    .into(),
            );
        }
        Ok(())
    }

    /// Connection timeouts from the flags.
    pub fn timeouts(&self) -> Timeouts {
        Timeouts {
            handshake: self.tls_handshake_timeout,
            header: self.header_timeout,
            body: self.body_timeout,
            idle: self.idle_timeout,
            shutdown: self.shutdown_timeout,
        }
    }
}

pub use imagemap_core::duration::{parse_duration, parse_positive_duration};

/// A count that must be at least one.
pub fn parse_positive_count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("invalid number {s:?}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_common_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("5h").is_err());
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn negative_malformed_and_huge_durations_are_errors() {
        for bad in ["-1s", "-0.5", "", "s", "1e9s", "inf", "NaN", "1..2s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        let huge = parse_duration("99999999999999999999999m").expect_err("overflow");
        assert!(huge.contains("out of range"), "{huge}");
    }

    #[test]
    fn zero_intervals_and_timeouts_are_refused_naming_the_flag() {
        for flag in [
            "--tls-reload-interval",
            "--maps-reload-interval",
            "--controller-interval",
            "--tls-handshake-timeout",
            "--header-timeout",
            "--body-timeout",
            "--idle-timeout",
            "--gate-timeout",
        ] {
            let err = Config::try_parse_from([
                "imagemap-webhook",
                "--tls-cert-file",
                "c",
                "--tls-private-key-file",
                "k",
                flag,
                "0s",
            ])
            .expect_err(flag);
            let text = err.to_string();
            assert!(text.contains(flag) && text.contains("greater than zero"), "{text}");
        }
        // Zero is meaningful for these.
        let c = Config::try_parse_from([
            "imagemap-webhook",
            "--tls-cert-file",
            "c",
            "--tls-private-key-file",
            "k",
            "--shutdown-delay",
            "0s",
            "--shutdown-timeout",
            "0s",
        ])
        .expect("zero shutdown delay and timeout");
        assert!(c.shutdown_delay.is_zero() && c.shutdown_timeout.is_zero());
    }

    fn parse(extra: &[&str]) -> Config {
        let base = ["imagemap-webhook", "--tls-cert-file", "c", "--tls-private-key-file", "k"];
        Config::try_parse_from(base.iter().chain(extra)).expect("parses")
    }

    #[test]
    fn policy_mode_refuses_what_a_policy_cannot_do_naming_both_flags() {
        let policy = |extra: &[&str]| parse(&[&["--role", "controller", "--mode", "policy"], extra].concat());
        assert_eq!(policy(&["--converge", "--global-namespace", "g"]).check(), Ok(()));
        for (flag, extra) in [
            ("--gate-unbuilt", &["--gate-unbuilt"][..]),
            ("--webhook-configuration", &["--webhook-configuration", "x"][..]),
        ] {
            let err = policy(extra).check().expect_err(flag);
            assert!(err.contains("--mode policy") && err.contains(flag), "{err}");
        }
        for flag in ["--imagemaps-file", "--no-cluster"] {
            let extra: &[&str] = if flag == "--no-cluster" { &[flag] } else { &[flag, "m.yaml"] };
            let err = policy(extra).check().expect_err(flag);
            assert!(err.contains("--role controller") && err.contains(flag), "{err}");
        }
    }

    #[test]
    fn the_admission_server_refuses_the_controllers_writes_naming_the_role() {
        for extra in
            [&["--converge"][..], &["--restart-on-rebuild"], &["--webhook-configuration", "x"], &["--mode", "policy"]]
        {
            let err = parse(extra).check().expect_err("refused");
            assert!(err.contains("--role controller") && err.contains("only reads"), "{extra:?}: {err}");
        }
        assert_eq!(parse(&["--gate-unbuilt", "--allowed-registry", "localhost:5000/"]).check(), Ok(()));
        let err = parse(&["--allowed-registry", "/x"]).check().expect_err("not a prefix");
        assert!(err.contains("--allowed-registry"), "{err}");
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let c = Config::parse_from(["imagemap-webhook", "--tls-cert-file", "c", "--tls-private-key-file", "k"]);
        assert_eq!(c.listen.to_string(), "0.0.0.0:8443");
        assert_eq!(c.max_body_bytes, 3 * 1024 * 1024);
        assert_eq!(c.role, Role::Serve);
        assert_eq!(c.allow_overrides, Overrides::All);
        assert!(!c.no_cluster);
    }
}
