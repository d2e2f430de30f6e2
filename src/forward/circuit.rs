//! A per-route circuit breaker, pure (time is an input). After `THRESHOLD` consecutive
//! retryable failures the circuit opens and the worker stops leasing for a cool-down that
//! doubles on every re-open (capped); then one probe is let through. A success closes it.
//! This keeps a dead upstream from being hammered by every pending event at once.

use std::time::{Duration, Instant};

const THRESHOLD: u32 = 5;
const FIRST_COOLDOWN: Duration = Duration::from_secs(1);
const MAX_COOLDOWN: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct Circuit {
    failures: u32,
    opened: u32,
    open_until: Option<Instant>,
    probing: bool,
}

impl Circuit {
    /// How many events may be taken now, given `free` delivery slots. Once the cool-down is
    /// over this is 1 until `probe_started`: a probe is only under way once one was sent.
    pub fn allowance(&self, free: usize, now: Instant) -> usize {
        match self.open_until {
            None => free,
            Some(t) if now < t => 0,
            Some(_) if self.probing => 0,
            Some(_) => free.min(1),
        }
    }

    /// The worker sent an attempt while the circuit is open: that attempt is the probe.
    pub fn probe_started(&mut self) {
        if self.open_until.is_some() {
            self.probing = true;
        }
    }

    /// The probe ended without an answer (its task failed): the next event taken is the
    /// probe, so a lost probe cannot hold the circuit open for good.
    pub fn probe_abandoned(&mut self) {
        self.probing = false;
    }

    /// Ends an open circuit's pause now (an operator replayed events: they fixed the
    /// upstream, and waiting out a pause of up to a minute looked like the replay did
    /// nothing). True if it was pausing.
    pub fn end_pause(&mut self, now: Instant) -> bool {
        match self.open_until {
            Some(t) if t > now && !self.probing => {
                self.open_until = Some(now);
                true
            }
            _ => false,
        }
    }

    /// Open: an attempt sent now is its probe.
    pub fn is_open(&self) -> bool {
        self.open_until.is_some()
    }

    /// When the circuit lets a probe through, if it is open.
    pub fn reopens_at(&self) -> Option<Instant> {
        self.open_until.filter(|_| !self.probing)
    }

    /// Open, its cool-down over, and no probe under way: the next event taken is the probe.
    pub fn awaits_probe(&self, now: Instant) -> bool {
        self.open_until.is_some_and(|t| now >= t) && !self.probing
    }

    /// True when this closed an open circuit.
    pub fn on_success(&mut self) -> bool {
        let was_open = self.open_until.is_some();
        *self = Circuit::default();
        was_open
    }

    /// A retryable failure (permanent ones say nothing about the sink's health) of an attempt
    /// sent as the `probe` or not. When this opens the circuit (or the probe's failure opens
    /// it again): the failures in a row so far and the cool-down before the next probe. An
    /// attempt sent before the circuit opened that fails while the probe is out is counted,
    /// but is not the probe's answer.
    pub fn on_failure(&mut self, now: Instant, probe: bool) -> Option<(u32, Duration)> {
        self.failures += 1;
        if (self.probing && probe) || (self.open_until.is_none() && self.failures >= THRESHOLD) {
            let cool = FIRST_COOLDOWN
                .saturating_mul(2u32.saturating_pow(self.opened.min(16)))
                .min(MAX_COOLDOWN);
            self.opened += 1;
            self.open_until = Some(now + cool);
            self.probing = false;
            return Some((self.failures, cool));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A circuit just opened at `t0` by `THRESHOLD` failures in a row.
    fn opened(t0: Instant) -> Circuit {
        let mut c = Circuit::default();
        for _ in 0..THRESHOLD {
            c.on_failure(t0, false);
        }
        c
    }

    #[test]
    fn opens_probes_and_closes() {
        let t0 = Instant::now();
        let mut c = Circuit::default();
        for _ in 0..4 {
            assert_eq!(c.on_failure(t0, false), None);
        }
        assert_eq!(c.allowance(8, t0), 8);
        assert_eq!(
            c.on_failure(t0, false),
            Some((5, FIRST_COOLDOWN)),
            "opening is reported"
        );
        assert_eq!(c.allowance(8, t0), 0, "open after 5 failures");
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(c.allowance(8, t1), 1, "one probe after the cool-down");
        assert_eq!(
            c.allowance(8, t1 + Duration::from_secs(30)),
            1,
            "nothing was due: the probe is still allowed later (the route does not stall)"
        );
        c.probe_started();
        assert_eq!(c.allowance(8, t1), 0, "only one probe at a time");
        assert_eq!(
            c.on_failure(t1, true),
            Some((6, Duration::from_secs(2))),
            "a failed probe opens it again"
        );
        assert_eq!(
            c.allowance(8, t1 + Duration::from_millis(1999)),
            0,
            "cool-down doubled"
        );
        assert_eq!(c.allowance(8, t1 + Duration::from_secs(2)), 1);
        assert!(c.on_success(), "closing is reported");
        assert_eq!(c.allowance(8, t1), 8);
        assert!(!c.on_success(), "a closed circuit stays closed");
    }

    #[test]
    fn a_late_failure_of_an_attempt_sent_before_opening_is_not_the_probes_answer() {
        let t0 = Instant::now();
        let mut c = opened(t0);
        let t1 = t0 + FIRST_COOLDOWN;
        c.probe_started();
        assert_eq!(c.on_failure(t1, false), None, "not the probe's answer");
        assert_eq!(c.allowance(8, t1), 0, "the probe is still out");
        assert_eq!(
            c.on_failure(t1, true),
            Some((THRESHOLD + 2, FIRST_COOLDOWN * 2)),
            "the probe's own failure opens it again, once"
        );
    }

    #[test]
    fn an_operators_replay_ends_the_pause() {
        let t0 = Instant::now();
        assert!(!Circuit::default().end_pause(t0), "closed: nothing to end");
        let mut c = opened(t0);
        assert_eq!(c.allowance(8, t0), 0);
        assert!(c.end_pause(t0));
        assert_eq!(c.allowance(8, t0), 1, "the probe may go now");
        c.probe_started();
        assert!(!c.end_pause(t0), "a probe is out already");
    }

    #[test]
    fn a_probe_that_got_no_answer_lets_the_next_one_through() {
        let t0 = Instant::now();
        let mut c = opened(t0);
        let t1 = t0 + FIRST_COOLDOWN;
        c.probe_started();
        assert_eq!((c.allowance(8, t1), c.reopens_at()), (0, None), "probing");
        c.probe_abandoned();
        assert_eq!(c.allowance(8, t1), 1, "another probe");
        assert_eq!(
            c.reopens_at(),
            Some(t1),
            "and the worker knows it may send it"
        );
    }
}
