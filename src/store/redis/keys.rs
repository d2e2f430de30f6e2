//! The key layout. Every key of one route carries the hash tag `{<prefix>:<route>}`, so on a
//! Redis Cluster all of a route's keys live in one slot and each Lua script (which touches
//! only one route) runs on one node. Two keys are per gateway, not per route: the set of
//! routes seen (for admin lookups across routes) and the readiness probe's key.
//!
//! ```text
//! {P:R}:ev:<event_id>    hash    the event (request, state, counters, current stream entry)
//! {P:R}:log:<event_id>   list    attempt log, JSON per attempt, newest last, capped
//! {P:R}:dd:<dedupe_key>  string  → event id, PX = the route's dedupe ttl
//! {P:R}:stream           stream  deliveries due now; consumer group `hookgate`
//! {P:R}:retry            zset    event id → due time (ms) of its next attempt
//! {P:R}:pending|delivered|dead   zset  event id → received_at (ms), one per state
//! {P:R}:gc               zset    delivered event id → delivered at (ms), for retention
//! P:routes               set     route names ever recorded
//! P:ping                 string  written by the readiness probe
//! P:layout               string  the layout version of these keys (refused when newer)
//! ```

use crate::store::State;

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    /// `{P:R}:` — every key of the route starts with it; scripts build event keys from it.
    pub fn tag(&self, route: &str) -> String {
        format!("{{{}:{}}}:", self.prefix, route)
    }

    pub fn event(&self, route: &str, id: &str) -> String {
        format!("{}ev:{id}", self.tag(route))
    }

    pub fn log(&self, route: &str, id: &str) -> String {
        format!("{}log:{id}", self.tag(route))
    }

    pub fn dedupe(&self, route: &str, key: &str) -> String {
        format!("{}dd:{key}", self.tag(route))
    }

    pub fn stream(&self, route: &str) -> String {
        format!("{}stream", self.tag(route))
    }

    pub fn retry(&self, route: &str) -> String {
        format!("{}retry", self.tag(route))
    }

    /// Where the scan for abandoned stream entries (`XAUTOCLAIM`) goes on from.
    pub fn claim_cursor(&self, route: &str) -> String {
        format!("{}claim", self.tag(route))
    }

    pub fn state(&self, route: &str, state: State) -> String {
        format!("{}{}", self.tag(route), state.as_str())
    }

    pub fn gc(&self, route: &str) -> String {
        format!("{}gc", self.tag(route))
    }

    pub fn routes(&self) -> String {
        format!("{}:routes", self.prefix)
    }

    pub fn ping(&self) -> String {
        format!("{}:ping", self.prefix)
    }

    /// The layout version the keys were written in (see `redis::LAYOUT_VERSION`).
    pub fn layout(&self) -> String {
        format!("{}:layout", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_routes_keys_share_one_hash_tag() {
        let k = Keys::new("hg");
        assert_eq!(k.event("orders", "e1"), "{hg:orders}:ev:e1");
        assert_eq!(k.stream("orders"), "{hg:orders}:stream");
        assert_eq!(k.state("orders", State::Dead), "{hg:orders}:dead");
        assert_eq!(k.dedupe("orders", "a}b{"), "{hg:orders}:dd:a}b{");
        assert_eq!(k.routes(), "hg:routes");
    }
}
