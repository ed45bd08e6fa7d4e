//! The two calls the plugin makes to an OCI distribution registry: `GET /v2/` (doctor) and a
//! manifest's digest (`build`), anonymously, following a bearer-token challenge when asked.
//!
//! Written over reqwest rather than with an OCI client crate: those bring chrono's clock, which
//! links CoreFoundation on macOS (docs/decisions.md); these two calls are all the plugin needs.

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use imagemap_core::reference::Reference;
use imagemap_core::registry::LocalRegistryHosting;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};

/// How long a registry call may take.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(30);

/// The manifest media types asked for: OCI index and manifest, Docker list and v2 manifest.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// The header a registry names a manifest's digest in.
const DIGEST_HEADER: &str = "docker-content-digest";

/// Whether the plugin talks plain HTTP to `registry` (`HOST[:PORT]`): only for the local machine
/// and the hosts the cluster advertises; TLS everywhere else.
pub fn plain_http(registry: &str, hosting: Option<&LocalRegistryHosting>) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => registry,
    };
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
        || hosting.is_some_and(|h| h.registry_hosts().contains(&registry))
}

/// The host that serves `registry`'s API (Docker Hub's is not `docker.io`).
fn api_host(registry: &str) -> &str {
    if registry == "docker.io" {
        "registry-1.docker.io"
    } else {
        registry
    }
}

fn base_url(registry: &str, hosting: Option<&LocalRegistryHosting>) -> String {
    let scheme = if plain_http(registry, hosting) { "http" } else { "https" };
    format!("{scheme}://{}/v2/", api_host(registry))
}

fn http_client() -> std::result::Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(REGISTRY_TIMEOUT)
        .timeout(REGISTRY_TIMEOUT)
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))
}

/// `GET /v2/` on `host`'s registry: `Ok` with a description when it answers as a registry (200,
/// or 401 asking for credentials), else `Err` with what happened.
pub async fn ping(host: &str, hosting: Option<&LocalRegistryHosting>) -> std::result::Result<String, String> {
    let registry = host.split('/').next().unwrap_or(host);
    let url = base_url(registry, hosting);
    let reply = http_client()?.get(&url).send().await.map_err(|e| format!("{url} does not answer: {e}"))?;
    match reply.status().as_u16() {
        200 => Ok(format!("{url} answers as a registry")),
        401 => Ok(format!("{url} answers as a registry (it asks for credentials)")),
        code => Err(format!("{url} answered HTTP {code}, not a registry API")),
    }
}

/// The digest of the manifest `reference` names, asked of its registry: HEAD with the OCI and
/// Docker manifest media types, GET (hashing the body) when the registry names no digest.
pub async fn manifest_digest(reference: &str, hosting: Option<&LocalRegistryHosting>) -> Result<String> {
    let parsed = Reference::parse(reference).map_err(|e| anyhow!("{reference:?} is not an image reference: {e}"))?;
    let registry = parsed.registry();
    let what = parsed.digest().or(parsed.tag()).unwrap_or("latest");
    let url = format!("{}{}/manifests/{what}", base_url(registry, hosting), parsed.path());
    let client = http_client().map_err(|e| anyhow!(e))?;
    let unreachable = |e: reqwest::Error| {
        anyhow!(
            "cannot reach the registry {registry} to look up {reference}: {e}: check that it runs and is \
             reachable from this machine"
        )
    };
    let mut token = None;
    let mut method = Method::HEAD;
    loop {
        let reply = client
            .request(method.clone(), &url)
            .headers(headers(token.as_deref()))
            .send()
            .await
            .map_err(unreachable)?;
        let status = reply.status();
        if status == StatusCode::UNAUTHORIZED && token.is_none() {
            let challenge = reply.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).unwrap_or("");
            token = Some(anonymous_token(&client, challenge, parsed.path()).await.map_err(|e| {
                anyhow!(
                    "the registry {registry} refused to show {reference} ({e}): the plugin reads manifests \
                     anonymously; use a registry that allows anonymous pulls (a local one)"
                )
            })?);
            continue;
        }
        match status {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(anyhow!(
                    "the registry {registry} refused to show {reference} (HTTP {status}): the plugin reads \
                     manifests anonymously; use a registry that allows anonymous pulls (a local one)"
                ))
            }
            StatusCode::NOT_FOUND => {
                return Err(anyhow!(
                    "the registry {registry} has no image {reference}: check that the build command pushed it \
                     (to $EXPECTED_REF, or wrote what it pushed to --ref-file)"
                ))
            }
            _ => return Err(anyhow!("the registry {registry} answered HTTP {status} for {url}")),
        }
        let digest = match reply.headers().get(DIGEST_HEADER).and_then(|v| v.to_str().ok()) {
            Some(named) => named.to_string(),
            None if method == Method::HEAD => {
                method = Method::GET;
                continue;
            }
            None => sha256_digest(&reply.bytes().await.map_err(unreachable)?),
        };
        Reference::parse(&format!("x@{digest}"))
            .map_err(|e| anyhow!("the registry {registry} answered an invalid digest for {reference}: {e}"))?;
        return Ok(digest);
    }
}

fn headers(token: Option<&str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(ACCEPT, HeaderValue::from_static(MANIFEST_TYPES));
    if let Some(value) = token.and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok()) {
        headers.insert(AUTHORIZATION, value);
    }
    headers
}

fn sha256_digest(body: &[u8]) -> String {
    let sum = ring::digest::digest(&ring::digest::SHA256, body);
    let hex: String = sum.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// An anonymous pull token from the realm a `Bearer` challenge names (the token flow of the
/// distribution spec; Docker Hub, GHCR and most registries answer anonymous pulls this way).
async fn anonymous_token(client: &reqwest::Client, challenge: &str, path: &str) -> Result<String> {
    let params = bearer_challenge(challenge)
        .ok_or_else(|| anyhow!("it asks for credentials with {challenge:?}, not an anonymous bearer token"))?;
    let realm = params.iter().find(|(k, _)| k == "realm").map(|(_, v)| v.as_str()).unwrap_or_default();
    let mut query: Vec<(&str, String)> =
        params.iter().filter(|(k, _)| k == "service").map(|(k, v)| (k.as_str(), v.clone())).collect();
    let scope = params.iter().find(|(k, _)| k == "scope").map(|(_, v)| v.clone());
    query.push(("scope", scope.unwrap_or_else(|| format!("repository:{path}:pull"))));
    let url = reqwest::Url::parse_with_params(realm, &query).context("its token realm is not a URL")?;
    let reply = client.get(url).send().await.context("its token service does not answer")?;
    if !reply.status().is_success() {
        return Err(anyhow!("its token service answered HTTP {}", reply.status()));
    }
    let body: serde_json::Value =
        serde_json::from_slice(&reply.bytes().await.context("reading the token")?).context("the token is not JSON")?;
    body.get("token")
        .or_else(|| body.get("access_token"))
        .and_then(serde_json::Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| anyhow!("its token service answered no token"))
}

/// The parameters of a `Bearer` `WWW-Authenticate` challenge (`realm`, `service`, `scope`), or
/// `None` for another scheme or one without a realm. Quoted values may hold commas.
fn bearer_challenge(header: &str) -> Option<Vec<(String, String)>> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ',' || c.is_whitespace()).is_some() {}
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if key.is_empty() || chars.next() != Some('=') {
            break;
        }
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => value.extend(chars.next()),
                    c => value.push(c),
                }
            }
        } else {
            value.extend(std::iter::from_fn(|| chars.next_if(|c| *c != ',')));
        }
        params.push((key.trim().to_ascii_lowercase(), value));
    }
    params.iter().any(|(k, v)| k == "realm" && !v.is_empty()).then_some(params)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An advertisement of `localhost:5001`, which nodes pull as `kind-registry:5000`.
    pub(crate) fn hosting() -> LocalRegistryHosting {
        LocalRegistryHosting {
            host: "localhost:5001".into(),
            host_from_container_runtime: "kind-registry:5000".into(),
            ..Default::default()
        }
    }

    #[test]
    fn plain_http_only_for_this_machine_and_advertised_hosts() {
        assert!(plain_http("localhost:5000", None));
        assert!(plain_http("127.0.0.1:32000", None));
        assert!(plain_http("localhost", None));
        assert!(!plain_http("gcr.io", None));
        assert!(!plain_http("kind-registry:5000", None));
        assert!(plain_http("kind-registry:5000", Some(&hosting())));
        assert!(!plain_http("localhost.example.com:5000", Some(&hosting())));
    }

    #[test]
    fn docker_hub_is_asked_at_its_api_host() {
        assert_eq!(base_url("docker.io", None), "https://registry-1.docker.io/v2/");
        assert_eq!(base_url("ghcr.io", None), "https://ghcr.io/v2/");
        assert_eq!(base_url("localhost:5000", None), "http://localhost:5000/v2/");
    }

    #[test]
    fn a_bearer_challenge_yields_its_parameters_with_commas_in_quotes() {
        let params = bearer_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull,push""#,
        )
        .expect("bearer");
        assert_eq!(
            params,
            vec![
                ("realm".to_string(), "https://auth.docker.io/token".to_string()),
                ("service".to_string(), "registry.docker.io".to_string()),
                ("scope".to_string(), "repository:a/b:pull,push".to_string()),
            ]
        );
        assert_eq!(bearer_challenge("bearer realm=http://x/t").expect("unquoted")[0].1, "http://x/t");
    }

    #[test]
    fn other_challenges_are_not_bearer_tokens() {
        assert_eq!(bearer_challenge(r#"Basic realm="registry""#), None);
        assert_eq!(bearer_challenge("Bearer"), None);
        assert_eq!(bearer_challenge(r#"Bearer service="x""#), None);
        assert_eq!(bearer_challenge(""), None);
    }

    #[test]
    fn a_body_digest_is_its_sha256() {
        assert_eq!(sha256_digest(b""), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    /// A registry on loopback that answers `team/app` only with the bearer token its realm
    /// hands out for the right scope, and `plain/app` without a digest header.
    async fn token_registry() -> String {
        use axum::http::{HeaderMap as Headers, StatusCode as Status};
        use axum::response::IntoResponse;
        use axum::routing::get;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let challenge = format!(r#"Bearer realm="http://{addr}/token",service="test""#);
        let manifest = move |headers: Headers| {
            let challenge = challenge.clone();
            async move {
                if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer secret") {
                    return (Status::UNAUTHORIZED, [("www-authenticate", challenge)]).into_response();
                }
                (Status::OK, [(DIGEST_HEADER, format!("sha256:{}", "a".repeat(64)))], "{}").into_response()
            }
        };
        let token = |query: axum::extract::RawQuery| async move {
            let query = query.0.unwrap_or_default();
            if query == "service=test&scope=repository%3Ateam%2Fapp%3Apull" {
                (Status::OK, r#"{"token":"secret"}"#)
            } else {
                (Status::BAD_REQUEST, "unexpected query")
            }
        };
        let app = axum::Router::new()
            .route("/v2/team/app/manifests/{tag}", get(manifest))
            .route("/v2/plain/app/manifests/{tag}", get(|| async { "{}" }))
            .route("/token", get(token));
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    #[tokio::test]
    async fn a_token_challenge_is_answered_anonymously_and_the_digest_header_read() {
        let registry = token_registry().await;
        let digest = manifest_digest(&format!("{registry}/team/app:1"), None).await.expect("digest");
        assert_eq!(digest, format!("sha256:{}", "a".repeat(64)));
    }

    #[tokio::test]
    async fn without_a_digest_header_the_manifest_body_is_hashed() {
        let registry = token_registry().await;
        let digest = manifest_digest(&format!("{registry}/plain/app:1"), None).await.expect("digest");
        assert_eq!(digest, sha256_digest(b"{}"));
    }

    #[tokio::test]
    async fn a_missing_image_is_named_with_the_fix() {
        let registry = token_registry().await;
        let err = manifest_digest(&format!("{registry}/other/app:1"), None).await.expect_err("404");
        assert!(err.to_string().contains("has no image"), "{err}");
        assert!(err.to_string().contains("check that the build command pushed it"), "{err}");
    }
}
