//! The image-reference grammar (Docker distribution) and its normalization (DESIGN §3).
//!
//! Written here rather than taken from a crate: the crates we tried (`oci-spec`'s
//! `distribution::Reference` among them) add an implicit `:latest` tag, and accept or normalize
//! some inputs differently from §3 (no library prefix rules for familiar strings, digests of any
//! algorithm and length). §3 needs exact control over what counts as a registry, digests limited to
//! known algorithms with exact lengths, and three distinct views, so the grammar is small and ours.

use std::fmt;

/// Docker Hub's canonical registry name.
pub const DOCKER_HUB: &str = "docker.io";
const LEGACY_DOCKER_HUB: &str = "index.docker.io";
const OFFICIAL_PREFIX: &str = "library/";
const NAME_MAX: usize = 255;
const TAG_MAX: usize = 128;

/// Why a string is not a valid image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// The string is empty.
    #[error("image reference is empty")]
    Empty,
    /// The string contains whitespace or a control character.
    #[error("image reference {0:?} contains whitespace or control characters")]
    Whitespace(String),
    /// A bare 64-hex string looks like an image ID, not a reference.
    #[error("image reference {0:?} is a 64-character hex image ID, not a repository name")]
    ImageId(String),
    /// The repository path has uppercase letters.
    #[error("repository path {0:?} must be lowercase")]
    Uppercase(String),
    /// A path component breaks `[a-z0-9]+([._]|__|-+)[a-z0-9]+` rules.
    #[error("repository path {path:?} is invalid: component {component:?} must be lowercase letters and digits separated by '.', '_', '__' or dashes")]
    PathComponent {
        /// The whole path.
        path: String,
        /// The offending component.
        component: String,
    },
    /// The registry host or port is malformed.
    #[error("registry {0:?} is invalid: expected a host name or address with an optional numeric port")]
    Registry(String),
    /// The tag is malformed.
    #[error("tag {0:?} is invalid: expected [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}")]
    Tag(String),
    /// The digest is malformed.
    #[error("digest {digest:?} is invalid: {reason}")]
    Digest {
        /// The digest text after `@`.
        digest: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The repository name is longer than 255 characters.
    #[error("repository name is {0} characters long; at most 255 are allowed")]
    TooLong(usize),
}

/// A parsed, normalized image reference: `registry/path[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    name: String,
    registry_len: usize,
    tag: Option<String>,
    digest: Option<String>,
}

impl Reference {
    /// Parses and normalizes `s` (DESIGN §3). Never trims, never adds `:latest`.
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ReferenceError::Whitespace(s.to_string()));
        }
        if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ReferenceError::ImageId(s.to_string()));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((rest, digest)) => (rest, Some(parse_digest(digest)?)),
            None => (s, None),
        };
        // A tag is the text after the last ':' that follows the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &rest[last_slash + i + 1..];
                validate_tag(tag)?;
                (&rest[..last_slash + i], Some(tag.to_string()))
            }
            None => (rest, None),
        };
        if name.len() > NAME_MAX {
            return Err(ReferenceError::TooLong(name.len()));
        }
        let (registry, path) = split_registry(name);
        if !registry.is_empty() {
            validate_registry(registry)?;
        }
        let registry = match registry {
            "" | LEGACY_DOCKER_HUB => DOCKER_HUB,
            r => r,
        };
        validate_path(path)?;
        let mut normalized = String::with_capacity(registry.len() + path.len() + 9);
        normalized.push_str(registry);
        normalized.push('/');
        if registry == DOCKER_HUB && !path.contains('/') {
            normalized.push_str(OFFICIAL_PREFIX);
        }
        normalized.push_str(path);
        if normalized.len() > NAME_MAX {
            return Err(ReferenceError::TooLong(normalized.len()));
        }
        Ok(Reference { registry_len: registry.len(), name: normalized, tag, digest })
    }

    /// The normalized repository name, `registry/path` (e.g. `docker.io/library/nginx`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The registry host (and port), e.g. `docker.io` or `localhost:5000`.
    pub fn registry(&self) -> &str {
        &self.name[..self.registry_len]
    }

    /// The repository path, e.g. `library/nginx`.
    pub fn path(&self) -> &str {
        &self.name[self.registry_len + 1..]
    }

    /// The tag, if one was written.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest (`algo:hex`), if one was written.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// The full normalized string: name plus whatever tag and digest are present.
    pub fn full(&self) -> String {
        let mut s = self.name.clone();
        self.push_suffix(&mut s);
        s
    }

    /// The familiar string: the full string without `docker.io/` and a lone `library/`.
    pub fn familiar(&self) -> String {
        let mut s = String::from(self.familiar_name());
        self.push_suffix(&mut s);
        s
    }

    /// The familiar form of the name alone (`nginx`, `team/app`, `gcr.io/x/app`). A Docker Hub
    /// path whose first component would read as a registry (`docker.io/my.org/app`) keeps its
    /// `docker.io/`, so the familiar string always parses back to the same reference.
    pub fn familiar_name(&self) -> &str {
        if self.registry() != DOCKER_HUB {
            return &self.name;
        }
        let path = self.path();
        match path.strip_prefix(OFFICIAL_PREFIX) {
            Some(rest) if !rest.contains('/') => rest,
            _ if split_registry(path).0.is_empty() => path,
            _ => &self.name,
        }
    }

    fn push_suffix(&self, s: &mut String) {
        if let Some(tag) = &self.tag {
            s.push(':');
            s.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            s.push('@');
            s.push_str(digest);
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full())
    }
}

impl std::str::FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

/// Splits `name` into (registry, path). The text before the first `/` is a registry only if it is
/// `localhost`, contains `.` or `:`, or has an uppercase letter (Docker's `ParseNormalizedNamed`:
/// a lowercase path could never have it); otherwise the registry is empty (Docker Hub).
fn split_registry(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first == "localhost" || first.contains(['.', ':']) || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (first, rest)
        }
        _ => ("", name),
    }
}

fn validate_registry(registry: &str) -> Result<(), ReferenceError> {
    let bad = || ReferenceError::Registry(registry.to_string());
    let (host, port) = if let Some(v6) = registry.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or_else(bad)?;
        if addr.is_empty() || !addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
            return Err(bad());
        }
        match after {
            "" => ("", None),
            p => ("", Some(p.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        match registry.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (registry, None),
        }
    };
    if !registry.starts_with('[') {
        if host.is_empty() {
            return Err(bad());
        }
        for label in host.split('.') {
            let b = label.as_bytes();
            let ok = !b.is_empty()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-';
            if !ok {
                return Err(bad());
            }
        }
    }
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
    }
    Ok(())
}

fn validate_path(path: &str) -> Result<(), ReferenceError> {
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ReferenceError::Uppercase(path.to_string()));
    }
    for component in path.split('/') {
        if !valid_path_component(component) {
            return Err(ReferenceError::PathComponent { path: path.to_string(), component: component.to_string() });
        }
    }
    Ok(())
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: '.', '_', '__', or one or more '-'.
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn validate_tag(tag: &str) -> Result<(), ReferenceError> {
    let b = tag.as_bytes();
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    let ok = !b.is_empty() && b.len() <= TAG_MAX && word(b[0]) && b.iter().all(|&x| word(x) || x == b'.' || x == b'-');
    if ok {
        Ok(())
    } else {
        Err(ReferenceError::Tag(tag.to_string()))
    }
}

fn parse_digest(digest: &str) -> Result<String, ReferenceError> {
    let fail = |reason: String| ReferenceError::Digest { digest: digest.to_string(), reason };
    let (algo, hex) =
        digest.split_once(':').ok_or_else(|| fail("expected algorithm:hex, e.g. sha256:<64 hex digits>".into()))?;
    let want = match algo {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(fail(format!("unknown algorithm {algo:?}; expected sha256, sha384 or sha512"))),
    };
    if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(fail("the hex part must be lowercase hexadecimal".into()));
    }
    if hex.len() != want {
        return Err(fail(format!("{algo} needs {want} hex digits, found {}", hex.len())));
    }
    Ok(digest.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const H64: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn p(s: &str) -> Reference {
        Reference::parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    #[test]
    fn single_segment_docker_hub_names_get_library_prefix() {
        assert_eq!(p("nginx").name(), "docker.io/library/nginx");
        assert_eq!(p("docker.io/nginx").name(), "docker.io/library/nginx");
        assert_eq!(p("docker.io/library/nginx").name(), "docker.io/library/nginx");
    }

    #[test]
    fn index_docker_io_is_docker_io() {
        assert_eq!(p("index.docker.io/library/nginx:1").full(), "docker.io/library/nginx:1");
        assert_eq!(p("index.docker.io/nginx").name(), "docker.io/library/nginx");
    }

    #[test]
    fn first_segment_without_dot_or_colon_is_a_docker_hub_path() {
        let r = p("myregistry/team/app");
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(r.path(), "myregistry/team/app");
        assert_eq!(r.familiar(), "myregistry/team/app");
    }

    #[test]
    fn localhost_dotted_and_ported_hosts_are_registries() {
        assert_eq!(p("localhost/app").registry(), "localhost");
        assert_eq!(p("gcr.io/x/app").registry(), "gcr.io");
        assert_eq!(p("myreg:5000/app").registry(), "myreg:5000");
        assert_eq!(p("10.0.0.5:32000/app:t").registry(), "10.0.0.5:32000");
        assert_eq!(p("[::1]:5000/app").registry(), "[::1]:5000");
    }

    #[test]
    fn bare_localhost_with_port_is_a_docker_hub_image_with_a_tag() {
        let r = p("localhost:5000");
        assert_eq!(r.name(), "docker.io/library/localhost");
        assert_eq!(r.tag(), Some("5000"));
        assert_eq!(r.familiar(), "localhost:5000");
    }

    #[test]
    fn different_ports_are_different_registries() {
        assert_ne!(p("localhost:5000/app").name(), p("localhost:5001/app").name());
        assert_ne!(p("localhost/app").name(), p("127.0.0.1/app").name());
    }

    #[test]
    fn uppercase_path_is_rejected_and_uppercase_registry_kept() {
        assert!(matches!(Reference::parse("App"), Err(ReferenceError::Uppercase(_))));
        assert!(matches!(Reference::parse("gcr.io/Team/app"), Err(ReferenceError::Uppercase(_))));
        assert_eq!(p("GCR.io/team/app").registry(), "GCR.io");
        assert_ne!(p("GCR.io/team/app").name(), p("gcr.io/team/app").name());
    }

    #[test]
    fn a_first_component_with_an_uppercase_letter_is_a_registry() {
        let r = p("MyReg/app");
        assert_eq!(r.registry(), "MyReg");
        assert_eq!(r.name(), "MyReg/app");
        assert_eq!(r.familiar(), "MyReg/app");
        assert_eq!(p("myReg/team/app:t").registry(), "myReg");
        assert_ne!(p("MyReg/app").name(), p("myreg/app").name(), "myreg/app is on Docker Hub");
        assert_eq!(p("myreg/app").name(), "docker.io/myreg/app");
        assert!(matches!(Reference::parse("MyReg/App"), Err(ReferenceError::Uppercase(_))));
        assert!(Reference::parse("My_Reg/app").is_err(), "still a host name");
    }

    #[test]
    fn uppercase_tag_is_allowed() {
        assert_eq!(p("app:V1_0").tag(), Some("V1_0"));
    }

    #[test]
    fn each_known_digest_algorithm_with_its_length_parses() {
        for (algo, n) in [("sha256", 64), ("sha384", 96), ("sha512", 128)] {
            let d = format!("{algo}:{}", "a".repeat(n));
            assert_eq!(p(&format!("app@{d}")).digest(), Some(d.as_str()));
        }
    }

    #[test]
    fn wrong_length_unknown_algorithm_or_uppercase_digest_is_rejected() {
        for bad in [
            format!("app@sha256:{}", "a".repeat(63)),
            format!("app@sha512:{}", "a".repeat(64)),
            format!("app@md5:{}", "a".repeat(32)),
            format!("app@sha256:{}", "A".repeat(64)),
            "app@".to_string(),
            "app@sha256".to_string(),
        ] {
            assert!(matches!(Reference::parse(&bad), Err(ReferenceError::Digest { .. })), "{bad}");
        }
    }

    #[test]
    fn bare_64_hex_string_is_rejected() {
        assert!(matches!(Reference::parse(H64), Err(ReferenceError::ImageId(_))));
        // A 64-hex component under a registry is a valid path.
        assert!(Reference::parse(&format!("gcr.io/{H64}")).is_ok());
    }

    #[test]
    fn whitespace_anywhere_is_rejected_without_trimming() {
        for bad in [" app", "app ", "app :t", "a\tpp", "app\n"] {
            assert!(matches!(Reference::parse(bad), Err(ReferenceError::Whitespace(_))), "{bad:?}");
        }
    }

    #[test]
    fn empty_and_malformed_strings_are_rejected() {
        assert_eq!(Reference::parse(""), Err(ReferenceError::Empty));
        for bad in [
            "app:",
            ":t",
            "/app",
            "app/",
            "a//b",
            "-app",
            "app-",
            "a..b",
            "a___b",
            "gcr.io:/app",
            "gcr.io:x/app",
            "-gcr.io/app",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn tag_grammar_is_enforced() {
        assert!(Reference::parse(&format!("app:{}", "a".repeat(128))).is_ok());
        assert!(matches!(Reference::parse(&format!("app:{}", "a".repeat(129))), Err(ReferenceError::Tag(_))));
        assert!(matches!(Reference::parse("app:.x"), Err(ReferenceError::Tag(_))));
        assert!(matches!(Reference::parse("app:-x"), Err(ReferenceError::Tag(_))));
        assert_eq!(p("app:_x.y-z").tag(), Some("_x.y-z"));
    }

    #[test]
    fn path_separators_follow_the_grammar() {
        assert!(Reference::parse("a.b_c__d-e---f").is_ok());
        assert!(Reference::parse("a._b").is_err());
    }

    #[test]
    fn no_implicit_latest_tag() {
        let r = p("nginx");
        assert_eq!(r.tag(), None);
        assert_eq!(r.full(), "docker.io/library/nginx");
        assert_ne!(r, p("nginx:latest"));
    }

    #[test]
    fn three_views_of_a_reference() {
        let r = p("docker.io/library/app:t");
        assert_eq!(r.name(), "docker.io/library/app");
        assert_eq!(r.full(), "docker.io/library/app:t");
        assert_eq!(r.familiar(), "app:t");
        let d = format!("sha256:{H64}");
        let r = p(&format!("localhost:5000/team/app:t@{d}"));
        assert_eq!(r.full(), format!("localhost:5000/team/app:t@{d}"));
        assert_eq!(r.familiar(), format!("localhost:5000/team/app:t@{d}"));
        assert_eq!(p("docker.io/library/team/app").familiar(), "library/team/app");
        assert_eq!(p("docker.io/team/app").familiar(), "team/app");
    }

    #[test]
    fn tag_and_digest_together_are_kept() {
        let d = format!("sha256:{H64}");
        let r = p(&format!("app:1.0@{d}"));
        assert_eq!(r.tag(), Some("1.0"));
        assert_eq!(r.digest(), Some(d.as_str()));
        assert_ne!(r, p("app:1.0"));
    }

    #[test]
    fn familiar_strings_parse_back_to_the_same_reference() {
        let r = p("docker.io/my.org/app:1");
        assert_eq!(r.familiar(), "docker.io/my.org/app:1");
        assert_eq!(p(&r.familiar()), r);
        assert_eq!(p("docker.io/localhost/app").familiar(), "docker.io/localhost/app");
    }

    #[test]
    fn names_longer_than_255_after_normalization_are_rejected() {
        let written = "a".repeat(250);
        assert!(matches!(Reference::parse(&written), Err(ReferenceError::TooLong(268))));
    }

    #[test]
    fn names_longer_than_255_are_rejected() {
        let long = format!("gcr.io/{}", "a".repeat(250));
        assert!(matches!(Reference::parse(&long), Err(ReferenceError::TooLong(_))));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let e = Reference::parse("app@sha256:abc").expect_err("invalid");
        assert!(e.to_string().contains("sha256 needs 64 hex digits, found 3"), "{e}");
        let e = Reference::parse("My/App").expect_err("invalid");
        assert!(e.to_string().contains("must be lowercase"), "{e}");
    }
}
