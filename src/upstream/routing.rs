//! Where a request for a model goes (SPEC §11, rules 1–4), decided over a snapshot of
//! each server's state. Pure: no locks, no clocks, no I/O, so every rule is unit-tested
//! on its own; [`super::fleet`] holds the state and calls [`route`] under its lock.

/// What routing needs to know about one server.
#[derive(Debug, Clone, Default)]
pub struct ServerView {
    /// Not ejected and not draining.
    pub in_service: bool,
    /// Its last `/api/tags` lists the model (or has not been read yet).
    pub lists_model: bool,
    /// The model is loaded there (last `/api/ps`, plus what was sent since).
    pub model_loaded: bool,
    /// The gateway's requests for the model in flight there.
    pub model_in_flight: u32,
    pub parallel: u32,
    pub loaded_count: u32,
    pub max_loaded: u32,
    /// Some loaded model has no request in flight (it is what a load would evict).
    pub has_idle_model: bool,
}

impl ServerView {
    fn warm_slot(&self) -> bool {
        self.model_loaded && self.model_in_flight < self.parallel
    }

    /// A load here evicts no model with requests in flight.
    fn can_load(&self) -> bool {
        !self.model_loaded && (self.loaded_count < self.max_loaded || self.has_idle_model)
    }
}

/// What one routing decision says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A free slot where the model is loaded.
    Warm(usize),
    /// Start a load here (it evicts nothing busy).
    Load(usize),
    /// Every candidate is busy: wait for a slot.
    Wait,
    /// Servers list the model but none is in service now.
    Unavailable,
    /// No server lists the model.
    NotFound,
}

/// Whether loading the model on another server pays while it is warm somewhere: its
/// waiting requests would wait longer for its warm servers than a load takes.
#[derive(Debug, Clone, Copy)]
pub struct LoadEconomics {
    /// Requests for the model already waiting, this one not included.
    pub waiting: u32,
    /// Typical time one request for the model holds its slot.
    pub service_ms: u64,
    /// Typical time a load of the model takes.
    pub load_ms: u64,
}

impl LoadEconomics {
    fn load_pays(&self, warm_slots: u32) -> bool {
        if warm_slots == 0 {
            return true;
        }
        // Requests ahead of this one, served `warm_slots` at a time.
        let rounds = u64::from(self.waiting / warm_slots + 1);
        rounds.saturating_mul(self.service_ms) > self.load_ms
    }
}

/// Rules 1–4 of SPEC §11 for one request.
pub fn route(servers: &[ServerView], economics: LoadEconomics) -> Route {
    let listed = servers.iter().any(|s| s.lists_model);
    if !listed {
        return Route::NotFound;
    }
    let candidates = || {
        servers
            .iter()
            .enumerate()
            .filter(|(_, s)| s.in_service && s.lists_model)
    };
    if candidates().next().is_none() {
        return Route::Unavailable;
    }
    // Rule 2: warm with a free slot, fewest in flight.
    if let Some((i, _)) = candidates()
        .filter(|(_, s)| s.warm_slot())
        .min_by_key(|(_, s)| s.model_in_flight)
    {
        return Route::Warm(i);
    }
    // Rule 3: a load that evicts nothing busy, where the fewest models are loaded — and
    // while the model is warm elsewhere, only when waiting would take longer.
    let warm_slots: u32 = candidates()
        .filter(|(_, s)| s.model_loaded)
        .map(|(_, s)| s.parallel)
        .sum();
    if economics.load_pays(warm_slots)
        && let Some((i, _)) = candidates()
            .filter(|(_, s)| s.can_load())
            .min_by_key(|(_, s)| s.loaded_count)
    {
        return Route::Load(i);
    }
    Route::Wait
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> ServerView {
        ServerView {
            in_service: true,
            lists_model: true,
            parallel: 2,
            max_loaded: 2,
            ..ServerView::default()
        }
    }

    fn warm(in_flight: u32) -> ServerView {
        ServerView {
            model_loaded: true,
            model_in_flight: in_flight,
            loaded_count: 1,
            ..server()
        }
    }

    const CHEAP_WAIT: LoadEconomics = LoadEconomics {
        waiting: 0,
        service_ms: 1_000,
        load_ms: 3_000,
    };

    #[test]
    fn a_model_listed_nowhere_is_not_found() {
        let s = ServerView {
            lists_model: false,
            ..server()
        };
        assert_eq!(route(&[s.clone(), s], CHEAP_WAIT), Route::NotFound);
    }

    #[test]
    fn only_servers_that_list_the_model_are_candidates() {
        let elsewhere = ServerView {
            lists_model: false,
            ..server()
        };
        assert_eq!(route(&[elsewhere, server()], CHEAP_WAIT), Route::Load(1));
    }

    #[test]
    fn listed_only_on_servers_out_of_service_is_unavailable() {
        let out = ServerView {
            in_service: false,
            ..warm(0)
        };
        assert_eq!(route(&[out], CHEAP_WAIT), Route::Unavailable);
    }

    #[test]
    fn warm_is_preferred_over_cold_and_the_least_busy_warm_wins() {
        let cold = server();
        assert_eq!(route(&[cold.clone(), warm(1)], CHEAP_WAIT), Route::Warm(1));
        assert_eq!(route(&[warm(1), cold, warm(0)], CHEAP_WAIT), Route::Warm(2));
    }

    #[test]
    fn a_load_never_evicts_a_busy_model() {
        // Full server whose loaded models are all busy: no load there.
        let full_busy = ServerView {
            loaded_count: 2,
            has_idle_model: false,
            ..server()
        };
        assert_eq!(
            route(std::slice::from_ref(&full_busy), CHEAP_WAIT),
            Route::Wait
        );
        // The same server with an idle model may load (evicting the idle one).
        let full_idle = ServerView {
            has_idle_model: true,
            ..full_busy
        };
        assert_eq!(route(&[full_idle], CHEAP_WAIT), Route::Load(0));
    }

    #[test]
    fn loads_go_where_the_fewest_models_are_loaded() {
        let two = ServerView {
            loaded_count: 1,
            max_loaded: 3,
            has_idle_model: true,
            ..server()
        };
        let none = server();
        assert_eq!(route(&[two, none], CHEAP_WAIT), Route::Load(1));
    }

    #[test]
    fn a_warm_model_spreads_only_when_waiting_takes_longer_than_a_load() {
        let busy = warm(2);
        let cold = server();
        // One request would wait one service time (1 s) < a load (3 s): wait.
        assert_eq!(
            route(&[busy.clone(), cold.clone()], CHEAP_WAIT),
            Route::Wait
        );
        // Six already waiting on two slots: four rounds of 1 s > 3 s: load elsewhere.
        let crowded = LoadEconomics {
            waiting: 6,
            ..CHEAP_WAIT
        };
        assert_eq!(route(&[busy, cold], crowded), Route::Load(1));
    }

    #[test]
    fn when_nothing_is_possible_the_request_waits() {
        let busy = warm(2);
        let full = ServerView {
            loaded_count: 2,
            ..server()
        };
        assert_eq!(route(&[busy, full], CHEAP_WAIT), Route::Wait);
    }
}
