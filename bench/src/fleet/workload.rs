//! The fleet benchmark's pure parts: which models each simulated server has pulled, the
//! hand-chosen fixed split, the clients' random model picks, and the difference between
//! the simulators' counters at the start and at the end of a measured window.

use std::collections::BTreeMap;

use serde::Serialize;
use testkit::ollama::SimStats;

/// The six models of the workload (SPEC §8: 6 models, each server holds 2).
pub const MODELS: [&str; 6] = [
    "llama3.1:8b",
    "qwen2.5:7b",
    "mistral:7b",
    "gemma2:9b",
    "phi3:mini",
    "deepseek-r1:8b",
];

/// Simulated servers.
pub const SERVERS: usize = 3;

/// The pair of models (0, 1, 2) a model index belongs to.
fn group(model: usize) -> usize {
    model / 2
}

/// The models server `s` has pulled: every model is on two of the three servers ("not
/// every model fits on every server"). Server `s` lacks group `(s + 1) % 3`, so
/// server 0 has groups 0 and 2, server 1 groups 0 and 1, server 2 groups 1 and 2.
pub fn pulled(server: usize) -> Vec<&'static str> {
    (0..MODELS.len())
        .filter(|&m| group(m) != (server + 1) % SERVERS)
        .map(|m| MODELS[m])
        .collect()
}

/// The split chosen by hand: group `g` on server `g` alone (each server has it pulled),
/// two models per server, which is exactly what each server keeps loaded.
pub fn fixed_split(server: usize) -> Vec<&'static str> {
    (0..MODELS.len())
        .filter(|&m| group(m) == server)
        .map(|m| MODELS[m])
        .collect()
}

/// A client's model picks: uniform over `n` models, from a seed (splitmix64), so every
/// policy sees the same sequence of requests from each client.
#[derive(Debug, Clone)]
pub struct Picker {
    state: u64,
    n: usize,
}

impl Picker {
    pub fn new(seed: u64, n: usize) -> Self {
        Self {
            state: seed,
            n: n.max(1),
        }
    }

    /// The next model index, in `0..n`.
    pub fn next_index(&mut self) -> usize {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // n is tiny: the modulo bias is below 1e-17.
        (z % self.n as u64) as usize
    }
}

/// What one server's scheduler did during the window.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ServerWindow {
    pub server: String,
    pub served: u64,
    pub loads: u64,
    pub evictions: u64,
    /// Loads started in the window, per model (models with none left out).
    pub loads_by_model: BTreeMap<String, u64>,
    /// Most requests the server ran at once over its whole life (warm-up included).
    pub max_in_flight: usize,
    /// Loaded at the end of the window, least recently used first.
    pub loaded_at_end: Vec<String>,
}

/// The simulators' counters over a window: end minus start.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct FleetWindow {
    pub served: u64,
    pub loads: u64,
    pub evictions: u64,
    pub servers: Vec<ServerWindow>,
}

impl FleetWindow {
    /// `before` and `after` are every server's counters, in the same order as `names`.
    pub fn diff(names: &[String], before: &[SimStats], after: &[SimStats]) -> Self {
        let servers: Vec<ServerWindow> = names
            .iter()
            .zip(before.iter().zip(after))
            .map(|(name, (b, a))| {
                let loads_by_model = a
                    .models
                    .iter()
                    .map(|(m, s)| (m.clone(), s.loads.saturating_sub(b.model(m).loads)))
                    .filter(|(_, n)| *n > 0)
                    .collect();
                ServerWindow {
                    server: name.clone(),
                    served: a.served.saturating_sub(b.served),
                    loads: a.loads.saturating_sub(b.loads),
                    evictions: a.evictions.saturating_sub(b.evictions),
                    loads_by_model,
                    max_in_flight: a.max_in_flight,
                    loaded_at_end: a.loaded.clone(),
                }
            })
            .collect();
        Self {
            served: servers.iter().map(|s| s.served).sum(),
            loads: servers.iter().map(|s| s.loads).sum(),
            evictions: servers.iter().map(|s| s.evictions).sum(),
            servers,
        }
    }

    /// Most loads of one model on one server in the window.
    pub fn max_loads_per_model_server(&self) -> u64 {
        self.servers
            .iter()
            .flat_map(|s| s.loads_by_model.values())
            .copied()
            .max()
            .unwrap_or(0)
    }

    /// `(server, model)` pairs loaded more than once in the window.
    pub fn repeated_loads(&self) -> usize {
        self.servers
            .iter()
            .flat_map(|s| s.loads_by_model.values())
            .filter(|&&n| n > 1)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testkit::ollama::ModelStats;

    #[test]
    fn every_model_is_on_two_of_three_servers() {
        for m in MODELS {
            let on = (0..SERVERS).filter(|&s| pulled(s).contains(&m)).count();
            assert_eq!(on, 2, "{m}");
        }
        for s in 0..SERVERS {
            assert_eq!(pulled(s).len(), 4);
        }
    }

    #[test]
    fn fixed_split_puts_two_models_on_each_server_that_has_them() {
        let mut all: Vec<&str> = Vec::new();
        for s in 0..SERVERS {
            let split = fixed_split(s);
            assert_eq!(split.len(), 2);
            for m in &split {
                assert!(pulled(s).contains(m), "{m} not pulled on server {s}");
            }
            all.extend(split);
        }
        all.sort_unstable();
        let mut models = MODELS.to_vec();
        models.sort_unstable();
        assert_eq!(all, models);
    }

    #[test]
    fn picker_is_deterministic_and_roughly_uniform() {
        let mut a = Picker::new(7, 6);
        let mut b = Picker::new(7, 6);
        let seq: Vec<usize> = (0..100).map(|_| a.next_index()).collect();
        assert_eq!(seq, (0..100).map(|_| b.next_index()).collect::<Vec<_>>());
        assert_ne!(seq, {
            let mut c = Picker::new(8, 6);
            (0..100).map(|_| c.next_index()).collect::<Vec<_>>()
        });
        let mut counts = [0u32; 6];
        let mut p = Picker::new(1, 6);
        for _ in 0..60_000 {
            counts[p.next_index()] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
        assert_eq!(Picker::new(3, 0).next_index(), 0);
    }

    fn stats(served: u64, models: &[(&str, u64, u64)]) -> SimStats {
        let models: BTreeMap<String, ModelStats> = models
            .iter()
            .map(|(m, loads, evictions)| {
                (
                    (*m).to_string(),
                    ModelStats {
                        loads: *loads,
                        evictions: *evictions,
                        ..ModelStats::default()
                    },
                )
            })
            .collect();
        SimStats {
            served,
            loads: models.values().map(|m| m.loads).sum(),
            evictions: models.values().map(|m| m.evictions).sum(),
            models,
            ..SimStats::default()
        }
    }

    #[test]
    fn window_is_end_minus_start_per_server_and_model() {
        let names = vec!["s0".to_string(), "s1".to_string()];
        let before = [stats(10, &[("a", 1, 0)]), stats(5, &[("b", 2, 1)])];
        let after = [
            stats(30, &[("a", 1, 0), ("c", 1, 0)]),
            stats(9, &[("b", 5, 3), ("d", 2, 0)]),
        ];
        let w = FleetWindow::diff(&names, &before, &after);
        assert_eq!(w.served, 24);
        assert_eq!(w.loads, 1 + 3 + 2);
        assert_eq!(w.evictions, 2);
        assert_eq!(
            w.servers[0].loads_by_model,
            BTreeMap::from([("c".into(), 1)])
        );
        assert_eq!(
            w.servers[1].loads_by_model,
            BTreeMap::from([("b".into(), 3), ("d".into(), 2)])
        );
        assert_eq!(w.max_loads_per_model_server(), 3);
        assert_eq!(w.repeated_loads(), 2);
        let quiet = FleetWindow::diff(&names, &after, &after);
        assert_eq!((quiet.loads, quiet.max_loads_per_model_server()), (0, 0));
        assert_eq!(quiet.repeated_loads(), 0);
    }
}
