//! Leader election through a `coordination.k8s.io/v1` Lease, by client-go's rule: a holder's
//! record is judged by how long ago **this replica saw it change**, on its own monotonic clock,
//! never by comparing the holder's `renewTime` with the local wall clock. So clock skew between
//! replicas cannot make two leaders: a live holder keeps changing its record, and a record that
//! stops changing expires `leaseDurationSeconds` after it was last seen to change.
//!
//! [`decide`] is the pure rule; [`Elector`] does the API calls (a compare-and-swap on the
//! Lease's resourceVersion) and releases the Lease on shutdown so another replica takes over at
//! once.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::Api;

/// How long a Lease stays valid without a change, as written into it.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the leader renews.
pub const RENEW_PERIOD: Duration = Duration::from_secs(2);
/// A leader that has not renewed for this long stops acting (well before others may take over).
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often a replica that does not lead looks at the Lease.
pub const RETRY_PERIOD: Duration = Duration::from_secs(1);

/// The last record seen and when (local monotonic clock) it was first seen in this form.
#[derive(Debug, Clone)]
pub struct Observed {
    record: LeaseSpec,
    at: Instant,
}

/// What to do with the Lease as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Take it over (free, released or expired): write this replica as holder.
    Acquire,
    /// This replica holds it: write a new renew time.
    Renew,
    /// Another replica holds it and its record is fresh: do nothing.
    Follow,
}

/// The election rule. `observed` is updated when the record differs from the last one seen.
pub fn decide(identity: &str, record: &LeaseSpec, observed: &mut Option<Observed>, now: Instant) -> Decision {
    if observed.as_ref().is_none_or(|o| o.record != *record) {
        *observed = Some(Observed { record: record.clone(), at: now });
    }
    let holder = record.holder_identity.as_deref().unwrap_or("");
    if holder == identity {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::Acquire;
    }
    let seconds = record.lease_duration_seconds.map_or(LEASE_DURATION.as_secs(), |s| u64::try_from(s).unwrap_or(0));
    let seen_at = observed.as_ref().map_or(now, |o| o.at);
    if now.saturating_duration_since(seen_at) >= Duration::from_secs(seconds) {
        Decision::Acquire
    } else {
        Decision::Follow
    }
}

/// One replica's side of the election.
pub struct Elector {
    leases: Api<Lease>,
    name: String,
    identity: String,
    observed: Option<Observed>,
    /// When this replica last wrote the Lease successfully while holding it.
    renewed: Option<Instant>,
    /// When this replica last looked while not leading.
    looked: Option<Instant>,
}

impl Elector {
    /// An elector for the Lease `name` in `leases`' namespace.
    pub fn new(leases: Api<Lease>, name: impl Into<String>, identity: impl Into<String>) -> Self {
        Elector { leases, name: name.into(), identity: identity.into(), observed: None, renewed: None, looked: None }
    }

    /// True while this replica leads: holds the Lease and renewed it within [`RENEW_DEADLINE`].
    pub fn leading(&self) -> bool {
        self.renewed.is_some_and(|t| t.elapsed() < RENEW_DEADLINE)
    }

    /// Acquires or renews the Lease when due (at most every [`RENEW_PERIOD`] while leading and
    /// every [`RETRY_PERIOD`] while not) and says whether this replica leads. A failed call is
    /// returned; leadership then lasts until [`RENEW_DEADLINE`] passes without a renewal.
    pub async fn try_lead(&mut self) -> kube::Result<bool> {
        let due = if self.leading() {
            self.renewed.is_none_or(|t| t.elapsed() >= RENEW_PERIOD)
        } else {
            self.looked.is_none_or(|t| t.elapsed() >= RETRY_PERIOD)
        };
        if !due {
            return Ok(self.leading());
        }
        self.looked = Some(Instant::now());
        match self.attempt().await {
            Ok(true) => {
                self.renewed = Some(Instant::now());
                Ok(true)
            }
            Ok(false) => {
                self.renewed = None;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    async fn attempt(&mut self) -> kube::Result<bool> {
        let now = MicroTime(Timestamp::now());
        let Some(mut lease) = self.leases.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                spec: Some(self.fresh(now, 0)),
            };
            return match self.leases.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let new_spec = match decide(&self.identity, &spec, &mut self.observed, Instant::now()) {
            Decision::Follow => return Ok(false),
            Decision::Renew => LeaseSpec {
                renew_time: Some(now),
                lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
                ..spec
            },
            Decision::Acquire => self.fresh(now, spec.lease_transitions.unwrap_or(0) + 1),
        };
        lease.spec = Some(new_spec);
        // The resourceVersion makes this a compare-and-swap: two replicas never both win.
        match self.leases.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(written) => {
                self.observed = written.spec.map(|record| Observed { record, at: Instant::now() });
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn fresh(&self, now: MicroTime, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// Gives the Lease up if this replica holds it (holder cleared), so that another replica
    /// acquires it at its next look instead of waiting for it to expire.
    pub async fn release(&mut self) -> kube::Result<()> {
        self.renewed = None;
        let Some(mut lease) = self.leases.get_opt(&self.name).await? else { return Ok(()) };
        let Some(spec) = lease.spec.as_mut() else { return Ok(()) };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.leases.replace(&self.name, &PostParams::default(), &lease).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(holder: &str, renew: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: (!holder.is_empty()).then(|| holder.to_string()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(renew.parse().expect("timestamp"))),
            ..Default::default()
        }
    }

    #[test]
    fn a_holder_whose_renew_time_is_far_in_the_past_is_followed_while_its_record_changes() {
        // The holder's clock is an hour behind: by the wall clock its Lease looks long expired.
        let start = Instant::now();
        let mut observed = None;
        for i in 0..20u64 {
            let renew = format!("2020-01-01T00:00:{:02}.000000Z", i * 2);
            let now = start + Duration::from_secs(i * 2);
            assert_eq!(decide("me", &record("other", &renew), &mut observed, now), Decision::Follow, "round {i}");
        }
    }

    #[test]
    fn a_holder_whose_renew_time_is_in_the_future_expires_once_its_record_stops_changing() {
        let start = Instant::now();
        let mut observed = None;
        let stuck = record("other", "2099-01-01T00:00:00.000000Z");
        assert_eq!(decide("me", &stuck, &mut observed, start), Decision::Follow);
        assert_eq!(decide("me", &stuck, &mut observed, start + Duration::from_secs(14)), Decision::Follow);
        assert_eq!(decide("me", &stuck, &mut observed, start + Duration::from_secs(15)), Decision::Acquire);
    }

    #[test]
    fn a_record_first_seen_is_fresh_whatever_its_times_say() {
        let mut observed = None;
        let old = record("other", "2000-01-01T00:00:00.000000Z");
        assert_eq!(decide("me", &old, &mut observed, Instant::now()), Decision::Follow);
    }

    #[test]
    fn a_released_or_empty_lease_is_acquired_and_our_own_is_renewed() {
        let mut observed = None;
        let now = Instant::now();
        assert_eq!(decide("me", &record("", "2020-01-01T00:00:00Z"), &mut observed, now), Decision::Acquire);
        assert_eq!(decide("me", &LeaseSpec::default(), &mut observed, now), Decision::Acquire);
        assert_eq!(decide("me", &record("me", "2020-01-01T00:00:00Z"), &mut observed, now), Decision::Renew);
    }

    #[test]
    fn two_replicas_with_skewed_clocks_never_both_see_a_free_lease() {
        // Replica b's wall clock is an hour ahead; a renews every 2 s. b follows throughout.
        let start = Instant::now();
        let (mut seen_by_b, mut leaders) = (None, 0);
        for i in 0..30u64 {
            let lease = record("a", &format!("2030-01-01T00:{:02}:{:02}.000000Z", i * 2 / 60, i * 2 % 60));
            if decide("b", &lease, &mut seen_by_b, start + Duration::from_secs(i * 2)) != Decision::Follow {
                leaders += 1;
            }
        }
        assert_eq!(leaders, 0, "b never takes a Lease that a keeps renewing");
    }
}
