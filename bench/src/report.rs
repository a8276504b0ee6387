//! Results: one record per scenario (direct vs through the gateway), the SPEC §8 targets,
//! a readable table and the JSON document.

use serde::Serialize;

use crate::stats::{Percentiles, Summary, added, fmt_added_us, fmt_rate, fmt_us, ratio};
use crate::system::{Machine, Rss};

/// Did a scenario run?
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Skipped,
    Failed,
}

/// Direct-vs-gateway figures for one scenario.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Comparison {
    /// gateway req/s ÷ direct req/s.
    pub rps_ratio: Option<f64>,
    /// gateway − direct, per latency percentile (µs; time to last byte for streams).
    pub added_p50_us: i64,
    pub added_p90_us: i64,
    pub added_p99_us: i64,
    pub added_max_us: i64,
    /// gateway ÷ direct p50 latency.
    pub p50_ratio: Option<f64>,
    /// Streams: gateway − direct time to first byte.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub added_ttfb_p50_us: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub added_ttfb_p99_us: Option<i64>,
}

impl Comparison {
    pub fn of(direct: &Summary, via: &Summary) -> Self {
        let (d, v) = (&direct.latency, &via.latency);
        let ttfb = direct.ttfb.zip(via.ttfb);
        Self {
            rps_ratio: ratio(direct.rps, via.rps),
            added_p50_us: added(d.p50_us, v.p50_us),
            added_p90_us: added(d.p90_us, v.p90_us),
            added_p99_us: added(d.p99_us, v.p99_us),
            added_max_us: added(d.max_us, v.max_us),
            p50_ratio: ratio(d.p50_us as f64, v.p50_us as f64),
            added_ttfb_p50_us: ttfb.map(|(d, v)| added(d.p50_us, v.p50_us)),
            added_ttfb_p99_us: ttfb.map(|(d, v)| added(d.p99_us, v.p99_us)),
        }
    }
}

/// Memory of the tollgate child process in the slow-streams scenario.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Memory {
    /// After start-up and key creation, before any proxied request.
    pub idle_rss_mib: f64,
    /// Highest resident size while the streams ran (`VmHWM`).
    pub peak_rss_mib: f64,
    /// After the streams ended.
    pub after_rss_mib: f64,
    /// Most streams open at once through tollgate, as sampled.
    pub concurrent_streams: usize,
}

impl Memory {
    pub fn from(idle: Rss, peak_hwm_kib: u64, after: Rss, concurrent_streams: usize) -> Self {
        Self {
            idle_rss_mib: mib(idle.rss_kib),
            peak_rss_mib: mib(peak_hwm_kib),
            after_rss_mib: mib(after.rss_kib),
            concurrent_streams,
        }
    }
}

/// Memory of the tollgate child process in the soak scenario: resident size before,
/// right after and some seconds after a long run of requests (SPEC §8: ≤ 50 MiB idle
/// at start and once a million requests have passed).
#[derive(Debug, Clone, Serialize, Default)]
pub struct Soak {
    /// Requests answered successfully.
    pub requests: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Requests the run was asked to send (`--soak-requests`).
    pub planned: u64,
    /// How long sending them took.
    pub load_s: f64,
    /// After start-up and key creation, before any proxied request.
    pub idle_before_rss_mib: f64,
    /// As soon as the last request ended.
    pub after_load_rss_mib: f64,
    /// After `idle_s` seconds without requests.
    pub after_idle_rss_mib: f64,
    pub idle_s: f64,
    /// Highest resident size of the process (`VmHWM`).
    pub peak_rss_mib: f64,
}

/// KiB → MiB, one decimal.
pub fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

/// One scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    /// `a-open`, `a-closed`, `b-stream`, `c-jwt`, `d-redis-open`, … (stable, for scripts).
    pub id: String,
    pub title: String,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Which gateway the `via` figures went through: `tollgate` or `nginx`.
    pub via_name: String,
    pub direct: Option<Summary>,
    pub via: Option<Summary>,
    pub comparison: Option<Comparison>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soak: Option<Soak>,
}

impl Scenario {
    pub fn measured(
        id: &str,
        title: String,
        via_name: &str,
        direct: Summary,
        via: Summary,
    ) -> Self {
        let comparison = Some(Comparison::of(&direct, &via));
        let failed = via.requests == 0 || direct.requests == 0;
        Self {
            id: id.into(),
            title,
            status: if failed { Status::Failed } else { Status::Ok },
            reason: failed.then(|| {
                via.first_error
                    .clone()
                    .or_else(|| direct.first_error.clone())
                    .unwrap_or_else(|| "no request succeeded".into())
            }),
            via_name: via_name.into(),
            direct: Some(direct),
            via: Some(via),
            comparison,
            memory: None,
            soak: None,
        }
    }

    pub fn skipped(id: &str, title: String, via_name: &str, reason: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            title,
            status: Status::Skipped,
            reason: Some(reason.into()),
            via_name: via_name.into(),
            direct: None,
            via: None,
            comparison: None,
            memory: None,
            soak: None,
        }
    }

    pub fn failed(id: &str, title: String, via_name: &str, reason: impl Into<String>) -> Self {
        Self {
            status: Status::Failed,
            ..Self::skipped(id, title, via_name, reason)
        }
    }
}

/// One SPEC §8 target and what this run measured for it.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub target: String,
    pub measured: String,
    /// `None`: not measured in this run.
    pub met: Option<bool>,
}

/// The whole JSON document.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub command: String,
    pub machine: Machine,
    pub settings: serde_json::Value,
    pub scenarios: Vec<Scenario>,
    /// The fleet benchmark (routing policies over simulated servers), when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<crate::fleet::FleetReport>,
    pub spec_targets: Vec<Target>,
    pub wall_time_s: f64,
}

// ------------------------------------------------------------------ SPEC §8

/// A throughput target: `a` against `b`, met at `at_least` × — judged per second of
/// gateway CPU when both runs measured it (the gateway's own capacity, whether or not the
/// load generator's CPU kept it busy), else on req/s.
fn throughput(target: &str, a: (&str, &Summary), b: (&str, &Summary), at_least: f64) -> Target {
    let ((an, a), (bn, b)) = (a, b);
    let rps = (b.rps > 0.0).then(|| a.rps / b.rps);
    let per_cpu = match (a.per_gateway_cpu_s, b.per_gateway_cpu_s) {
        (Some(x), Some(y)) if y > 0.0 => Some((x, y, x / y)),
        _ => None,
    };
    let mut measured = format!(
        "{an} {} req/s vs {bn} {} req/s = {}",
        fmt_rate(a.rps),
        fmt_rate(b.rps),
        rps.map_or("-".into(), |r| format!("{r:.2}×"))
    );
    if let Some((x, y, r)) = per_cpu {
        measured.push_str(&format!(
            "; per gateway CPU-s {} vs {} = {r:.2}×",
            fmt_rate(x),
            fmt_rate(y)
        ));
    }
    Target {
        target: target.into(),
        measured,
        met: per_cpu.map(|(_, _, r)| r).or(rps).map(|r| r >= at_least),
    }
}

pub fn spec_targets(
    scenarios: &[Scenario],
    stream_frames: usize,
    stream_delay_ms: u64,
) -> Vec<Target> {
    let find = |id: &str| {
        scenarios
            .iter()
            .find(|s| s.id == id && s.status == Status::Ok)
    };
    let mut out = Vec::new();
    let not_measured = |target: &str, why: &str| Target {
        target: target.into(),
        measured: format!("not measured ({why})"),
        met: None,
    };

    let t = "added latency p50 ≤ 100 µs at 1,000 req/s (virtual key, rpm/tpm limits)";
    out.push(match find("a-open").and_then(|s| s.comparison.as_ref()) {
        Some(c) => Target {
            target: t.into(),
            measured: fmt_added_us(c.added_p50_us),
            met: Some(c.added_p50_us <= 100),
        },
        None => not_measured(t, "scenario a-open did not run"),
    });
    let t = "added latency p99 ≤ 1 ms at 1,000 req/s";
    out.push(match find("a-open").and_then(|s| s.comparison.as_ref()) {
        Some(c) => Target {
            target: t.into(),
            measured: fmt_added_us(c.added_p99_us),
            met: Some(c.added_p99_us <= 1_000),
        },
        None => not_measured(t, "scenario a-open did not run"),
    });
    let t = "peak throughput ≥ plain nginx proxy_pass (1 worker, keep-alive upstream)";
    let tg = find("a-closed").and_then(|s| s.via.as_ref());
    let ng = find("f-nginx").and_then(|s| s.via.as_ref());
    out.push(match (tg, ng) {
        (Some(tg), Some(ng)) => throughput(t, ("tollgate", tg), ("nginx", ng), 1.0),
        (Some(_), _) => not_measured(t, "nginx scenario did not run"),
        _ => not_measured(t, "scenario a-closed did not run"),
    });
    let t = "peak throughput ≥ plain nginx with an upstream as fast as nginx (static stub)";
    let tg = find("h-fast").and_then(|s| s.via.as_ref());
    let ng = find("h-fast-nginx").and_then(|s| s.via.as_ref());
    if let (Some(tg), Some(ng)) = (tg, ng) {
        out.push(throughput(t, ("tollgate", tg), ("nginx", ng), 1.0));
    }
    let t = "Redis limiter ≥ 0.75× the throughput of tollgate without Redis";
    let with = find("d-redis-closed").and_then(|s| s.via.as_ref());
    let without = find("a-closed").and_then(|s| s.via.as_ref());
    if let (Some(with), Some(without)) = (with, without) {
        out.push(throughput(
            t,
            ("with Redis", with),
            ("without", without),
            0.75,
        ));
    }
    let t = "streaming adds ≤ 1 ms to time-to-first-byte (judged at p99)";
    out.push(match find("b-stream").and_then(|s| s.comparison.as_ref()) {
        Some(c) => {
            let (p50, p99) = (
                c.added_ttfb_p50_us.unwrap_or_default(),
                c.added_ttfb_p99_us.unwrap_or_default(),
            );
            Target {
                target: t.into(),
                measured: format!("p50 {}, p99 {}", fmt_added_us(p50), fmt_added_us(p99)),
                met: Some(p99 <= 1_000),
            }
        }
        None => not_measured(t, "scenario b-stream did not run"),
    });
    let t = "never buffers a stream (first byte arrives long before the last)";
    // A buffering proxy delivers the first byte with the last: its TTFB would be about
    // the direct stream's whole length.
    let frames_span_us = (stream_frames.saturating_sub(1) as u64) * stream_delay_ms * 1_000;
    out.push(match find("b-stream").and_then(|s| s.via.as_ref()) {
        Some(v) => {
            let ttfb = v.ttfb.unwrap_or_default();
            Target {
                target: t.into(),
                measured: format!(
                    "TTFB p99 {} vs TTLB p50 {} (frames span ≥ {})",
                    fmt_us(ttfb.p99_us),
                    fmt_us(v.latency.p50_us),
                    fmt_us(frames_span_us)
                ),
                met: Some(ttfb.p99_us * 2 < frames_span_us.max(1)),
            }
        }
        None => not_measured(t, "scenario b-stream did not run"),
    });
    let t = "a verified JWT adds ≤ 20 µs p50 over a virtual key";
    let key = find("a-open").and_then(|s| s.via.as_ref());
    let jwt = find("c-jwt").and_then(|s| s.via.as_ref());
    out.push(match (key, jwt) {
        (Some(k), Some(j)) => {
            let d = added(k.latency.p50_us, j.latency.p50_us);
            Target {
                target: t.into(),
                measured: fmt_added_us(d),
                met: Some(d <= 20),
            }
        }
        _ => not_measured(t, "JWT scenario skipped"),
    });
    let mem = scenarios
        .iter()
        .find(|s| s.id == "e-streams" && s.status == Status::Ok)
        .and_then(|s| s.memory.as_ref());
    let t = "RSS ≤ 50 MiB idle";
    out.push(match mem {
        Some(m) => Target {
            target: t.into(),
            measured: format!("{:.1} MiB", m.idle_rss_mib),
            met: Some(m.idle_rss_mib <= 50.0),
        },
        None => not_measured(t, "slow-streams scenario did not run"),
    });
    let t = "RSS ≤ 200 MiB with 1,000 concurrent streams";
    out.push(match mem {
        Some(m) => Target {
            target: t.into(),
            measured: format!(
                "{:.1} MiB peak with {} concurrent streams",
                m.peak_rss_mib, m.concurrent_streams
            ),
            met: Some(m.peak_rss_mib <= 200.0 && m.concurrent_streams >= 1_000),
        },
        None => not_measured(t, "slow-streams scenario did not run"),
    });
    let soak = scenarios
        .iter()
        .find(|s| s.id == "g-soak" && s.status == Status::Ok)
        .and_then(|s| s.soak.as_ref());
    let t = "RSS ≤ 50 MiB idle once a million requests have passed";
    out.push(match soak {
        Some(m) => {
            let worst = m.after_idle_rss_mib.max(m.idle_before_rss_mib);
            let enough = m.requests >= 1_000_000;
            Target {
                target: t.into(),
                measured: format!(
                    "{:.1} MiB before, {:.1} MiB right after, {:.1} MiB after {:.0} s idle \
                     ({} requests{})",
                    m.idle_before_rss_mib,
                    m.after_load_rss_mib,
                    m.after_idle_rss_mib,
                    m.idle_s,
                    m.requests,
                    if enough { "" } else { ": fewer than a million" }
                ),
                met: if worst > 50.0 {
                    Some(false)
                } else {
                    enough.then_some(true)
                },
            }
        }
        None => not_measured(t, "soak scenario did not run"),
    });
    out
}

// ------------------------------------------------------------------ table

fn soak_rows(rows: &mut Vec<Vec<String>>, s: &Scenario, m: &Soak) {
    let row = |metric: String, value: String, note: String| {
        vec![String::new(), metric, "-".into(), value, note]
    };
    let rps = s.via.as_ref().map_or(0.0, |v| v.rps);
    rows.push(row(
        "requests".into(),
        m.requests.to_string(),
        format!(
            "{} req/s over {:.0} s; {} errors",
            fmt_rate(rps),
            m.load_s,
            m.errors
        ),
    ));
    if let Some(v) = &s.via {
        rows.push(row(
            "latency p50 / p99".into(),
            format!(
                "{} / {}",
                fmt_us(v.latency.p50_us),
                fmt_us(v.latency.p99_us)
            ),
            String::new(),
        ));
    }
    rows.push(row(
        "RSS idle before".into(),
        format!("{:.1} MiB", m.idle_before_rss_mib),
        String::new(),
    ));
    rows.push(row(
        "RSS right after".into(),
        format!("{:.1} MiB", m.after_load_rss_mib),
        String::new(),
    ));
    rows.push(row(
        format!("RSS after {:.0} s idle", m.idle_s),
        format!("{:.1} MiB", m.after_idle_rss_mib),
        "SPEC §8: ≤ 50 MiB".into(),
    ));
    rows.push(row(
        "RSS peak".into(),
        format!("{:.1} MiB", m.peak_rss_mib),
        String::new(),
    ));
}

/// Renders rows of cells as a fixed-width table with a header rule.
pub fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(cols) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = String>| {
        let mut s = String::new();
        for (i, cell) in cells.enumerate() {
            let pad = widths[i].saturating_sub(cell.chars().count());
            s.push_str(&cell);
            if i + 1 < cols {
                s.push_str(&" ".repeat(pad));
                s.push_str(" | ");
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(&mut header.iter().map(|h| (*h).to_string()));
    out.push('\n');
    out.push_str(
        &widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-|-"),
    );
    out.push('\n');
    for row in rows {
        out.push_str(&line(&mut row.iter().cloned()));
        out.push('\n');
    }
    out
}

fn latency_rows(
    rows: &mut Vec<Vec<String>>,
    label: &str,
    d: Option<&Percentiles>,
    v: Option<&Percentiles>,
) {
    type Pick = fn(&Percentiles) -> u64;
    let pick: [(&str, Pick); 4] = [
        ("p50", |p| p.p50_us),
        ("p90", |p| p.p90_us),
        ("p99", |p| p.p99_us),
        ("max", |p| p.max_us),
    ];
    for (name, f) in pick {
        let dv = d.map(f);
        let vv = v.map(f);
        rows.push(vec![
            String::new(),
            format!("{label}{name}"),
            dv.map_or("-".into(), fmt_us),
            vv.map_or("-".into(), fmt_us),
            match (dv, vv) {
                (Some(a), Some(b)) => fmt_added_us(added(a, b)),
                _ => "-".into(),
            },
        ]);
    }
}

/// The readable table: scenario | metric | direct | via | ratio / added.
pub fn scenario_table(scenarios: &[Scenario]) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    for s in scenarios {
        let title = format!("{} [{}]", s.title, s.via_name);
        if let (Status::Ok, Some(m)) = (&s.status, &s.soak) {
            rows.push(vec![
                title,
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]);
            soak_rows(&mut rows, s, m);
            continue;
        }
        if s.status != Status::Ok || s.direct.is_none() {
            let word = if s.status == Status::Failed {
                "FAILED"
            } else {
                "skipped"
            };
            rows.push(vec![
                title,
                String::new(),
                String::new(),
                String::new(),
                format!("{word}: {}", s.reason.clone().unwrap_or_default()),
            ]);
            continue;
        }
        let (d, v) = (s.direct.as_ref(), s.via.as_ref());
        rows.push(vec![
            title,
            "req/s".into(),
            d.map_or("-".into(), |d| fmt_rate(d.rps)),
            v.map_or("-".into(), |v| fmt_rate(v.rps)),
            s.comparison
                .as_ref()
                .and_then(|c| c.rps_ratio)
                .map_or("-".into(), |r| format!("{r:.2}×")),
        ]);
        if let Some(v) = v
            && let (Some(per), Some(cpu)) = (v.per_gateway_cpu_s, v.gateway_cpu_s)
        {
            rows.push(vec![
                String::new(),
                "req per gateway CPU-s".into(),
                "-".into(),
                fmt_rate(per),
                format!(
                    "CPU {:.0} % busy",
                    100.0 * cpu / v.duration_s.max(f64::EPSILON)
                ),
            ]);
        }
        let streaming = v.is_some_and(|v| v.ttfb.is_some());
        if streaming {
            latency_rows(
                &mut rows,
                "TTFB ",
                d.and_then(|d| d.ttfb.as_ref()),
                v.and_then(|v| v.ttfb.as_ref()),
            );
            latency_rows(
                &mut rows,
                "TTLB ",
                d.map(|d| &d.latency),
                v.map(|v| &v.latency),
            );
        } else {
            latency_rows(&mut rows, "", d.map(|d| &d.latency), v.map(|v| &v.latency));
        }
        if let (Some(d), Some(v)) = (d, v)
            && let (Some(dl), Some(vl)) = (d.send_lag, v.send_lag)
        {
            rows.push(vec![
                String::new(),
                "generator send lag p99".into(),
                fmt_us(dl.p99_us),
                fmt_us(vl.p99_us),
                "(in latency)".into(),
            ]);
        }
        if let Some(m) = &s.memory {
            rows.push(vec![
                String::new(),
                "RSS idle".into(),
                "-".into(),
                format!("{:.1} MiB", m.idle_rss_mib),
                String::new(),
            ]);
            rows.push(vec![
                String::new(),
                format!("RSS peak ({} streams)", m.concurrent_streams),
                "-".into(),
                format!("{:.1} MiB", m.peak_rss_mib),
                String::new(),
            ]);
        }
        let errors = d.map_or(0, |d| d.errors) + v.map_or(0, |v| v.errors);
        if errors > 0 {
            rows.push(vec![
                String::new(),
                "errors".into(),
                d.map_or("-".into(), |d| d.errors.to_string()),
                v.map_or("-".into(), |v| v.errors.to_string()),
                v.and_then(|v| v.first_error.clone())
                    .or_else(|| d.and_then(|d| d.first_error.clone()))
                    .unwrap_or_default()
                    .chars()
                    .take(80)
                    .collect(),
            ]);
        }
    }
    render_table(
        &[
            "scenario",
            "metric",
            "direct",
            "via gateway",
            "ratio / added",
        ],
        &rows,
    )
}

pub fn targets_table(targets: &[Target]) -> String {
    let rows: Vec<Vec<String>> = targets
        .iter()
        .map(|t| {
            vec![
                t.target.clone(),
                t.measured.clone(),
                match t.met {
                    Some(true) => "met".into(),
                    Some(false) => "NOT met".into(),
                    None => "-".into(),
                },
            ]
        })
        .collect();
    render_table(&["SPEC §8 target", "measured", "verdict"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(rps: f64, p50: u64) -> Summary {
        Summary {
            requests: 10,
            rps,
            duration_s: 1.0,
            latency: Percentiles {
                p50_us: p50,
                p90_us: p50 * 2,
                p99_us: p50 * 3,
                p999_us: p50 * 4,
                max_us: p50 * 5,
                mean_us: p50 as f64,
            },
            ..Summary::default()
        }
    }

    #[test]
    fn table_shows_ratio_and_added_latency() {
        let s = Scenario::measured(
            "a-open",
            "chat".into(),
            "tollgate",
            summary(1000.0, 100),
            summary(990.0, 160),
        );
        let table = scenario_table(std::slice::from_ref(&s));
        assert!(table.contains("0.99×"), "{table}");
        assert!(table.contains("+60 µs"), "{table}");
        assert!(table.contains("+180 µs"), "{table}"); // p99: 300 → 480
        let skipped =
            Scenario::skipped("c-jwt", "jwt".into(), "tollgate", "JWT auth not built yet");
        assert!(scenario_table(&[skipped]).contains("skipped: JWT auth not built yet"));
        let targets = spec_targets(&[s], 8, 2);
        assert_eq!(targets[0].met, Some(true));
        assert_eq!(targets[1].met, Some(true));
        assert_eq!(targets[2].met, None);
    }

    #[test]
    fn table_columns_line_up() {
        let t = render_table(
            &["a", "bb"],
            &[
                vec!["xxx".into(), "y".into()],
                vec!["µ".into(), "zz".into()],
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "a   | bb");
        assert_eq!(lines[1], "----|---");
        assert_eq!(lines[2], "xxx | y");
        assert_eq!(lines[3], "µ   | zz");
    }
}
