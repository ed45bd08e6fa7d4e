//! `kubectl imagemap create NAME --selector REF`

use anyhow::Result;
use imagemap_core::types::{ImageMap, ImageMapOverrideArgs, ImageMapOverrideCommand, ImageMapSpec};
use kube::api::PostParams;

use super::{override_list, validate_reference};
use crate::cli::{CreateArgs, DryRun, Global};
use crate::client::Cluster;
use crate::render;

/// Builds the ImageMap the flags describe, after validating the selector.
pub fn build(args: &CreateArgs, namespace: &str) -> Result<ImageMap> {
    validate_reference("--selector", &args.selector)?;
    let spec = ImageMapSpec {
        selector: args.selector.clone(),
        match_exact: args.match_exact,
        match_in_env_vars: args.match_in_env_vars,
        override_command: override_list(&args.command).map(|command| ImageMapOverrideCommand { command }),
        override_args: override_list(&args.args).map(|args| ImageMapOverrideArgs { args }),
    };
    let mut map = ImageMap::new(&args.name, spec);
    map.metadata.namespace = Some(namespace.to_string());
    Ok(map)
}

/// Runs `create`.
pub async fn run(global: &Global, args: &CreateArgs, out: &mut dyn std::io::Write) -> Result<()> {
    super::write(out, &text(global, args).await?)
}

/// What `run` writes.
async fn text(global: &Global, args: &CreateArgs) -> Result<String> {
    if args.dry_run == DryRun::Client {
        let namespace = global.namespace.clone().unwrap_or_else(|| "default".into());
        let map = build(args, &namespace)?;
        return Ok(match args.output {
            Some(format) => render::object(&map, format),
            None => format!("imagemap.tilt.dev/{} created (dry run)\n", args.name),
        });
    }
    let cluster = Cluster::connect(global).await?;
    let map = build(args, &cluster.namespace)?;
    let params = PostParams { dry_run: args.dry_run == DryRun::Server, ..Default::default() };
    let created = cluster
        .maps()
        .create(&params, &map)
        .await
        .map_err(|e| cluster.explain_error(e, &format!("create imagemap {:?}", args.name)))?;
    let suffix = if params.dry_run { " (server dry run)" } else { "" };
    if !params.dry_run {
        if let Some(warning) = crate::scope_wait::wait(&cluster).await {
            eprintln!("{warning}");
        }
        if let Some(warning) = crate::scope_wait::wait_for_policy(&cluster, &created, crate::scope_wait::TIMEOUT).await
        {
            eprintln!("{warning}");
        }
    }
    Ok(match args.output {
        Some(format) => render::object(&created, format),
        None => format!("imagemap.tilt.dev/{} created{suffix}\n", args.name),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> CreateArgs {
        match crate::cli::Cli::parse_from(["kubectl-imagemap", "create"].iter().chain(args)).command {
            crate::cli::Command::Create(a) => a,
            _ => panic!("not create"),
        }
    }

    #[test]
    fn builds_spec_with_overrides_and_clearing() {
        let a = parse(&[
            "app",
            "--selector",
            "gcr.io/x/app",
            "--match-exact",
            "--command",
            "/bin/app",
            "--command",
            "serve",
            "--args",
            "",
        ]);
        let m = build(&a, "dev").expect("valid");
        assert_eq!(m.spec.override_command.expect("command").command, ["/bin/app", "serve"]);
        assert_eq!(m.spec.override_args.expect("args").args, Vec::<String>::new());
        assert!(m.spec.match_exact);
        assert_eq!(m.metadata.namespace.as_deref(), Some("dev"));
    }

    #[test]
    fn rejects_invalid_selector_with_the_reason() {
        let e = build(&parse(&["app", "--selector", "My App"]), "dev").expect_err("invalid");
        assert!(e.to_string().contains("invalid --selector \"My App\""), "{e}");
    }

    #[test]
    fn dry_run_flag_forms() {
        assert_eq!(parse(&["a", "--selector", "a", "--dry-run"]).dry_run, DryRun::Client);
        assert_eq!(parse(&["a", "--selector", "a", "--dry-run=server"]).dry_run, DryRun::Server);
        assert_eq!(parse(&["a", "--selector", "a"]).dry_run, DryRun::None);
    }
}
