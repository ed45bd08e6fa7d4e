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
pub async fn run(global: &Global, args: &GetArgs) -> Result<String> {
    let cluster = Cluster::connect(global).await?;
    let api: Api<ImageMap> = if args.all_namespaces { Api::all(cluster.client.clone()) } else { cluster.maps() };
    let maps = match &args.name {
        Some(name) => vec![api.get(name).await.map_err(|e| cluster.explain_error(e, &format!("imagemap {name:?}")))?],
        None => api.list(&Default::default()).await.map_err(|e| cluster.explain_error(e, "list imagemaps"))?.items,
    };
    let text = match (&args.name, args.output) {
        (Some(_), Output::Yaml) => render::object(&maps[0], ObjectOutput::Yaml),
        (Some(_), Output::Json) => render::object(&maps[0], ObjectOutput::Json),
        _ => render::list(&maps, args.output, Timestamp::now(), args.all_namespaces),
    };
    if !args.watch {
        if text.is_empty() && matches!(args.output, Output::Table | Output::Wide) {
            eprintln!("{}", nothing_found(args.all_namespaces, &cluster.namespace));
        }
        return Ok(text);
    }
    print!("{text}");
    watch(api, args).await
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

async fn watch(api: Api<ImageMap>, args: &GetArgs) -> Result<String> {
    let mut config = watcher::Config::default();
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
        print!("{text}");
    }
    Ok(String::new())
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
