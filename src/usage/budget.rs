//! `BudgetResets`: when a key's or team's `budget_reset_at` passes, its spend returns to
//! zero and the next period begins. One small query a second on every instance; the
//! conditional update in the store makes exactly one instance reset each row.

use std::sync::Arc;
use std::time::Duration;

use crate::auth::invalidation::{Change, Invalidator};
use crate::store::{BudgetReset, Store};
use crate::tasks::TaskSpawner;

const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The budget-period job: the store's resets, then the key cache told about them.
pub struct BudgetResets {
    store: Arc<dyn Store>,
    invalidator: Arc<Invalidator>,
}

impl BudgetResets {
    pub fn new(store: Arc<dyn Store>, invalidator: Arc<Invalidator>) -> Self {
        Self { store, invalidator }
    }

    /// Resets every budget whose period has ended; returns how many were reset.
    pub async fn reset_due(&self) -> usize {
        match self.store.reset_budgets(chrono::Utc::now()).await {
            Ok(resets) => {
                for reset in &resets {
                    let change = match reset {
                        BudgetReset::Key { key_hash } => Change::Key(key_hash.clone()),
                        BudgetReset::Team { team_id } => Change::Team(team_id.clone()),
                    };
                    self.invalidator.publish(change).await;
                }
                if !resets.is_empty() {
                    tracing::info!(count = resets.len(), "budget periods reset");
                }
                resets.len()
            }
            Err(e) => {
                tracing::warn!(error = %e, "budget reset check failed; will retry");
                0
            }
        }
    }

    /// Runs [`BudgetResets::reset_due`] every second until shutdown.
    pub fn start(self: &Arc<Self>, tasks: &TaskSpawner) {
        let job = self.clone();
        tasks.spawn_loop("budget resets", async move {
            let mut ticker = tokio::time::interval(CHECK_EVERY);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                job.reset_due().await;
            }
        });
    }
}
