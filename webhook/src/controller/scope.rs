//! Keeps the webhook configuration scoped to where maps are ([`imagemap_core::scope`]): the
//! API server calls the webhook only for Pods a map could change.

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::PostParams;
use kube::{Api, Client};

use crate::AppState;
use imagemap_core::scope;

/// Keeps every webhook of the configuration `name` scoped to the namespaces the maps need, with
/// a match condition ([`imagemap_core::scope`]); writes only when that changes.
pub(super) async fn keep_scope(client: &Client, state: &AppState, name: &str) -> kube::Result<()> {
    let (wanted, images) = state.with_index(|idx| (scope::scope_of(idx), scope::image_tokens(idx)));
    state.metrics.scope_images(images.is_some());
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let mut config = api.get(name).await?;
    let mut changed = false;
    for hook in config.webhooks.iter_mut().flatten() {
        let next = scope::scoped_conditions(hook.match_conditions.as_deref(), &wanted, images.as_ref());
        if hook.match_conditions.as_deref().unwrap_or_default() != next.as_slice() {
            hook.match_conditions = (!next.is_empty()).then_some(next);
            changed = true;
        }
    }
    if changed {
        // The resourceVersion makes this a compare-and-swap with the admin's own edits.
        api.replace(name, &PostParams::default(), &config).await?;
        let scope = match &wanted {
            scope::Scope::Everywhere => "every namespace".to_string(),
            scope::Scope::Namespaces(n) if n.is_empty() => "no namespace".to_string(),
            scope::Scope::Namespaces(n) => n.iter().cloned().collect::<Vec<_>>().join(","),
        };
        let images = images.map_or_else(
            || "any (a map swaps env values, or more than 32 selector names)".to_string(),
            |t| t.into_iter().collect::<Vec<_>>().join(","),
        );
        tracing::info!(configuration = %name, %scope, %images, "webhook scoped to where ImageMaps are");
    }
    Ok(())
}
