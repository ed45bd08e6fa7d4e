//! The command line: kubectl's global flags and one subcommand per verb.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Manage ImageMaps: which freshly built image a Pod's image reference means.
///
/// An ImageMap says "selector X now means image Y"; the imagemap webhook swaps Y into every Pod
/// created in the map's namespace. Use `build` to run your build and record its result, or
/// `set-image` from your build tool after a push.
#[derive(Debug, Parser)]
#[command(
    name = "kubectl-imagemap",
    bin_name = "kubectl imagemap",
    version = crate::commands::version::VERSION,
    propagate_version = true
)]
pub struct Cli {
    /// Global flags, as kubectl spells them.
    #[command(flatten)]
    pub global: Global,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// kubectl's connection flags.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// Path to the kubeconfig file to use.
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// The namespace (default: the context's namespace, else "default").
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A table.
    Table,
    /// A table with more columns.
    Wide,
    /// YAML.
    Yaml,
    /// JSON.
    Json,
    /// `imagemap.tilt.dev/NAME` per line.
    Name,
}

/// Formats for commands that print objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ObjectOutput {
    /// YAML.
    Yaml,
    /// JSON.
    Json,
    /// `imagemap.tilt.dev/NAME`.
    Name,
}

/// `--dry-run` modes, as kubectl has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DryRun {
    /// Send nothing to the server.
    Client,
    /// Ask the server to validate without storing.
    Server,
    /// Really create.
    None,
}

/// Shells for `completion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    /// bash
    Bash,
    /// zsh
    Zsh,
    /// fish
    Fish,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an ImageMap.
    #[command(
        after_help = "Examples:\n  kubectl imagemap create app --selector my-app\n  kubectl imagemap create app --selector gcr.io/team/app --match-exact --args --debug --args --port=8080\n  kubectl imagemap create app --selector app --dry-run=client -o yaml"
    )]
    Create(CreateArgs),
    /// List ImageMaps in a table.
    #[command(
        visible_alias = "ls",
        after_help = "Examples:\n  kubectl imagemap list\n  kubectl imagemap list -A -o wide\n  kubectl imagemap list --watch"
    )]
    List(GetArgs),
    /// Show one ImageMap, or all of them.
    #[command(
        after_help = "Examples:\n  kubectl imagemap get app\n  kubectl imagemap get app -o yaml\n  kubectl imagemap get -o name"
    )]
    Get(GetArgs),
    /// Show an ImageMap in detail: spec, status, whether it is usable, the Pods it swapped, Events.
    #[command(after_help = "Example:\n  kubectl imagemap describe app")]
    Describe(DescribeArgs),
    /// Publish a build result: set an ImageMap's status image.
    #[command(
        after_help = "Under the registry the cluster advertises (`kubectl imagemap registry`), IMAGE is how your \
                      machine pushed it and the name the node pulls is filled in.\n\n\
                      Examples:\n  kubectl imagemap set-image app localhost:5000/app:tilt-8f2c\n  kubectl imagemap set-image app localhost:5000/app:t --from-cluster registry:5000/app:t --build-start-time now\n  kubectl imagemap set-image app localhost:5000/app:t --create --selector app\n  kubectl imagemap set-image app --from-build-output metadata.json"
    )]
    SetImage(SetImageArgs),
    /// Build and publish in one step: run your build command with the target in EXPECTED_REF,
    /// then record the pushed image, pinned by digest, and the build's start time.
    #[command(
        after_help = "The target is the registry the cluster advertises (or --registry) plus the selector's name \
                      with '/', ':' and '@' replaced by '_' (as Tilt names builds), with a fresh tag. COMMAND gets \
                      EXPECTED_REF, EXPECTED_REGISTRY, EXPECTED_IMAGE and EXPECTED_TAG, and must push there (or \
                      write what it pushed to --ref-file). COMMAND's output goes to stderr. If COMMAND fails, the \
                      map is not changed and its exit code is the plugin's.\n\n\
                      Examples:\n  kubectl imagemap build app --create -- sh -c 'crane append --oci-empty-base -f app.tar -t $EXPECTED_REF'\n  kubectl imagemap build app -- sh -c 'docker buildx build --push -t $EXPECTED_REF .'\n  kubectl imagemap build api --selector gcr.io/team/api --registry localhost:5000 -- ./build.sh\n  kubectl imagemap build app --ref-file /tmp/ref -- ko build --push=true --image-refs /tmp/ref ./cmd/app"
    )]
    Build(BuildArgs),
    /// Show the registry the cluster advertises (kube-public/local-registry-hosting), or set it.
    #[command(
        after_help = "Examples:\n  kubectl imagemap registry\n  kubectl imagemap registry set --host localhost:5000 --from-runtime registry:5000"
    )]
    Registry(RegistryArgs),
    /// Delete ImageMaps.
    #[command(after_help = "Example:\n  kubectl imagemap delete app other")]
    Delete(DeleteArgs),
    /// Print manifests as the webhook would change them (offline with --maps).
    #[command(
        after_help = "Examples:\n  kubectl imagemap inject -f deploy.yaml\n  kubectl imagemap inject --maps maps.yaml -f pod.json -o json\n  helm template . | kubectl imagemap inject -f -"
    )]
    Inject(InjectArgs),
    /// Explain which map matches an image, a manifest or a live Pod, and why.
    #[command(
        after_help = "Examples:\n  kubectl imagemap explain my-app:dev\n  kubectl imagemap explain pod/web-5d8f\n  kubectl imagemap explain -f deploy.yaml --maps maps.yaml"
    )]
    Explain(ExplainArgs),
    /// Check an installation end to end; exit 1 if a check fails.
    #[command(after_help = "Example:\n  kubectl imagemap doctor -n dev")]
    Doctor(DoctorArgs),
    /// Restart the Deployments, StatefulSets and DaemonSets whose Pods this map swapped.
    #[command(after_help = "Example:\n  kubectl imagemap rollout app")]
    Rollout(RolloutArgs),
    /// Print or apply the MutatingAdmissionPolicy that makes the API server itself apply the
    /// namespace's ImageMaps: no webhook, no controller (Kubernetes 1.36 or later).
    #[command(
        after_help = "Examples:\n  kubectl imagemap policy -n dev\n  kubectl imagemap policy -n dev -o json\n  kubectl imagemap policy -n dev --apply\n  kubectl imagemap policy -n dev --apply --global-namespace imagemap-global"
    )]
    Policy(PolicyArgs),
    /// Print the plugin's version and the webhook's (from the cluster, unless --client).
    #[command(
        after_help = "Examples:\n  kubectl imagemap version\n  kubectl imagemap version --client\n  kubectl imagemap version --webhook-config my-imagemap"
    )]
    Version(VersionArgs),
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  source <(kubectl imagemap completion bash)\n  kubectl imagemap completion zsh > \"${fpath[1]}/_kubectl-imagemap\""
    )]
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: Shell,
    },
    /// kubectl's plugin completion protocol (`kubectl_complete-imagemap` calls it): the words
    /// typed after `imagemap`, the last one being completed; prints one candidate per line, then
    /// `:DIRECTIVE`.
    #[command(name = "__complete", hide = true)]
    Complete {
        /// The words typed so far.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        words: Vec<String>,
    },
}

/// `create`
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Name of the ImageMap.
    pub name: String,
    /// The image reference to swap in Pods.
    #[arg(long)]
    pub selector: String,
    /// Also compare tags and digests, not only the repository name.
    #[arg(long)]
    pub match_exact: bool,
    /// Also swap container env values equal to a matching reference.
    #[arg(long)]
    pub match_in_env_vars: bool,
    /// Replace the command of swapped containers (repeat for each word; pass "" alone to clear it).
    #[arg(long = "command", num_args = 1, allow_hyphen_values = true)]
    pub command: Option<Vec<String>>,
    /// Replace the args of swapped containers (repeat for each word; pass "" alone to clear them).
    #[arg(long = "args", num_args = 1, allow_hyphen_values = true)]
    pub args: Option<Vec<String>>,
    /// client: print only; server: validate on the server without storing.
    #[arg(long, value_enum, default_missing_value = "client", num_args = 0..=1, require_equals = true, default_value = "none")]
    pub dry_run: DryRun,
    /// Print the object.
    #[arg(short, long, value_enum)]
    pub output: Option<ObjectOutput>,
}

/// `list` and `get`
#[derive(Debug, Args)]
pub struct GetArgs {
    /// Name of one ImageMap (all when omitted).
    pub name: Option<String>,
    /// List across all namespaces.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Only maps whose labels match this selector (kubectl's syntax: `team=a,tier!=web`).
    #[arg(short = 'l', long, conflicts_with = "name")]
    pub selector: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
    /// After listing, watch for changes.
    #[arg(short, long)]
    pub watch: bool,
}

/// `describe`
#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// Name of the ImageMap.
    pub name: String,
}

/// `set-image`
#[derive(Debug, Args)]
pub struct SetImageArgs {
    /// Name of the ImageMap.
    pub name: String,
    /// The built image, as pushed (not with --from-build-output).
    #[arg(required_unless_present = "from_build_output", conflicts_with = "from_build_output")]
    pub image: Option<String>,
    /// Read the pushed image from a build tool's report: `docker buildx build --metadata-file`
    /// JSON or `skaffold build --file-output` JSON (the entry for the map's selector).
    #[arg(long, value_name = "FILE")]
    pub from_build_output: Option<PathBuf>,
    /// The image as the cluster pulls it (injected instead of IMAGE when set).
    #[arg(long)]
    pub from_cluster: Option<String>,
    /// The image as your machine sees it (never injected).
    #[arg(long)]
    pub from_local: Option<String>,
    /// When the build started: RFC 3339 or "now" (the default).
    #[arg(long, default_value = "now")]
    pub build_start_time: String,
    /// Create the ImageMap if it does not exist (needs --selector).
    #[arg(long)]
    pub create: bool,
    /// Selector for --create.
    #[arg(long)]
    pub selector: Option<String>,
    /// Print the updated object.
    #[arg(short, long, value_enum)]
    pub output: Option<ObjectOutput>,
}

/// `build`
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Name of the ImageMap.
    pub name: String,
    /// The image reference Pods use (default: the map's selector; with --create and no map: NAME).
    #[arg(long)]
    pub selector: Option<String>,
    /// Create the ImageMap if it does not exist, once the build succeeded.
    #[arg(long)]
    pub create: bool,
    /// Push under this registry (HOST[:PORT][/PATH]) instead of the one the cluster advertises.
    #[arg(long, value_name = "HOST")]
    pub registry: Option<String>,
    /// Read the pushed reference from this file after COMMAND (for builders that choose their
    /// own name or tag) instead of expecting EXPECTED_REF; the file is removed before COMMAND runs.
    #[arg(long, value_name = "PATH")]
    pub ref_file: Option<PathBuf>,
    /// Print the updated object.
    #[arg(short, long, value_enum)]
    pub output: Option<ObjectOutput>,
    /// The build command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// `registry`
#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// `set`, or nothing to show.
    #[command(subcommand)]
    pub action: Option<RegistryAction>,
}

/// `registry set`
#[derive(Debug, Subcommand)]
pub enum RegistryAction {
    /// Advertise a registry: write kube-public/local-registry-hosting.
    #[command(
        after_help = "Examples:\n  kubectl imagemap registry set --host localhost:5000\n  kubectl imagemap registry set --host localhost:5001 --from-runtime kind-registry:5000 --from-cluster-network kind-registry:5000"
    )]
    Set(RegistrySetArgs),
}

/// `registry set`
#[derive(Debug, Args)]
pub struct RegistrySetArgs {
    /// How your machine pushes to the registry (HOST[:PORT][/PATH]), e.g. localhost:5000.
    #[arg(long)]
    pub host: String,
    /// How the node's container runtime pulls from it (default: --host).
    #[arg(long, value_name = "HOST")]
    pub from_runtime: Option<String>,
    /// How Pods reach it.
    #[arg(long, value_name = "HOST")]
    pub from_cluster_network: Option<String>,
    /// A URL that explains how to use the registry.
    #[arg(long, value_name = "URL")]
    pub help_url: Option<String>,
}

/// `delete`
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Names of the ImageMaps.
    #[arg(required_unless_present = "selector", conflicts_with = "selector")]
    pub names: Vec<String>,
    /// Delete the maps whose labels match this selector instead (kubectl's syntax).
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Succeed when a map does not exist.
    #[arg(long)]
    pub ignore_not_found: bool,
}

/// `inject`
#[derive(Debug, Args)]
pub struct InjectArgs {
    /// Manifest file (YAML or JSON, multi-document or List); `-` for standard input.
    #[arg(short = 'f', long = "filename", required = true)]
    pub file: PathBuf,
    /// Take maps from this file instead of the cluster (applied as the webhook's --imagemaps-file: to every namespace).
    #[arg(long)]
    pub maps: Option<PathBuf>,
    /// Also use the maps of this namespace as global (the webhook's --global-namespace).
    #[arg(long)]
    pub global_namespace: Option<String>,
    /// Output format (default: the input's, YAML or JSON).
    #[arg(short, long, value_enum)]
    pub output: Option<ObjectOutput>,
}

/// `explain`
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// `pod/NAME` for a live Pod, or an image reference.
    pub target: Option<String>,
    /// A manifest file to explain instead; `-` for standard input.
    #[arg(short = 'f', long = "filename", conflicts_with = "target")]
    pub file: Option<PathBuf>,
    /// Take maps from this file instead of the cluster.
    #[arg(long)]
    pub maps: Option<PathBuf>,
    /// Also use the maps of this namespace as global (the webhook's --global-namespace).
    #[arg(long)]
    pub global_namespace: Option<String>,
}

/// `rollout`
#[derive(Debug, Args)]
pub struct RolloutArgs {
    /// Name of the ImageMap.
    pub name: String,
}

/// Formats for `policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PolicyOutput {
    /// YAML documents: the policy, then its binding.
    Yaml,
    /// A JSON `List`.
    Json,
}

/// `policy`
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "yaml")]
    pub output: PolicyOutput,
    /// Apply the objects server-side (and delete a stale one of this namespace) instead of
    /// printing them, then wait until a dry-run Pod is swapped.
    #[arg(long)]
    pub apply: bool,
    /// A namespace whose ImageMaps apply to every namespace, below local ones (as the webhook's
    /// --global-namespace); reading it lists ImageMaps in all namespaces.
    #[arg(long)]
    pub global_namespace: Option<String>,
    /// How long --apply waits for the policy to take effect.
    #[arg(long, default_value = "30s", value_parser = imagemap_core::duration::parse_positive_duration)]
    pub timeout: std::time::Duration,
}

/// `doctor`
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Name of the MutatingWebhookConfiguration (default: the one whose webhook names contain "imagemap").
    #[arg(long)]
    pub webhook_config: Option<String>,
    /// Skip the final check that creates a temporary ImageMap and a dry-run Pod.
    #[arg(long)]
    pub no_dry_run: bool,
    /// Skip the check of the advertised registry (kube-public/local-registry-hosting).
    #[arg(long)]
    pub no_registry: bool,
}

/// The chart's MutatingWebhookConfiguration name for a release called `imagemap`.
pub const DEFAULT_WEBHOOK_CONFIG: &str = "imagemap";

/// `version`
#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Print only the plugin's version; do not contact the cluster.
    #[arg(long)]
    pub client: bool,
    /// The MutatingWebhookConfiguration whose Service's Deployment carries the webhook's version
    /// (when the default is missing: the configuration with an imagemap webhook calling a Service).
    #[arg(long, default_value = DEFAULT_WEBHOOK_CONFIG)]
    pub webhook_config: String,
}
