//! Budget periods: when a key's or team's `budget_reset_at` passes, its spend returns to
//! zero and the next period begins. One small query a second on every instance; the
//! conditional update in the store makes exactly one instance reset each row.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::app::App;
use crate::invalidation::Change;
use crate::store::BudgetReset;

const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Resets every budget whose period has ended; returns how many were reset.
pub async fn reset_due_budgets(app: &App) -> usize {
    match app.store.reset_budgets(chrono::Utc::now()).await {
        Ok(resets) => {
            for reset in &resets {
                let change = match reset {
                    BudgetReset::Key { key_hash } => Change::Key(key_hash.clone()),
                    BudgetReset::Team { team_id } => Change::Team(team_id.clone()),
                };
                app.invalidate(change).await;
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

/// Runs [`reset_due_budgets`] every second for as long as the app lives.
pub fn spawn_budget_resets(app: &Arc<App>) {
    let weak: Weak<App> = Arc::downgrade(app);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(CHECK_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Some(app) = weak.upgrade() else { return };
            if app.cancel.is_cancelled() {
                return;
            }
            reset_due_budgets(&app).await;
        }
    });
}
