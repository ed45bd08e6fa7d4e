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
            let scope = if args.all_namespaces {
                "any namespace".to_string()
            } else {
                format!("{} namespace", cluster.namespace)
            };
            eprintln!("No ImageMaps found in {scope}.");
        }
        return Ok(text);
    }
    print!("{text}");
    watch(api, args).await
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
