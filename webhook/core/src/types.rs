//! The `ImageMap` custom resource (`tilt.dev/v1alpha1`), field for field as Tilt spells it
//! (DESIGN §2), so maps exported from Tilt apply unchanged.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What a build tool asks for: which image reference to look for and how to apply the swap.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "tilt.dev",
    version = "v1alpha1",
    kind = "ImageMap",
    plural = "imagemaps",
    singular = "imagemap",
    shortname = "im",
    namespaced,
    status = "ImageMapStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "ImageMap maps an image reference to the freshly built image Pods in its namespace should run.",
    printcolumn = r#"{"name":"Selector","type":"string","jsonPath":".spec.selector","description":"The image reference to swap"}"#,
    printcolumn = r#"{"name":"Image","type":"string","jsonPath":".status.image","description":"The built image"}"#,
    printcolumn = r#"{"name":"From-Cluster","type":"string","jsonPath":".status.imageFromCluster","description":"The image as the cluster pulls it (injected when set)","priority":1}"#,
    printcolumn = r#"{"name":"Built","type":"date","jsonPath":".status.buildStartTime","description":"When the build started"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ImageMapSpec {
    /// The image reference to look for in Pods.
    pub selector: String,
    /// Also compare tags and digests, not only the repository name.
    #[serde(default, skip_serializing_if = "is_false")]
    pub match_exact: bool,
    /// Also replace container env values equal to a matching reference.
    #[serde(default, skip_serializing_if = "is_false")]
    pub match_in_env_vars: bool,
    /// Replace `command` of swapped containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_command: Option<ImageMapOverrideCommand>,
    /// Replace `args` of swapped containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_args: Option<ImageMapOverrideArgs>,
}

impl ImageMap {
    /// A map `name` in `namespace` (none when empty: a file map) looking for `selector`, with no
    /// status yet (not built). The `with_*` methods add the rest: the one way tests, benchmarks
    /// and tools build maps in code.
    pub fn for_selector(namespace: &str, name: &str, selector: &str) -> ImageMap {
        let mut map = ImageMap::new(name, ImageMapSpec { selector: selector.into(), ..Default::default() });
        map.metadata.namespace = Some(namespace.to_string()).filter(|n| !n.is_empty());
        map
    }

    /// Sets `status.image` (the map is built).
    pub fn with_image(mut self, image: &str) -> ImageMap {
        self.status.get_or_insert_with(Default::default).image = image.into();
        self
    }

    /// Sets `status.imageFromCluster`.
    pub fn with_image_from_cluster(mut self, image: &str) -> ImageMap {
        self.status.get_or_insert_with(Default::default).image_from_cluster = image.into();
        self
    }

    /// Sets `spec.matchExact`.
    pub fn with_match_exact(mut self, exact: bool) -> ImageMap {
        self.spec.match_exact = exact;
        self
    }

    /// Sets `spec.matchInEnvVars`.
    pub fn with_match_in_env_vars(mut self, env: bool) -> ImageMap {
        self.spec.match_in_env_vars = env;
        self
    }

    /// Sets `spec.overrideCommand`.
    pub fn with_command(mut self, command: &[&str]) -> ImageMap {
        self.spec.override_command =
            Some(ImageMapOverrideCommand { command: command.iter().map(|s| s.to_string()).collect() });
        self
    }

    /// Sets `spec.overrideArgs`.
    pub fn with_args(mut self, args: &[&str]) -> ImageMap {
        self.spec.override_args = Some(ImageMapOverrideArgs { args: args.iter().map(|s| s.to_string()).collect() });
        self
    }
}

/// A replacement for a container's `command`; an empty list removes it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct ImageMapOverrideCommand {
    /// The new command.
    #[schemars(length(max = 256), inner(length(max = 4096)))]
    pub command: Vec<String>,
}

/// A replacement for a container's `args`; an empty list removes them.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct ImageMapOverrideArgs {
    /// The new args.
    #[schemars(length(max = 256), inner(length(max = 4096)))]
    pub args: Vec<String>,
}

/// Which real, pushed image the selector means now.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageMapStatus {
    /// The built image, as pushed.
    #[serde(default)]
    pub image: String,
    /// The image as the cluster pulls it; injected when set, else `image`.
    #[serde(default)]
    pub image_from_cluster: String,
    /// The image as the developer's machine sees it; never injected.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image_from_local: String,
    /// When the build started (RFC 3339 with microseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "micro_time_schema")]
    pub build_start_time: Option<MicroTime>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn micro_time_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "format": "date-time",
        "description": "When the build started (RFC 3339 with microseconds)."
    })
}

/// The image-reference grammar of DESIGN §3 as an RE2 regular expression, for the CRD's CEL
/// validation (the webhook itself uses [`crate::reference`]; a test keeps the two in step).
pub const REFERENCE_PATTERN: &str = concat!(
    r"^(?:(?:localhost(?::[0-9]+)?|[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)+(?::[0-9]+)?",
    r"|[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?:[0-9]+|\[[0-9a-fA-F:.]+\](?::[0-9]+)?",
    // A single label with an uppercase letter (no dot, no port) is a registry too.
    r"|[A-Z](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?|[a-zA-Z0-9][a-zA-Z0-9-]*[A-Z](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)/)?",
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*",
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?",
    r"(?:@(?:sha256:[a-f0-9]{64}|sha384:[a-f0-9]{96}|sha512:[a-f0-9]{128}))?$"
);

const REFERENCE_MESSAGE: &str =
    "must be an image reference: [registry[:port]/]lowercase/path[:tag][@sha256:<64 hex>], no spaces";

/// The CEL rule for a reference field (`optional`: the empty string is allowed too).
fn reference_rule(
    optional: bool,
) -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::ValidationRule {
    let check =
        format!("self.matches('{}') && !self.matches('^[a-f0-9]{{64}}$')", REFERENCE_PATTERN.replace('\\', "\\\\"));
    let rule = if optional { format!("self == '' || ({check})") } else { check };
    k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::ValidationRule {
        rule,
        message: Some(REFERENCE_MESSAGE.into()),
        ..Default::default()
    }
}

/// The longest valid image reference: a 255-character name (the grammar's limit), a 128-character
/// tag and a sha512 digest (`name:tag@sha512:<128 hex>`). The CRD's `maxLength` on selectors and
/// status images: anything longer cannot parse, and the API server refuses it before its CEL
/// rule runs (CEL's cost budget counts the bound).
pub const REFERENCE_MAX_LENGTH: usize = 255 + ":".len() + 128 + "@sha512:".len() + 128;

/// Adds `maxLength` and the reference rule to the string property `field` of `object`.
fn validate_reference_field(
    object: &mut k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps,
    field: &str,
    optional: bool,
) {
    if let Some(prop) = object.properties.as_mut().and_then(|p| p.get_mut(field)) {
        prop.max_length = Some(REFERENCE_MAX_LENGTH as i64);
        prop.x_kubernetes_validations = Some(vec![reference_rule(optional)]);
    }
}

/// The CRD YAML generated from these types: the bytes `charts/imagemap/crds/` must hold.
pub fn crd_yaml() -> Result<String, crate::yaml::SerializeError> {
    use kube::CustomResourceExt;
    let mut crd = ImageMap::crd();
    crd.spec.names.list_kind = Some("ImageMapList".into());
    // Invalid selectors and status images are refused when written, with a message that says
    // what is wrong; maps stored before this validation are still skipped by the webhook.
    for version in &mut crd.spec.versions {
        let Some(root) = version.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()) else { continue };
        let Some(props) = root.properties.as_mut() else { continue };
        if let Some(spec) = props.get_mut("spec") {
            validate_reference_field(spec, "selector", false);
        }
        if let Some(status) = props.get_mut("status") {
            for field in ["image", "imageFromCluster", "imageFromLocal"] {
                validate_reference_field(status, field, true);
            }
        }
    }
    let body = crate::yaml::to_string(&crd)?;
    Ok(format!("# Generated by `imagemap-crd` from webhook/core/src/types.rs; do not edit by hand.\n{body}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tilt_exported_imagemap_deserializes_unchanged() {
        let yaml = r#"
apiVersion: tilt.dev/v1alpha1
kind: ImageMap
metadata: {name: my-apiserver, namespace: default}
spec:
  selector: my-apiserver
  matchExact: true
  matchInEnvVars: true
  overrideCommand: {command: ["/bin/app", "serve"]}
  overrideArgs: {args: []}
status:
  image: localhost:5000/my-apiserver:tilt-8f2c
  imageFromCluster: registry:5000/my-apiserver:tilt-8f2c
  imageFromLocal: localhost:5000/my-apiserver:tilt-8f2c
  buildStartTime: "2026-11-26T10:00:00.123456Z"
"#;
        let map: ImageMap = crate::yaml::from_str(yaml).expect("parses");
        assert_eq!(map.spec.selector, "my-apiserver");
        assert!(map.spec.match_exact && map.spec.match_in_env_vars);
        assert_eq!(map.spec.override_args, Some(ImageMapOverrideArgs { args: vec![] }));
        let status = map.status.as_ref().expect("status");
        assert_eq!(status.image_from_cluster, "registry:5000/my-apiserver:tilt-8f2c");
        let back = serde_json::to_value(&map).expect("serializes");
        assert_eq!(back["status"]["buildStartTime"], "2026-11-26T10:00:00.123456Z");
        assert_eq!(back["spec"]["overrideArgs"]["args"], serde_json::json!([]));
    }

    #[test]
    fn crd_is_namespaced_with_status_short_name_and_columns() {
        let crd: serde_json::Value = crate::yaml::from_str(&crd_yaml().expect("renders")).expect("yaml");
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        assert_eq!(crd["spec"]["names"]["shortNames"][0], "im");
        assert_eq!(crd["spec"]["names"]["listKind"], "ImageMapList");
        let v = &crd["spec"]["versions"][0];
        assert!(v["subresources"]["status"].is_object());
        let cols: Vec<&str> = v["additionalPrinterColumns"]
            .as_array()
            .expect("columns")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(cols, ["Selector", "Image", "From-Cluster", "Built", "Age"]);
    }

    #[test]
    fn crd_rule_pattern_agrees_with_the_reference_parser() {
        let re = regex::Regex::new(REFERENCE_PATTERN).expect("pattern compiles");
        let h64 = "0123456789abcdef".repeat(4);
        let samples = [
            "app".to_string(),
            "app:latest".into(),
            "localhost:5000".into(),
            "localhost:5000/app:t".into(),
            "myregistry/team/app".into(),
            "gcr.io/x/app@sha256:".to_string() + &h64,
            "app:1.0@sha384:".to_string() + &"a".repeat(96),
            "[::1]:5000/app".into(),
            "10.0.0.5:32000/app".into(),
            "a.b_c__d-e---f".into(),
            "App".into(),
            "gcr.io/Team/app".into(),
            "MyReg/app".into(),
            "myReG/team/app:t".into(),
            "M/app".into(),
            "MyReg-/app".into(),
            "-MyReg/app".into(),
            "My_Reg/app".into(),
            "MyReg/App".into(),
            " app".into(),
            "app ".into(),
            "app:".into(),
            "app@sha256:abc".into(),
            "app@md5:".to_string() + &"a".repeat(32),
            "a..b".into(),
            "-app".into(),
            "app:.x".into(),
            "".into(),
            "a//b".into(),
            "gcr.io:/app".into(),
            "app@sha256:".to_string() + &"A".repeat(64),
        ];
        for s in samples {
            let by_regex = re.is_match(&s) && !(s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()));
            assert_eq!(by_regex, crate::reference::Reference::parse(&s).is_ok(), "{s:?}");
        }
    }

    #[test]
    fn crd_validates_selector_and_status_images_with_cel() {
        let crd: serde_json::Value = crate::yaml::from_str(&crd_yaml().expect("renders")).expect("yaml");
        let props = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
        let rule = &props["spec"]["properties"]["selector"]["x-kubernetes-validations"][0];
        assert!(rule["rule"].as_str().expect("rule").starts_with("self.matches("), "{rule}");
        assert!(rule["message"].as_str().expect("message").contains("image reference"));
        let status_rule = &props["status"]["properties"]["image"]["x-kubernetes-validations"][0]["rule"];
        assert!(status_rule.as_str().expect("rule").starts_with("self == '' ||"));
    }

    #[test]
    fn crd_bounds_override_lists_their_items_and_every_reference_string() {
        let crd: serde_json::Value = crate::yaml::from_str(&crd_yaml().expect("renders")).expect("yaml");
        let props = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
        let spec = &props["spec"]["properties"];
        for (list, field) in [("overrideCommand", "command"), ("overrideArgs", "args")] {
            let array = &spec[list]["properties"][field];
            assert_eq!(array["maxItems"], 256, "{list}.{field}: {array}");
            assert_eq!(array["items"]["maxLength"], 4096, "{list}.{field} items: {array}");
        }
        assert_eq!(spec["selector"]["maxLength"], REFERENCE_MAX_LENGTH, "selector");
        for field in ["image", "imageFromCluster", "imageFromLocal"] {
            assert_eq!(props["status"]["properties"][field]["maxLength"], REFERENCE_MAX_LENGTH, "status.{field}");
        }
    }

    #[test]
    fn the_longest_valid_reference_fits_the_crd_length_limit_and_one_more_character_does_not_parse() {
        // A 255-character name (unchanged by normalization), a 128-character tag, a sha512 digest.
        let name = format!("gcr.io/{}", "a".repeat(248));
        assert_eq!(name.len(), 255);
        let longest = format!("{name}:{}@sha512:{}", "t".repeat(128), "f".repeat(128));
        assert_eq!(longest.len(), REFERENCE_MAX_LENGTH);
        crate::reference::Reference::parse(&longest).expect("the longest reference is valid");
        let longer_name = format!("gcr.io/{}:{}@sha512:{}", "a".repeat(249), "t".repeat(128), "f".repeat(128));
        assert!(crate::reference::Reference::parse(&longer_name).is_err(), "a 256-character name is refused");
        let longer_tag = format!("{name}:{}@sha512:{}", "t".repeat(129), "f".repeat(128));
        assert!(crate::reference::Reference::parse(&longer_tag).is_err(), "a 129-character tag is refused");
    }

    #[test]
    fn generated_crd_matches_the_chart_copy() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../charts/imagemap/crds/imagemaps.tilt.dev.yaml");
        let committed = std::fs::read_to_string(path).expect("chart CRD exists; run `make crd`");
        assert!(committed == crd_yaml().expect("renders"), "{path} is stale: run `make crd` to regenerate it");
    }
}
