//! Discovery: every `upstream.discovery_interval_s`, each server's `/api/tags` (what it
//! has) and `/api/ps` (what it has loaded) are read into the [`Fleet`]; ejected servers
//! whose `eject_s` has passed are probed (`GET /api/version`) and readmitted when they
//! answer. The first round runs at once, in the background, so start-up never waits on
//! a server. Between rounds, what tollgate itself sends keeps the picture current.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::Upstream;
use super::fleet::ServerState;
use crate::tasks::TaskSpawner;

pub(super) fn start(upstream: Arc<Upstream>, every: Duration, tasks: &TaskSpawner) {
    tasks.spawn_loop("upstream discovery", async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            round(&upstream).await;
        }
    });
}

/// One round over every server, concurrently.
pub async fn round(upstream: &Upstream) {
    let probes = upstream.fleet.due_for_probe();
    let status = upstream.fleet.status();
    let work = (0..status.len()).map(|i| {
        let probe = probes.contains(&i);
        let ejected = status[i].state == ServerState::Ejected;
        async move {
            if probe {
                if upstream.get_json(i, "/api/version").await.is_some() {
                    upstream.fleet.readmit(i);
                }
                // Still down: probed again next round.
                return;
            }
            if ejected {
                return;
            }
            read_lists(upstream, i).await;
        }
    });
    futures_util::future::join_all(work).await;
    publish_metrics(upstream);
}

async fn read_lists(upstream: &Upstream, server: usize) {
    let tags = upstream.get_json(server, "/api/tags").await;
    let ps = upstream.get_json(server, "/api/ps").await;
    upstream.fleet.observe(
        server,
        tags.as_ref().and_then(model_names),
        ps.as_ref().and_then(model_names),
    );
}

/// The `name` (or `model`) of every entry of Ollama's `{"models": [...]}`; `None` for a
/// document of another shape (what the server has stays as last known).
pub fn model_names(doc: &Value) -> Option<Vec<String>> {
    let models = doc.get("models")?.as_array()?;
    Some(
        models
            .iter()
            .filter_map(|m| m.get("name").or_else(|| m.get("model")))
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
    )
}

fn publish_metrics(upstream: &Upstream) {
    for s in upstream.fleet.status() {
        for state in [
            ServerState::InService,
            ServerState::Ejected,
            ServerState::Draining,
        ] {
            metrics::gauge!(crate::telemetry::UPSTREAM_STATE,
                "server" => s.name.clone(), "state" => state.as_str())
            .set(if s.state == state { 1.0 } else { 0.0 });
        }
        metrics::gauge!(crate::telemetry::UPSTREAM_IN_FLIGHT, "server" => s.name.clone())
            .set(f64::from(s.in_flight.values().sum::<u32>()));
    }
}
