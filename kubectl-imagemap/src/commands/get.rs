//! `kubectl imagemap list|get [NAME]`, with `--watch`.

use anyhow::Result;
use futures::StreamExt;
use imagemap_core::types::ImageMap;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::watcher::{self, Event};
use kube::Api;

use crate::cli::{GetArgs, Global, ObjectOutput, Output};
use crate::client::Cluster;
use crate::render;

/// Runs `list` / `get`.
pub async fn run(global: &Global, args: &GetArgs, out: &mut dyn std::io::Write) -> Result<()> {
    let cluster = Cluster::connect(global).await?;
    let api: Api<ImageMap> = if args.all_namespaces { Api::all(cluster.client.clone()) } else { cluster.maps() };
    let maps = match &args.name {
        Some(name) => vec![api.get(name).await.map_err(|e| cluster.explain_error(e, &format!("imagemap {name:?}")))?],
        None => {
            let params = match &args.selector {
                Some(selector) => kube::api::ListParams::default().labels(selector),
                None => kube::api::ListParams::default(),
            };
            api.list(&params).await.map_err(|e| cluster.explain_error(e, "list imagemaps"))?.items
        }
    };
    let stale = match args.output {
        Output::Table | Output::Wide if !args.watch => {
            stale_counts(&cluster, &api, &maps, args.name.is_none() && args.selector.is_none()).await
        }
        _ => None,
    };
    let text = match (&args.name, args.output) {
        (Some(_), Output::Yaml) => render::object(&maps[0], ObjectOutput::Yaml),
        (Some(_), Output::Json) => render::object(&maps[0], ObjectOutput::Json),
        _ => render::list_with_stale(&maps, args.output, Timestamp::now(), args.all_namespaces, stale.as_ref()),
    };
    if !args.watch {
        if text.is_empty() && matches!(args.output, Output::Table | Output::Wide) {
            eprintln!("{}", nothing_found(args.all_namespaces, &cluster.namespace));
        }
        return super::write(out, &text);
    }
    super::write(out, &text)?;
    watch(api, args, out).await
}

/// The STALE column: per map, the Pods of its namespace it would change now, judged with every
/// map of that namespace (`complete`: `shown` is all of them). `None` (no column, with a warning) when Pods cannot be listed.
async fn stale_counts(
    cluster: &Cluster,
    api: &Api<ImageMap>,
    shown: &[ImageMap],
    complete: bool,
) -> Option<std::collections::BTreeMap<String, usize>> {
    let namespaces: std::collections::BTreeSet<String> =
        shown.iter().filter_map(|m| m.metadata.namespace.clone()).collect();
    // Precedence needs every map of the namespace: `shown` has them unless a name or a
    // selector narrowed the list.
    let all = if complete { shown.to_vec() } else { api.list(&Default::default()).await.ok()?.items };
    let mut counts = std::collections::BTreeMap::new();
    for namespace in &namespaces {
        match crate::stale::stale_pods(&cluster.client, namespace, &all).await {
            Ok(stale) => counts.extend(crate::stale::counts(&stale)),
            Err(e) => {
                eprintln!("warning: cannot list Pods in {} for the STALE column: {e}", render::escape(namespace));
                return None;
            }
        }
    }
    Some(counts)
}

/// What an empty table says instead (the namespace [`render::escape`]d, as everything the
/// tables print is).
fn nothing_found(all_namespaces: bool, namespace: &str) -> String {
    if all_namespaces {
        "No ImageMaps found in any namespace.".into()
    } else {
        format!("No ImageMaps found in {} namespace.", render::escape(namespace))
    }
}

async fn watch(api: Api<ImageMap>, args: &GetArgs, out: &mut dyn std::io::Write) -> Result<()> {
    let mut config = watcher::Config::default();
    if let Some(selector) = &args.selector {
        config = config.labels(selector);
    }
    if let Some(name) = &args.name {
        config = config.fields(&format!("metadata.name={name}"));
    }
    let mut stream = watcher::watcher(api, config).boxed();
    let mut initial = true;
    while let Some(event) = stream.next().await {
        let map = match event? {
            Event::InitDone => {
                initial = false;
                continue;
            }
            Event::Apply(m) | Event::Delete(m) if !initial => m,
            _ => continue,
        };
        let text = match args.output {
            Output::Table | Output::Wide => {
                let table =
                    render::list(std::slice::from_ref(&map), args.output, Timestamp::now(), args.all_namespaces);
                table.lines().skip(1).map(|l| format!("{l}\n")).collect()
            }
            other => render::list(std::slice::from_ref(&map), other, Timestamp::now(), args.all_namespaces),
        };
        super::write(out, &text)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use imagemap_core::types::ImageMap;

    #[test]
    fn listed_maps_and_the_empty_message_print_control_characters_escaped() {
        assert_eq!(nothing_found(false, "dev\u{1b}[2J"), "No ImageMaps found in dev\\u{1b}[2J namespace.");
        assert_eq!(nothing_found(true, "dev"), "No ImageMaps found in any namespace.");
        let map = ImageMap::for_selector("dev\r", "api\u{1b}]0;x\u{7}", "app\u{9b}").with_image("r.io/app:1\n");
        for output in [Output::Table, Output::Wide, Output::Name, Output::Json, Output::Yaml] {
            let text = render::list(std::slice::from_ref(&map), output, Timestamp::now(), true);
            let raw: Vec<char> = text.chars().filter(|&c| c != '\n' && c.is_control()).collect();
            assert!(raw.is_empty(), "{output:?}: raw control characters {raw:?} in {text:?}");
        }
    }
}
