//! The registry a cluster advertises and how a build is named in it (DESIGN §9c).
//!
//! Local clusters publish their registry in the ConfigMap `kube-public/local-registry-hosting`
//! (KEP 1755), key `localRegistryHosting.v1`: `host` is how the developer's machine reaches it,
//! `hostFromContainerRuntime` how the node's runtime pulls from it (when empty: `host`),
//! `hostFromClusterNetwork` how Pods reach it, `help` a URL. A selector's build is named like
//! Tilt names it: `HOST/` + the selector's familiar name with `/`, `:` and `@` replaced by `_`,
//! left as is when it already starts with `HOST/`. The path under the host is the same on every
//! network (it is one registry), so the runtime's name is that path under the runtime's host.
//!
//! Also here: reading what build tools report they pushed (`docker buildx build
//! --metadata-file`, `skaffold build --file-output`). Everything is pure: no I/O.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::reference::Reference;

/// The namespace of the advertisement.
pub const HOSTING_NAMESPACE: &str = "kube-public";
/// The ConfigMap's name.
pub const HOSTING_CONFIG_MAP: &str = "local-registry-hosting";
/// The ConfigMap key holding the YAML document.
pub const HOSTING_KEY: &str = "localRegistryHosting.v1";

/// Why an advertisement, a registry host or a build output cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The ConfigMap has no `localRegistryHosting.v1` key.
    #[error(
        "ConfigMap {HOSTING_NAMESPACE}/{HOSTING_CONFIG_MAP} has no key {HOSTING_KEY:?}: set it with \
         `kubectl imagemap registry set --host HOST`"
    )]
    MissingKey,
    /// The key's value is not a YAML mapping of strings.
    #[error(
        "ConfigMap {HOSTING_NAMESPACE}/{HOSTING_CONFIG_MAP} key {HOSTING_KEY:?} is not valid YAML with string \
         fields host, hostFromContainerRuntime, hostFromClusterNetwork, help: {0}; rewrite it with \
         `kubectl imagemap registry set --host HOST`"
    )]
    Yaml(String),
    /// `host` is missing or empty.
    #[error(
        "ConfigMap {HOSTING_NAMESPACE}/{HOSTING_CONFIG_MAP} key {HOSTING_KEY:?} has no host: set it with \
         `kubectl imagemap registry set --host HOST`"
    )]
    MissingHost,
    /// A host is not a registry (optionally with a path) that image names can start with.
    #[error(
        "{field} {host:?} is not a registry host: expected HOST[:PORT][/PATH] whose first part is a host name \
         (with a '.' or a port, or localhost), as in localhost:5000 or gcr.io/team"
    )]
    Host {
        /// Which field or flag.
        field: String,
        /// The value.
        host: String,
    },
    /// A computed name does not parse.
    #[error(
        "the name {name:?} computed for selector {selector:?} under {host:?} is not a valid image reference: {reason}"
    )]
    Name {
        /// The selector.
        selector: String,
        /// The registry host.
        host: String,
        /// The computed name.
        name: String,
        /// Why it does not parse.
        reason: String,
    },
    /// A build-output file cannot be read as either known format.
    #[error("{0}")]
    BuildOutput(String),
}

/// `localRegistryHosting.v1`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalRegistryHosting {
    /// How the developer's machine reaches the registry (pushes).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    /// How Pods reach it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host_from_cluster_network: String,
    /// How the node's container runtime pulls from it (empty: `host`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host_from_container_runtime: String,
    /// A URL that explains the registry.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub help: String,
}

impl LocalRegistryHosting {
    /// Reads the key's YAML and checks every host.
    pub fn parse(text: &str) -> Result<LocalRegistryHosting, RegistryError> {
        let hosting: Option<LocalRegistryHosting> =
            crate::yaml::from_str(text).map_err(|e| RegistryError::Yaml(one_line(&e.to_string())))?;
        let hosting = hosting.unwrap_or_default();
        if hosting.host.is_empty() {
            return Err(RegistryError::MissingHost);
        }
        hosting.validate()?;
        Ok(hosting)
    }

    /// Reads the ConfigMap's data.
    pub fn from_config_map_data<'a>(
        mut data: impl Iterator<Item = (&'a String, &'a String)>,
    ) -> Result<LocalRegistryHosting, RegistryError> {
        match data.find(|(k, _)| k.as_str() == HOSTING_KEY) {
            Some((_, v)) => LocalRegistryHosting::parse(v),
            None => Err(RegistryError::MissingKey),
        }
    }

    /// Checks that every non-empty host is a registry host.
    pub fn validate(&self) -> Result<(), RegistryError> {
        validate_host("host", &self.host)?;
        for (field, host) in [
            ("hostFromContainerRuntime", &self.host_from_container_runtime),
            ("hostFromClusterNetwork", &self.host_from_cluster_network),
        ] {
            if !host.is_empty() {
                validate_host(field, host)?;
            }
        }
        Ok(())
    }

    /// The host the node's runtime pulls from: `hostFromContainerRuntime`, else `host`.
    pub fn runtime_host(&self) -> &str {
        if self.host_from_container_runtime.is_empty() {
            &self.host
        } else {
            &self.host_from_container_runtime
        }
    }

    /// The key's value as YAML.
    pub fn to_yaml(&self) -> String {
        crate::yaml::to_string(self).unwrap_or_default()
    }

    /// The registry part (`HOST[:PORT]`, without a path) of every advertised host.
    pub fn registry_hosts(&self) -> Vec<&str> {
        [&self.host, &self.host_from_container_runtime, &self.host_from_cluster_network]
            .into_iter()
            .filter(|h| !h.is_empty())
            .map(|h| h.split('/').next().unwrap_or(h))
            .collect()
    }

    /// The names under the runtime's host of `image` when it is under `host`
    /// (`localhost:5000/app:t` -> `registry:5000/app:t`); `None` when it is not.
    pub fn runtime_name_of(&self, image: &Reference) -> Option<String> {
        let familiar = image.familiar();
        let rest = familiar.strip_prefix(self.host.as_str())?.strip_prefix('/')?;
        Some(format!("{}/{rest}", self.runtime_host()))
    }
}

/// Checks that `host` is `HOST[:PORT][/PATH]` with a real registry first: `HOST/x` parses as a
/// reference whose name starts with `HOST/` (so `team` alone, a Docker Hub path, is refused).
pub fn validate_host(field: &str, host: &str) -> Result<(), RegistryError> {
    let bad = || RegistryError::Host { field: field.to_string(), host: host.to_string() };
    if host.is_empty() || host.ends_with('/') {
        return Err(bad());
    }
    match Reference::parse(&format!("{host}/x")) {
        Ok(r) if r.name() == format!("{host}/x") && r.tag().is_none() && r.digest().is_none() => Ok(()),
        _ => Err(bad()),
    }
}

/// Where a selector's builds go: the path under the registry, and the names on each network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildTarget {
    /// The registry as the developer's machine pushes to it (may carry a path).
    pub host: String,
    /// The registry as the node's runtime pulls from it.
    pub runtime_host: String,
    /// The image's path under the registry (`gcr.io_team_api`), `EXPECTED_IMAGE`.
    pub image: String,
}

impl BuildTarget {
    /// `HOST/IMAGE`, the name pushed to.
    pub fn local_name(&self) -> String {
        format!("{}/{}", self.host, self.image)
    }

    /// `RUNTIME_HOST/IMAGE`, the name the node pulls.
    pub fn runtime_name(&self) -> String {
        format!("{}/{}", self.runtime_host, self.image)
    }
}

/// Tilt's escaping: every `/`, `:` and `@` becomes `_`.
pub fn escape_name(name: &str) -> String {
    name.chars().map(|c| if matches!(c, '/' | ':' | '@') { '_' } else { c }).collect()
}

/// Names the build of `selector` under `host` (pushed) and `runtime_host` (pulled; `host` when
/// empty): the selector's familiar name (no tag, no digest), escaped, unless it already starts
/// with `host/`, in which case the rest of it is the path under the registry.
pub fn build_target(selector: &Reference, host: &str, runtime_host: &str) -> Result<BuildTarget, RegistryError> {
    validate_host("registry", host)?;
    let runtime_host = if runtime_host.is_empty() { host } else { runtime_host };
    validate_host("hostFromContainerRuntime", runtime_host)?;
    let familiar = selector.familiar_name();
    let image = match familiar.strip_prefix(host).and_then(|r| r.strip_prefix('/')) {
        Some(rest) => rest.to_string(),
        None => escape_name(familiar),
    };
    let target = BuildTarget { host: host.to_string(), runtime_host: runtime_host.to_string(), image };
    for (h, name) in [(host, target.local_name()), (runtime_host, target.runtime_name())] {
        if let Err(e) = Reference::parse(&name) {
            return Err(RegistryError::Name {
                selector: selector.familiar(),
                host: h.to_string(),
                name,
                reason: e.to_string(),
            });
        }
    }
    Ok(target)
}

/// The image a build tool reports it pushed for `selector`, read from a `docker buildx build
/// --metadata-file` JSON (`image.name`, possibly comma-separated, and `containerimage.digest`)
/// or a `skaffold build --file-output` JSON (`builds[].imageName`, `builds[].tag`).
///
/// A buildx file describes one build: of its names, the one whose repository is the selector's,
/// else the one named by the selector's build target (when `target` is given), else the only
/// repository named; it is pinned by `containerimage.digest`. Of skaffold's builds, the one whose
/// `imageName` is the selector (by repository name); its `tag` is the pushed reference.
pub fn pushed_from_build_output(
    text: &str,
    selector: &Reference,
    target: Option<&BuildTarget>,
) -> Result<String, RegistryError> {
    let bad = |what: String| RegistryError::BuildOutput(what);
    let doc: Value = serde_json::from_str(text).map_err(|e| {
        bad(format!(
            "not JSON ({e}): pass the file written by `docker buildx build --metadata-file FILE` or \
             `skaffold build --file-output FILE`"
        ))
    })?;
    if let Some(builds) = doc.get("builds") {
        let builds = builds.as_array().ok_or_else(|| bad("skaffold output: builds is not a list".into()))?;
        let mut names = Vec::new();
        for b in builds {
            let name = b.get("imageName").and_then(Value::as_str).unwrap_or_default();
            names.push(name.to_string());
            if Reference::parse(name).is_ok_and(|r| r.name() == selector.name()) {
                let tag = b.get("tag").and_then(Value::as_str).unwrap_or_default();
                return match Reference::parse(tag) {
                    Ok(r) => Ok(r.familiar()),
                    Err(e) => Err(bad(format!("skaffold output: the tag {tag:?} of image {name:?} is invalid: {e}"))),
                };
            }
        }
        return Err(bad(format!(
            "skaffold output has no build for selector {:?} (images: {}): build that image or pass --selector",
            selector.familiar(),
            names.join(", ")
        )));
    }
    let Some(list) = doc.get("image.name").and_then(Value::as_str) else {
        return Err(bad("neither a buildx metadata file (no \"image.name\": build with --push or -t and \
             --metadata-file) nor a skaffold output file (no \"builds\")"
            .into()));
    };
    let digest = doc.get("containerimage.digest").and_then(Value::as_str).unwrap_or_default();
    if digest.is_empty() {
        return Err(bad("buildx metadata has no \"containerimage.digest\": build with --push".into()));
    }
    let mut refs = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let r =
            Reference::parse(name).map_err(|e| bad(format!("buildx metadata: image name {name:?} is invalid: {e}")))?;
        refs.push(r);
    }
    let chosen = refs
        .iter()
        .find(|r| r.name() == selector.name())
        .or_else(|| {
            let t = target?;
            refs.iter().find(|r| r.familiar_name() == t.local_name())
        })
        .or_else(|| match refs.first() {
            Some(first) if refs.iter().all(|r| r.name() == first.name()) => Some(first),
            _ => None,
        })
        .ok_or_else(|| {
            bad(format!(
                "buildx metadata names several repositories ({list}) and none is selector {:?}: tag the build \
                 with the selector's name",
                selector.familiar()
            ))
        })?;
    let pinned = match chosen.tag() {
        Some(tag) => format!("{}:{tag}@{digest}", chosen.familiar_name()),
        None => format!("{}@{digest}", chosen.familiar_name()),
    };
    Reference::parse(&pinned)
        .map(|r| r.familiar())
        .map_err(|e| bad(format!("buildx metadata: {pinned:?} is not a valid reference: {e}")))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        Reference::parse(s).expect("valid reference")
    }

    fn local(host: &str, selector: &str) -> String {
        build_target(&r(selector), host, "").expect("named").local_name()
    }

    #[test]
    fn names_builds_like_tilt() {
        assert_eq!(local("localhost:5000", "gcr.io/foo/bar"), "localhost:5000/gcr.io_foo_bar");
        assert_eq!(local("myreg.com", "gcr.io/foo/bar"), "myreg.com/gcr.io_foo_bar");
        assert_eq!(local("gcr.io/foo", "docker.io/library/busybox"), "gcr.io/foo/busybox");
        assert_eq!(local("gcr.io/foo", "bar"), "gcr.io/foo/bar");
        assert_eq!(local("localhost:5000", "team/app"), "localhost:5000/team_app");
        // A registry with a path (Tilt's `default_registry('...amazonaws.com/bar')`).
        assert_eq!(
            local("123456789012.dkr.ecr.us-east-1.amazonaws.com/bar", "gcr.io/baz/foo/bar:deadbeef"),
            "123456789012.dkr.ecr.us-east-1.amazonaws.com/bar/gcr.io_baz_foo_bar"
        );
        assert_eq!(local("myreg.com:5000", "myreg.com/bar"), "myreg.com:5000/myreg.com_bar");
        assert_eq!(local("myreg.com", "myreg.com:5000/bar"), "myreg.com/myreg.com_5000_bar");
    }

    #[test]
    fn names_already_under_the_host_are_left_as_they_are() {
        assert_eq!(local("myreg.com", "myreg.com/bar"), "myreg.com/bar");
        assert_eq!(local("myreg.com:5000", "myreg.com:5000/bar"), "myreg.com:5000/bar");
        assert_eq!(local("localhost:5000", "localhost:5000/team/app:v1"), "localhost:5000/team/app");
        assert_eq!(local("gcr.io/team", "gcr.io/team/api"), "gcr.io/team/api");
        // A prefix that is not a whole path component is not "under the host".
        assert_eq!(local("gcr.io/team", "gcr.io/teamx/api"), "gcr.io/team/gcr.io_teamx_api");
    }

    #[test]
    fn tags_and_digests_in_selectors_are_dropped() {
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(local("myreg.com", "gcr.io/foo/bar:deadbeef"), "myreg.com/gcr.io_foo_bar");
        assert_eq!(local("localhost:5000", &format!("app@{digest}")), "localhost:5000/app");
        assert_eq!(local("localhost:5000", &format!("gcr.io/x/app:1@{digest}")), "localhost:5000/gcr.io_x_app");
    }

    #[test]
    fn the_runtime_name_keeps_the_path_under_the_runtime_host() {
        let t = build_target(&r("gcr.io/foo/bar"), "localhost:1234", "registry:1234").expect("named");
        assert_eq!(t.local_name(), "localhost:1234/gcr.io_foo_bar");
        assert_eq!(t.runtime_name(), "registry:1234/gcr.io_foo_bar");
        assert_eq!(t.image, "gcr.io_foo_bar");
        let t = build_target(&r("gcr.io/foo/bar"), "myreg.com", "").expect("named");
        assert_eq!(t.runtime_name(), "myreg.com/gcr.io_foo_bar");
        // Already under the pushing host: the same path under the runtime's host.
        let t = build_target(&r("localhost:1234/app"), "localhost:1234", "registry:1234").expect("named");
        assert_eq!((t.local_name(), t.runtime_name()), ("localhost:1234/app".into(), "registry:1234/app".into()));
    }

    #[test]
    fn registry_hosts_must_start_with_a_registry() {
        for bad in ["", "invalid", "foo/bar/baz", "localhost:5000/", "Local Host", "gcr.io/team:tag"] {
            let e = build_target(&r("app"), bad, "").expect_err(bad);
            assert!(matches!(e, RegistryError::Host { .. }), "{bad}: {e}");
        }
        let e = build_target(&r("app"), "localhost:5000", "nope").expect_err("bad runtime host");
        assert!(e.to_string().starts_with("hostFromContainerRuntime \"nope\" is not a registry host"), "{e}");
    }

    #[test]
    fn reads_the_advertisement() {
        let h = LocalRegistryHosting::parse(
            "host: \"localhost:5000\"\nhostFromContainerRuntime: \"registry:5000\"\nhostFromClusterNetwork: \"kind-registry:5000\"\nhelp: \"https://kind.sigs.k8s.io/docs/user/local-registry/\"\n",
        )
        .expect("valid");
        assert_eq!(h.host, "localhost:5000");
        assert_eq!(h.runtime_host(), "registry:5000");
        assert_eq!(h.host_from_cluster_network, "kind-registry:5000");
        assert_eq!(h.registry_hosts(), ["localhost:5000", "registry:5000", "kind-registry:5000"]);
        assert_eq!(LocalRegistryHosting::parse(&h.to_yaml()).expect("round trip"), h);
        // Fields Tilt does not know are ignored, as in KEP 1755's forward-compatible reading.
        let h = LocalRegistryHosting::parse("host: localhost:5000\nfuture: 1\n").expect("valid");
        assert_eq!(h.runtime_host(), "localhost:5000");
    }

    #[test]
    fn an_empty_runtime_host_means_the_pushing_host() {
        let h = LocalRegistryHosting::parse("host: localhost:5000\nhostFromContainerRuntime: \"\"\n").expect("valid");
        assert_eq!(h.runtime_host(), "localhost:5000");
        assert_eq!(h.runtime_name_of(&r("localhost:5000/app:t")).as_deref(), Some("localhost:5000/app:t"));
        let h = LocalRegistryHosting {
            host: "localhost:5000".into(),
            host_from_container_runtime: "registry:5000".into(),
            ..Default::default()
        };
        assert_eq!(h.runtime_name_of(&r("localhost:5000/team/app:t")).as_deref(), Some("registry:5000/team/app:t"));
        assert_eq!(h.runtime_name_of(&r("localhost:50001/app:t")), None);
        assert_eq!(h.runtime_name_of(&r("gcr.io/app:t")), None);
    }

    #[test]
    fn a_broken_advertisement_is_an_error_naming_the_key_and_the_fix() {
        let e = LocalRegistryHosting::parse("host: [localhost\n").expect_err("bad YAML");
        let text = e.to_string();
        assert!(
            text.starts_with(
                "ConfigMap kube-public/local-registry-hosting key \"localRegistryHosting.v1\" is not valid YAML"
            ),
            "{text}"
        );
        assert!(text.contains("kubectl imagemap registry set --host HOST"), "{text}");
        let e = LocalRegistryHosting::parse("host:\n  nested: 1\n").expect_err("not a string");
        assert!(matches!(e, RegistryError::Yaml(_)), "{e}");
        assert_eq!(LocalRegistryHosting::parse("help: https://x\n").expect_err("no host"), RegistryError::MissingHost);
        assert_eq!(LocalRegistryHosting::parse("").expect_err("empty"), RegistryError::MissingHost);
        let e = LocalRegistryHosting::parse("host: localhost:5000\nhostFromContainerRuntime: nope\n").expect_err("bad");
        assert!(e.to_string().starts_with("hostFromContainerRuntime \"nope\""), "{e}");
        let empty = std::collections::BTreeMap::<String, String>::new();
        assert_eq!(
            LocalRegistryHosting::from_config_map_data(empty.iter()).expect_err("no key"),
            RegistryError::MissingKey
        );
    }

    const DIGEST: &str = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

    #[test]
    fn reads_a_buildx_metadata_file() {
        let text = format!(
            r#"{{"buildx.build.ref": "builder/builder0/x", "containerimage.config.digest": "sha256:{}",
               "containerimage.digest": "{DIGEST}",
               "image.name": "localhost:5000/app:tilt-1,localhost:5000/app:latest"}}"#,
            "b".repeat(64)
        );
        // One repository: that one, its first tag, pinned.
        assert_eq!(
            pushed_from_build_output(&text, &r("app"), None).expect("read"),
            format!("localhost:5000/app:tilt-1@{DIGEST}")
        );
        // Several repositories: the selector's, else the build target's.
        let two = format!(
            r#"{{"containerimage.digest": "{DIGEST}", "image.name": "localhost:5000/gcr.io_x_api:t, gcr.io/x/api:t"}}"#
        );
        assert_eq!(
            pushed_from_build_output(&two, &r("gcr.io/x/api"), None).expect("read"),
            format!("gcr.io/x/api:t@{DIGEST}")
        );
        let target = build_target(&r("gcr.io/x/api:dev"), "localhost:5000", "").expect("named");
        let two = format!(
            r#"{{"containerimage.digest": "{DIGEST}", "image.name": "other.io/a:1,localhost:5000/gcr.io_x_api:t"}}"#
        );
        assert_eq!(
            pushed_from_build_output(&two, &r("gcr.io/x/api:dev"), Some(&target)).expect("read"),
            format!("localhost:5000/gcr.io_x_api:t@{DIGEST}")
        );
        let e = pushed_from_build_output(&two, &r("web"), None).expect_err("ambiguous");
        assert!(e.to_string().contains("none is selector \"web\""), "{e}");
        let e = pushed_from_build_output(r#"{"image.name": "localhost:5000/app:1"}"#, &r("app"), None)
            .expect_err("no digest");
        assert!(e.to_string().contains("containerimage.digest"), "{e}");
    }

    #[test]
    fn reads_a_skaffold_output_file() {
        let text = format!(
            r#"{{"builds":[{{"imageName":"web","tag":"localhost:5000/web:v1@{DIGEST}"}},
                           {{"imageName":"gcr.io/team/app","tag":"localhost:5000/gcr.io_team_app:v2@{DIGEST}"}}]}}"#
        );
        assert_eq!(
            pushed_from_build_output(&text, &r("gcr.io/team/app:dev"), None).expect("read"),
            format!("localhost:5000/gcr.io_team_app:v2@{DIGEST}")
        );
        assert_eq!(
            pushed_from_build_output(&text, &r("docker.io/library/web"), None).expect("read"),
            format!("localhost:5000/web:v1@{DIGEST}")
        );
        let e = pushed_from_build_output(&text, &r("api"), None).expect_err("absent");
        assert_eq!(
            e.to_string(),
            "skaffold output has no build for selector \"api\" (images: web, gcr.io/team/app): build that image or pass --selector"
        );
        let e = pushed_from_build_output("[1]", &r("api"), None).expect_err("unknown");
        assert!(e.to_string().starts_with("neither a buildx metadata file"), "{e}");
        let e = pushed_from_build_output("{", &r("api"), None).expect_err("not JSON");
        assert!(e.to_string().starts_with("not JSON"), "{e}");
    }
}
