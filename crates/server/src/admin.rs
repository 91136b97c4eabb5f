//! The operations besides inference, written once for both front ends: server metadata, model
//! readiness, statistics, and the model repository's index, load and unload. REST and gRPC only
//! translate their wire forms to and from these.

use std::collections::BTreeMap;
use std::sync::Arc;

use oxinfer_core::protocol::ServerMetadata;
use oxinfer_core::{Error, Result};

use crate::auth::Grant;
use crate::models::ServedModel;
use crate::models::repository::IndexEntry;
use crate::state::AppState;
use crate::telemetry::metrics::{self, ModelSeries};
use crate::telemetry::stats::StatsSnapshot;

/// The protocol extensions this server implements (`GET /v2`, gRPC `ServerMetadata`).
const EXTENSIONS: [&str; 4] = [
    "binary_tensor_data",
    "model_configuration",
    "statistics",
    "model_repository",
];

/// The server's name, version and extensions.
pub(crate) fn server_metadata() -> ServerMetadata {
    ServerMetadata {
        name: "oxinfer".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        extensions: EXTENSIONS.iter().map(|e| e.to_string()).collect(),
    }
}

/// The model version a readiness probe asks about, and whether the server takes traffic. An
/// unknown or unloaded model is an error (not found / unavailable).
pub(crate) fn model_readiness(
    state: &AppState,
    model: &str,
    version: Option<&str>,
) -> Result<(Arc<ServedModel>, bool)> {
    let served = state.repository.get(model, version)?;
    Ok((served, state.is_ready()))
}

/// One model version's statistics (Triton's `ModelStatistics`).
pub(crate) struct ModelStatistics {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) stats: StatsSnapshot,
    /// oxinfer's addition: the runtime's own counters (e.g. tract's plan compilations).
    pub(crate) runtime_counters: BTreeMap<&'static str, u64>,
}

/// The statistics asked for: every ready model version without a name, every ready version of
/// `model` without a version, else that one version.
pub(crate) fn statistics(
    state: &AppState,
    model: Option<&str>,
    version: Option<&str>,
    grant: Option<&Grant>,
) -> Result<Vec<ModelStatistics>> {
    let models = match (model, version) {
        // Every model the caller's token may use.
        (None, _) => state
            .repository
            .ready_models()
            .into_iter()
            .filter(|m| grant.is_none_or(|g| g.may_use(&m.name)))
            .collect(),
        (Some(name), None) => state.repository.ready_versions(name)?,
        (Some(name), Some(v)) => vec![state.repository.get(name, Some(v))?],
    };
    Ok(models
        .iter()
        .map(|m| ModelStatistics {
            name: m.name.clone(),
            version: m.version.clone(),
            stats: m.telemetry.stats(),
            runtime_counters: m.model.counters().into_iter().collect(),
        })
        .collect())
}

/// The Prometheus exposition of the models ready now (`GET /metrics`).
pub(crate) fn metrics(state: &AppState) -> String {
    let models = state.repository.ready_models();
    let series: Vec<ModelSeries<'_>> = models
        .iter()
        .map(|m| ModelSeries {
            name: &m.name,
            version: &m.version,
            telemetry: &m.telemetry,
            runtime: m.model.counters(),
        })
        .collect();
    metrics::render(
        &series,
        &state.metrics,
        &state.listening.metrics,
        &state.access.failures,
        &state.budget,
        state.repository.reload_counts(),
        state.log.as_ref().map(|log| log.counters()),
    )
}

/// Every model version of the manifest with its state; only ready ones when `ready_only`.
pub(crate) fn index(state: &AppState, ready_only: bool, grant: Option<&Grant>) -> Vec<IndexEntry> {
    let mut index = state.repository.index(ready_only);
    index.retain(|e| grant.is_none_or(|g| g.may_use(&e.name)));
    index
}

/// Refuses repository parameters other than `allowed`.
fn check_parameters<'a>(
    operation: &str,
    keys: impl IntoIterator<Item = &'a str>,
    allowed: &[&str],
) -> Result<()> {
    match keys.into_iter().find(|k| !allowed.contains(k)) {
        Some(key) => Err(Error::invalid(format!(
            "{operation} parameter '{key}' is not supported: oxinfer loads a model only from the \
             files its manifest lists"
        ))),
        None => Ok(()),
    }
}

/// Loads every version of `model` from its files again; `parameters` are the names of the
/// request's repository parameters (none is supported). Runs off the I/O threads.
///
/// Loads of one model are coalesced: while one runs, every other load of that model waits for
/// its result rather than starting its own (and its own thread).
pub(crate) async fn load<'a>(
    state: &AppState,
    model: &str,
    parameters: impl IntoIterator<Item = &'a str>,
) -> Result<()> {
    check_parameters("load", parameters, &[])?;
    let mut outcome = {
        let mut loads = state.loads.lock().unwrap_or_else(|e| e.into_inner());
        match loads.get(model) {
            Some(running) => running.clone(),
            None => {
                let (done, outcome) = tokio::sync::watch::channel(None);
                loads.insert(model.to_string(), outcome.clone());
                let (repository, loads, name) = (
                    state.repository.clone(),
                    state.loads.clone(),
                    model.to_string(),
                );
                // Runs to the end even if every caller goes away.
                tokio::spawn(async move {
                    let reload_name = name.clone();
                    let result =
                        tokio::task::spawn_blocking(move || repository.reload(&reload_name))
                            .await
                            .unwrap_or_else(|e| {
                                Err(Error::Internal(format!(
                                    "loading model '{name}' panicked: {e}"
                                )))
                            });
                    loads
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&name);
                    let _ = done.send(Some(result));
                });
                outcome
            }
        }
    };
    let result = outcome
        .wait_for(Option::is_some)
        .await
        .map_err(|_| Error::Internal(format!("loading model '{model}' stopped")))?
        .clone();
    result.unwrap_or_else(|| Err(Error::Internal("no load outcome".into())))
}

/// Takes every version of `model` out of service; `parameters` are the names of the request's
/// repository parameters (only `unload_dependents`, which has no effect, is accepted). Runs off
/// the I/O threads, since the model may be freed here.
pub(crate) async fn unload<'a>(
    state: &AppState,
    model: &str,
    parameters: impl IntoIterator<Item = &'a str>,
) -> Result<()> {
    check_parameters("unload", parameters, &["unload_dependents"])?;
    let repository = state.repository.clone();
    let name = model.to_string();
    tokio::task::spawn_blocking(move || repository.unload(&name))
        .await
        .map_err(|e| Error::Internal(format!("unloading model '{model}' panicked: {e}")))?
}
