//! [`Fleet`]: several simulated Ollama servers started together, for tests and the
//! benchmark that route across servers (SPEC §11). Each server is an independent
//! [`MockOllama`] in scheduler mode; the fleet only starts them and sums their counters.

use super::{MockOllama, MockOllamaBuilder, SimStats};

/// Simulated servers, in the order their builders were given.
#[derive(Debug, Clone)]
pub struct Fleet {
    servers: Vec<MockOllama>,
}

impl Fleet {
    /// Start one server per builder, each on `127.0.0.1:0`.
    pub async fn start(builders: impl IntoIterator<Item = MockOllamaBuilder>) -> Self {
        let mut servers = Vec::new();
        for builder in builders {
            servers.push(builder.start().await);
        }
        Self { servers }
    }

    /// The servers.
    pub fn servers(&self) -> &[MockOllama] {
        &self.servers
    }

    /// Server `i` (panics when out of range, as indexing does).
    pub fn server(&self, i: usize) -> &MockOllama {
        &self.servers[i]
    }

    /// Every server's URL, in order.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(MockOllama::url).collect()
    }

    /// Every server's counters, in order.
    pub fn stats(&self) -> Vec<SimStats> {
        self.servers
            .iter()
            .map(|s| s.sim_stats().unwrap_or_default())
            .collect()
    }

    /// Model loads across the fleet.
    pub fn total_loads(&self) -> u64 {
        self.stats().iter().map(|s| s.loads).sum()
    }

    /// Requests served across the fleet.
    pub fn total_served(&self) -> u64 {
        self.stats().iter().map(|s| s.served).sum()
    }

    /// Stop every server (see [`MockOllama::stop`]).
    pub async fn stop(&self) {
        for server in &self.servers {
            server.stop().await;
        }
    }
}
