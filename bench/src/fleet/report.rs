//! The fleet benchmark's results: per policy and for the tenants phase, each figure as a
//! ratio against its baseline in the same run (round robin for requests/s, the light
//! tenant alone for its latency), the SPEC §8 fleet targets and the tables.

use serde::Serialize;

use super::workload::FleetWindow;
use crate::report::{Status, Target, render_table};
use crate::stats::{Summary, fmt_rate, fmt_us, ratio};

/// The simulated fleet and the workload.
#[derive(Debug, Clone, Serialize)]
pub struct FleetSettings {
    pub servers: usize,
    pub models: Vec<String>,
    /// Per server, the models it has pulled (model_aware and round_robin).
    pub pulled: Vec<String>,
    /// Per server, its models in the fixed split.
    pub fixed_split: Vec<String>,
    pub parallel: usize,
    pub max_loaded_models: usize,
    pub load_ms: u64,
    pub token_ms: u64,
    pub tokens_per_answer: usize,
    pub clients: usize,
    pub flood_clients: usize,
    pub light_rate: f64,
    pub warmup_s: f64,
    pub window_s: f64,
}

/// One routing policy over the measured window.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyResult {
    pub policy: String,
    pub description: String,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub summary: Option<Summary>,
    /// The simulators' counters over the window (end − start).
    pub window: Option<FleetWindow>,
    /// req/s ÷ round robin's req/s.
    pub rps_vs_round_robin: Option<f64>,
    /// req/s ÷ the fixed split's req/s.
    pub rps_vs_fixed_split: Option<f64>,
    /// p50 and p99 ÷ round robin's.
    pub p50_vs_round_robin: Option<f64>,
    pub p99_vs_round_robin: Option<f64>,
    /// Most loads of one model on one server in the window.
    pub max_loads_per_model_server: u64,
    /// `(server, model)` pairs loaded more than once in the window.
    pub repeated_loads: usize,
}

impl PolicyResult {
    pub fn measured(policy: &str, description: &str, s: Summary, w: FleetWindow) -> Self {
        let failed = s.requests == 0;
        Self {
            policy: policy.into(),
            description: description.into(),
            status: if failed { Status::Failed } else { Status::Ok },
            reason: failed.then(|| {
                s.first_error
                    .clone()
                    .unwrap_or_else(|| "no request succeeded".into())
            }),
            max_loads_per_model_server: w.max_loads_per_model_server(),
            repeated_loads: w.repeated_loads(),
            summary: Some(s),
            window: Some(w),
            rps_vs_round_robin: None,
            rps_vs_fixed_split: None,
            p50_vs_round_robin: None,
            p99_vs_round_robin: None,
        }
    }

    pub fn failed(policy: &str, description: &str, reason: String) -> Self {
        Self {
            policy: policy.into(),
            description: description.into(),
            status: Status::Failed,
            reason: Some(reason),
            summary: None,
            window: None,
            rps_vs_round_robin: None,
            rps_vs_fixed_split: None,
            p50_vs_round_robin: None,
            p99_vs_round_robin: None,
            max_loads_per_model_server: 0,
            repeated_loads: 0,
        }
    }

    fn ok_summary(&self) -> Option<&Summary> {
        (self.status == Status::Ok)
            .then_some(self.summary.as_ref())
            .flatten()
    }
}

/// Fills each policy's ratios against round robin and the fixed split.
pub fn add_ratios(policies: &mut [PolicyResult]) {
    let find = |name: &str, policies: &[PolicyResult]| {
        policies
            .iter()
            .find(|p| p.policy == name)
            .and_then(|p| p.ok_summary().cloned())
    };
    let rr = find("round_robin", policies);
    let fixed = find("fixed split", policies);
    for p in policies.iter_mut() {
        let Some(s) = p.ok_summary().cloned() else {
            continue;
        };
        if let Some(rr) = &rr {
            p.rps_vs_round_robin = ratio(rr.rps, s.rps);
            p.p50_vs_round_robin = ratio(rr.latency.p50_us as f64, s.latency.p50_us as f64);
            p.p99_vs_round_robin = ratio(rr.latency.p99_us as f64, s.latency.p99_us as f64);
        }
        if let Some(f) = &fixed {
            p.rps_vs_fixed_split = ratio(f.rps, s.rps);
        }
    }
}

/// The light tenant beside a flooding one.
#[derive(Debug, Clone, Serialize)]
pub struct TenantsResult {
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The light tenant with the fleet to itself (models loaded by the flood's warm-up).
    pub light_alone: Option<Summary>,
    /// The light tenant while the flood runs.
    pub light_beside_flood: Option<Summary>,
    /// The flooding tenant over the same window.
    pub flood: Option<Summary>,
    /// The simulators' counters over the flood's window.
    pub window: Option<FleetWindow>,
    /// Beside the flood ÷ alone.
    pub p50_ratio: Option<f64>,
    pub p99_ratio: Option<f64>,
}

impl TenantsResult {
    pub fn measured(alone: Summary, light: Summary, flood: Summary, w: FleetWindow) -> Self {
        let failed = alone.requests == 0 || light.requests == 0;
        Self {
            status: if failed { Status::Failed } else { Status::Ok },
            reason: failed.then(|| {
                light
                    .first_error
                    .clone()
                    .or_else(|| alone.first_error.clone())
                    .unwrap_or_else(|| "no request succeeded".into())
            }),
            p50_ratio: ratio(alone.latency.p50_us as f64, light.latency.p50_us as f64),
            p99_ratio: ratio(alone.latency.p99_us as f64, light.latency.p99_us as f64),
            light_alone: Some(alone),
            light_beside_flood: Some(light),
            flood: Some(flood),
            window: Some(w),
        }
    }

    pub fn failed(reason: String) -> Self {
        Self {
            status: Status::Failed,
            reason: Some(reason),
            light_alone: None,
            light_beside_flood: None,
            flood: None,
            window: None,
            p50_ratio: None,
            p99_ratio: None,
        }
    }
}

/// The fleet family in the JSON document.
#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    pub settings: FleetSettings,
    pub policies: Vec<PolicyResult>,
    pub tenants: TenantsResult,
    pub targets: Vec<Target>,
}

fn times(r: Option<f64>) -> String {
    r.map_or("-".into(), |r| format!("{r:.2}×"))
}

/// SPEC §8's fleet targets as measured.
pub fn fleet_targets(f: &FleetReport) -> Vec<Target> {
    let find = |name: &str| f.policies.iter().find(|p| p.policy == name);
    let ma = find("model_aware").filter(|p| p.status == Status::Ok);
    let rr = find("round_robin").and_then(PolicyResult::ok_summary);
    let fixed = find("fixed split").and_then(PolicyResult::ok_summary);
    let mut out = Vec::new();
    let missing = |t: &str, why: &str| Target {
        target: t.into(),
        measured: format!("not measured ({why})"),
        met: None,
    };
    let ma_s = ma.and_then(|p| p.summary.as_ref());
    let t = "fleet: model_aware completes ≥ 3× round robin's requests/s";
    out.push(match (ma_s, rr) {
        (Some(m), Some(r)) if r.rps > 0.0 => Target {
            target: t.into(),
            measured: format!(
                "{} vs {} req/s = {:.2}×",
                fmt_rate(m.rps),
                fmt_rate(r.rps),
                m.rps / r.rps
            ),
            met: Some(m.rps >= 3.0 * r.rps),
        },
        _ => missing(t, "a policy run failed"),
    });
    let t = "fleet: model_aware ≥ 0.9× a fixed model → server split";
    out.push(match (ma_s, fixed) {
        (Some(m), Some(x)) if x.rps > 0.0 => Target {
            target: t.into(),
            measured: format!(
                "{} vs {} req/s = {:.2}×",
                fmt_rate(m.rps),
                fmt_rate(x.rps),
                m.rps / x.rps
            ),
            met: Some(m.rps >= 0.9 * x.rps),
        },
        _ => missing(t, "a policy run failed"),
    });
    let t = "fleet: model_aware loads each model at most once per server after warm-up";
    out.push(match ma.and_then(|p| p.window.as_ref().map(|w| (p, w))) {
        Some((p, w)) => Target {
            target: t.into(),
            measured: format!(
                "{} loads, {} evictions; at most {} of one model on one server, {} pairs loaded twice or more",
                w.loads, w.evictions, p.max_loads_per_model_server, p.repeated_loads
            ),
            met: Some(p.max_loads_per_model_server <= 1),
        },
        None => missing(t, "model_aware run failed"),
    });
    let t = "fleet: a light tenant's p99 beside a flooding one ≤ 2× its p99 alone";
    let tn = &f.tenants;
    out.push(
        match (
            tn.light_alone.as_ref(),
            tn.light_beside_flood.as_ref(),
            tn.status == Status::Ok,
        ) {
            (Some(a), Some(l), true) => Target {
                target: t.into(),
                measured: format!(
                    "p99 {} beside the flood vs {} alone = {}",
                    fmt_us(l.latency.p99_us),
                    fmt_us(a.latency.p99_us),
                    times(tn.p99_ratio)
                ),
                met: tn.p99_ratio.map(|r| r <= 2.0),
            },
            _ => missing(t, "tenants phase failed"),
        },
    );
    out
}

/// The policies table, then the tenants table.
pub fn fleet_table(f: &FleetReport) -> String {
    let mut rows = Vec::new();
    for p in &f.policies {
        let Some(s) = p.ok_summary() else {
            rows.push(vec![
                p.policy.clone(),
                format!("FAILED: {}", p.reason.clone().unwrap_or_default()),
            ]);
            continue;
        };
        let w = p.window.clone().unwrap_or_default();
        rows.push(vec![
            p.policy.clone(),
            fmt_rate(s.rps),
            times(p.rps_vs_round_robin),
            times(p.rps_vs_fixed_split),
            format!(
                "{} ({})",
                fmt_us(s.latency.p50_us),
                times(p.p50_vs_round_robin)
            ),
            format!(
                "{} ({})",
                fmt_us(s.latency.p99_us),
                times(p.p99_vs_round_robin)
            ),
            w.loads.to_string(),
            w.evictions.to_string(),
            p.max_loads_per_model_server.to_string(),
            s.errors.to_string(),
        ]);
    }
    let mut out = render_table(
        &[
            "fleet policy",
            "req/s",
            "vs round robin",
            "vs fixed split",
            "p50 (vs rr)",
            "p99 (vs rr)",
            "loads",
            "evictions",
            "max loads/model/server",
            "errors",
        ],
        &rows,
    );
    out.push('\n');
    let tn = &f.tenants;
    let mut rows = Vec::new();
    if tn.status == Status::Ok {
        let alone = tn.light_alone.clone().unwrap_or_default();
        let mut row = |who: &str, s: &Summary, p50: String, p99: String| {
            rows.push(vec![
                who.to_string(),
                s.requests.to_string(),
                fmt_rate(s.rps),
                format!("{} ({p50})", fmt_us(s.latency.p50_us)),
                format!("{} ({p99})", fmt_us(s.latency.p99_us)),
                fmt_us(s.latency.max_us),
                s.errors.to_string(),
            ]);
        };
        row("light tenant alone", &alone, "1.00×".into(), "1.00×".into());
        if let Some(l) = &tn.light_beside_flood {
            row(
                "light tenant beside the flood",
                l,
                times(tn.p50_ratio),
                times(tn.p99_ratio),
            );
        }
        if let Some(fl) = &tn.flood {
            let w = tn.window.clone().unwrap_or_default();
            row(
                &format!(
                    "flooding tenant ({} clients; {} loads)",
                    f.settings.flood_clients, w.loads
                ),
                fl,
                "-".into(),
                "-".into(),
            );
        }
    } else {
        rows.push(vec![
            "tenants".into(),
            format!("FAILED: {}", tn.reason.clone().unwrap_or_default()),
        ]);
    }
    out.push_str(&render_table(
        &[
            "fleet tenants (model_aware)",
            "requests",
            "req/s",
            "p50 (vs alone)",
            "p99 (vs alone)",
            "max",
            "errors",
        ],
        &rows,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Percentiles;

    fn summary(rps: f64, p50: u64, p99: u64) -> Summary {
        Summary {
            requests: 100,
            rps,
            duration_s: 10.0,
            latency: Percentiles {
                p50_us: p50,
                p99_us: p99,
                ..Percentiles::default()
            },
            ..Summary::default()
        }
    }

    #[test]
    fn ratios_and_targets_against_the_same_run() {
        let mut policies = vec![
            PolicyResult::measured(
                "round_robin",
                "",
                summary(2.0, 4_000, 9_000),
                FleetWindow::default(),
            ),
            PolicyResult::measured(
                "model_aware",
                "",
                summary(8.0, 1_000, 3_000),
                FleetWindow::default(),
            ),
            PolicyResult::measured(
                "fixed split",
                "",
                summary(10.0, 900, 2_000),
                FleetWindow::default(),
            ),
        ];
        add_ratios(&mut policies);
        assert_eq!(policies[1].rps_vs_round_robin, Some(4.0));
        assert_eq!(policies[1].rps_vs_fixed_split, Some(0.8));
        assert_eq!(policies[0].rps_vs_round_robin, Some(1.0));
        assert_eq!(policies[1].p50_vs_round_robin, Some(0.25));
        let tenants = TenantsResult::measured(
            summary(4.0, 250_000, 300_000),
            summary(4.0, 300_000, 700_000),
            summary(40.0, 1_000_000, 2_000_000),
            FleetWindow::default(),
        );
        assert_eq!(tenants.p99_ratio, Some(700.0 / 300.0));
        let mut f = FleetReport {
            settings: super::super::settings(super::super::FleetPhases {
                warmup: std::time::Duration::from_secs(1),
                window: std::time::Duration::from_secs(2),
            }),
            policies,
            tenants,
            targets: Vec::new(),
        };
        f.targets = fleet_targets(&f);
        let met: Vec<Option<bool>> = f.targets.iter().map(|t| t.met).collect();
        assert_eq!(met, vec![Some(true), Some(false), Some(true), Some(false)]);
        let table = fleet_table(&f);
        assert!(table.contains("4.00×"), "{table}");
        assert!(table.contains("light tenant beside the flood"), "{table}");
        assert!(table.contains("2.33×"), "{table}");
    }

    #[test]
    fn a_failed_policy_is_reported_not_compared() {
        let mut policies = vec![
            PolicyResult::failed("round_robin", "", "tollgate did not start".into()),
            PolicyResult::measured(
                "model_aware",
                "",
                summary(8.0, 1_000, 3_000),
                FleetWindow::default(),
            ),
        ];
        add_ratios(&mut policies);
        assert_eq!(policies[1].rps_vs_round_robin, None);
        let f = FleetReport {
            settings: super::super::settings(super::super::FleetPhases {
                warmup: std::time::Duration::from_secs(1),
                window: std::time::Duration::from_secs(2),
            }),
            policies,
            tenants: TenantsResult::failed("x".into()),
            targets: Vec::new(),
        };
        let targets = fleet_targets(&f);
        assert_eq!(targets[0].met, None);
        assert!(fleet_table(&f).contains("FAILED: tollgate did not start"));
    }
}
