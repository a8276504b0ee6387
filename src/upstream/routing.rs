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
    /// What a load here would cost the models already loaded.
    pub eviction: Eviction,
}

/// What a load on a server would evict: the least recently used model with no request
/// in flight, as Ollama chooses — classed by how much the fleet still needs it. Ordered
/// from cheapest to dearest, so the cheapest load wins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Eviction {
    /// There is room for another model: nothing is evicted.
    #[default]
    Nothing,
    /// An idle model nobody has asked for lately.
    Unwanted,
    /// A model also loaded on another server: its requests still have somewhere warm.
    Copy,
    /// The only loaded copy of a model used lately: its next request pays a load.
    LastCopy,
    /// The only loaded copy of a model that requests are waiting for.
    Waited,
    /// Every loaded model has requests in flight: a load would have to wait for one.
    Impossible,
}

impl ServerView {
    fn warm_slot(&self) -> bool {
        self.model_loaded && self.model_in_flight < self.parallel
    }

    fn cold(&self) -> bool {
        !self.model_loaded && self.eviction != Eviction::Impossible
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
    /// The model's oldest waiter has waited long enough that it may take the last copy
    /// of a model others wait for (otherwise a model loaded nowhere could starve while
    /// its servers stay busy with the rest).
    pub starving: bool,
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
    // Rule 3: a load where it costs the least (what it evicts, then how many models are
    // loaded there). A model loaded nowhere must load somewhere, though not at the
    // expense of the last copy of a model requests wait for unless it has waited long.
    // A model warm elsewhere is copied only when waiting would take longer than a load,
    // and only where that evicts nothing the fleet uses: taking another model's last
    // copy would only move the load onto that model's next request (the thrash that
    // round robin suffers).
    let warm_slots: u32 = candidates()
        .filter(|(_, s)| s.model_loaded)
        .map(|(_, s)| s.parallel)
        .sum();
    let dearest = if warm_slots == 0 {
        if economics.starving {
            Eviction::Waited
        } else {
            Eviction::LastCopy
        }
    } else if economics.load_pays(warm_slots) {
        Eviction::Unwanted
    } else {
        return Route::Wait;
    };
    candidates()
        .filter(|(_, s)| s.cold() && s.eviction <= dearest)
        .min_by_key(|(_, s)| (s.eviction, s.loaded_count))
        .map_or(Route::Wait, |(i, _)| Route::Load(i))
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
        starving: false,
    };

    fn full(eviction: Eviction) -> ServerView {
        ServerView {
            loaded_count: 2,
            eviction,
            ..server()
        }
    }

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
        assert_eq!(
            route(&[full(Eviction::Impossible)], CHEAP_WAIT),
            Route::Wait
        );
        // The same server with an idle model may load (evicting the idle one).
        assert_eq!(
            route(&[full(Eviction::LastCopy)], CHEAP_WAIT),
            Route::Load(0)
        );
    }

    #[test]
    fn loads_go_where_the_fewest_models_are_loaded() {
        let two = ServerView {
            loaded_count: 1,
            max_loaded: 3,
            ..server()
        };
        let none = server();
        assert_eq!(route(&[two, none], CHEAP_WAIT), Route::Load(1));
    }

    #[test]
    fn a_load_goes_where_it_evicts_the_least_needed_model() {
        let servers = [
            full(Eviction::LastCopy),
            full(Eviction::Copy),
            full(Eviction::Unwanted),
        ];
        assert_eq!(route(&servers, CHEAP_WAIT), Route::Load(2));
        assert_eq!(route(&servers[..2], CHEAP_WAIT), Route::Load(1));
        // Room beats any eviction, however many models are loaded there.
        let roomy = ServerView {
            loaded_count: 2,
            max_loaded: 3,
            ..server()
        };
        assert_eq!(
            route(&[full(Eviction::Unwanted), roomy], CHEAP_WAIT),
            Route::Load(1)
        );
    }

    #[test]
    fn the_last_copy_of_a_waited_for_model_goes_only_to_a_starving_model() {
        let waited = [full(Eviction::Waited)];
        assert_eq!(route(&waited, CHEAP_WAIT), Route::Wait);
        let starving = LoadEconomics {
            starving: true,
            ..CHEAP_WAIT
        };
        assert_eq!(route(&waited, starving), Route::Load(0));
    }

    #[test]
    fn a_warm_model_is_copied_only_where_that_evicts_nothing_in_use() {
        let crowded = LoadEconomics {
            waiting: 20,
            ..CHEAP_WAIT
        };
        for eviction in [Eviction::Copy, Eviction::LastCopy, Eviction::Waited] {
            assert_eq!(
                route(&[warm(2), full(eviction)], crowded),
                Route::Wait,
                "{eviction:?}"
            );
        }
        assert_eq!(
            route(&[warm(2), full(Eviction::Unwanted)], crowded),
            Route::Load(1)
        );
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
        assert_eq!(
            route(&[warm(2), full(Eviction::Impossible)], CHEAP_WAIT),
            Route::Wait
        );
    }
}
