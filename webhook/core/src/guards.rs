//! Admin guards (DESIGN §9, docs/security.md): what any map may do, whoever wrote it. A map
//! outside them is unusable (never applied, reported with the guard's name), and protected
//! namespaces are never swapped at all. The same rules bind the webhook's engine, the policy
//! compiler and the chart's ValidatingAdmissionPolicy on ImageMap writes.

use std::collections::BTreeSet;

use crate::reference::Reference;

/// Namespaces that are never swapped, whatever the flags say.
pub const ALWAYS_PROTECTED: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// Which maps may replace a container's `command` and `args`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overrides {
    /// No map may.
    None,
    /// Only maps of the Pod's own namespace (not the global namespace, not the maps file).
    Local,
    /// Any map.
    #[default]
    All,
}

impl Overrides {
    /// The flag value.
    pub fn as_str(self) -> &'static str {
        match self {
            Overrides::None => "none",
            Overrides::Local => "local",
            Overrides::All => "all",
        }
    }
}

impl std::str::FromStr for Overrides {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Overrides::None),
            "local" => Ok(Overrides::Local),
            "all" => Ok(Overrides::All),
            other => Err(format!("invalid value {other:?}: expected none, local or all")),
        }
    }
}

impl std::fmt::Display for Overrides {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The bounds an admin set on every map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Guards {
    /// Target prefixes (`--allowed-registry`); empty allows any registry.
    pub allowed_registries: Vec<String>,
    /// Which maps may override `command`/`args` (`--allow-overrides`).
    pub overrides: Overrides,
    /// Namespaces never swapped (`--protected-namespace` plus [`ALWAYS_PROTECTED`]).
    pub protected_namespaces: BTreeSet<String>,
}

impl Guards {
    /// Guards with the always-protected namespaces plus `protected` (empty names ignored).
    pub fn new(allowed_registries: Vec<String>, overrides: Overrides, protected: &[String]) -> Guards {
        let protected_namespaces = ALWAYS_PROTECTED
            .iter()
            .map(|s| s.to_string())
            .chain(protected.iter().filter(|s| !s.is_empty()).cloned())
            .collect();
        let allowed_registries = allowed_registries.into_iter().filter(|p| !p.is_empty()).collect();
        Guards { allowed_registries, overrides, protected_namespaces }
    }

    /// True when Pods of `namespace` are never swapped.
    pub fn is_protected(&self, namespace: &str) -> bool {
        self.protected_namespaces.contains(namespace)
    }

    /// True when `target` is under an allowed registry prefix (always, when none is set).
    ///
    /// A prefix with a `/` is compared with the target's normalized name and its familiar
    /// string (`docker.io/library/` and `library/` name the same thing); a prefix without one
    /// names a registry host and must equal the target's registry exactly (so `localhost:5000`
    /// does not allow `localhost:50001`).
    pub fn registry_allowed(&self, target: &Reference) -> bool {
        if self.allowed_registries.is_empty() {
            return true;
        }
        let familiar = target.familiar();
        self.allowed_registries.iter().any(|prefix| {
            if prefix.contains('/') {
                target.name().starts_with(prefix.as_str()) || familiar.starts_with(prefix.as_str())
            } else {
                target.registry() == prefix
            }
        })
    }

    /// True when a map with overrides may apply them to a Pod; `local` tells whether the map is
    /// in the Pod's own namespace.
    pub fn overrides_allowed(&self, local: bool) -> bool {
        match self.overrides {
            Overrides::None => false,
            Overrides::Local => local,
            Overrides::All => true,
        }
    }

    /// The allowed prefixes, for messages: `a, b`.
    pub fn allowed_list(&self) -> String {
        self.allowed_registries.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guards(prefixes: &[&str]) -> Guards {
        Guards::new(prefixes.iter().map(|s| s.to_string()).collect(), Overrides::All, &[])
    }

    fn r(s: &str) -> Reference {
        Reference::parse(s).expect("valid reference")
    }

    #[test]
    fn no_prefix_allows_every_registry() {
        assert!(guards(&[]).registry_allowed(&r("evil.example/x:1")));
    }

    #[test]
    fn prefixes_with_a_slash_compare_the_start_of_the_name() {
        let g = guards(&["localhost:5000/", "registry.example.com/team/"]);
        assert!(g.registry_allowed(&r("localhost:5000/app:t")));
        assert!(g.registry_allowed(&r(
            "registry.example.com/team/api@sha256:0000000000000000000000000000000000000000000000000000000000000000"
        )));
        assert!(!g.registry_allowed(&r("registry.example.com/other/api:1")));
        assert!(!g.registry_allowed(&r("localhost:50001/app:t")));
        assert!(!g.registry_allowed(&r("app:t")));
    }

    #[test]
    fn a_bare_host_prefix_names_the_registry_exactly() {
        let g = guards(&["localhost:5000"]);
        assert!(g.registry_allowed(&r("localhost:5000/app:t")));
        assert!(!g.registry_allowed(&r("localhost:50001/app:t")));
        let hub = guards(&["docker.io"]);
        assert!(hub.registry_allowed(&r("nginx:1")));
    }

    #[test]
    fn overrides_follow_the_setting_and_the_maps_scope() {
        let mut g = guards(&[]);
        assert!(g.overrides_allowed(false));
        g.overrides = Overrides::Local;
        assert!(g.overrides_allowed(true) && !g.overrides_allowed(false));
        g.overrides = Overrides::None;
        assert!(!g.overrides_allowed(true));
    }

    #[test]
    fn system_namespaces_are_always_protected() {
        let g = Guards::new(vec![], Overrides::All, &["imagemap-system".into(), String::new()]);
        for ns in ["kube-system", "kube-public", "kube-node-lease", "imagemap-system"] {
            assert!(g.is_protected(ns), "{ns}");
        }
        assert!(!g.is_protected("default") && !g.is_protected(""));
    }
}
