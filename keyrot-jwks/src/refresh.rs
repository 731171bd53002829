//! The cached key set and how it is kept fresh: the background task, the single-flight
//! unknown-kid fetch, and the lifetimes that decide when a set expires and when it may no
//! longer be used at all.

use crate::error::{Document, JwksError};
use crate::http::{self, Limits, Response};
use arc_swap::ArcSwap;
use keyrot_core::metric_names::{REMOTE_JWKS_FETCHES, REMOTE_JWKS_STALE};
use keyrot_core::{ErrorChain, KeySet, Validation};
use reqwest::{Client, Url};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex as AsyncMutex, watch};
use tokio::task::JoinHandle;

/// The configured lifetimes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// Floor of the served lifetime, and the unknown-kid cooldown.
    pub(crate) min_refresh: Duration,
    /// Ceiling of the served lifetime.
    pub(crate) max_refresh: Duration,
    /// How long after expiry the last good set still serves when refreshes fail.
    pub(crate) max_stale: Duration,
}

/// The key set being served, immutable; replaced whole by every refresh.
#[derive(Debug)]
pub(crate) struct Cached {
    pub(crate) keys: KeySet,
    /// The validator for the next conditional request (none after `no-store`).
    pub(crate) etag: Option<String>,
    /// When the request that brought (or revalidated) the set was sent.
    pub(crate) fetched: Instant,
    /// The served lifetime, clamped.
    pub(crate) lifetime: Duration,
    /// After this the set is not used: verification fails closed.
    pub(crate) usable_until: Instant,
}

impl Cached {
    pub(crate) fn new(keys: KeySet, etag: Option<String>, fetched: Instant, lifetime: Duration, t: &Timing) -> Self {
        Cached {
            keys,
            etag,
            fetched,
            lifetime,
            usable_until: later(later(fetched, lifetime), t.max_stale),
        }
    }

    /// When the background task refreshes: three quarters into the lifetime, so the new
    /// set normally arrives before this one expires.
    fn refresh_at(&self) -> Instant {
        later(self.fetched, self.lifetime / 4 * 3)
    }

    /// When the served lifetime ends.
    fn expires(&self) -> Instant {
        later(self.fetched, self.lifetime)
    }
}

/// `at + d`, never overflowing: the builder caps every setting at
/// [`crate::MAX_DURATION_SETTING`], and a sum that still does not fit is lowered to
/// `at` plus that cap (or to `at`), so a time only ever comes earlier, never panics.
pub(crate) fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .or_else(|| at.checked_add(crate::MAX_DURATION_SETTING))
        .unwrap_or(at)
}

/// What a verifier and all its clones share.
pub(crate) struct Inner {
    pub(crate) url: Url,
    pub(crate) client: Client,
    pub(crate) validation: Validation,
    pub(crate) timing: Timing,
    pub(crate) limits: Limits,
    pub(crate) cached: ArcSwap<Cached>,
    /// One request to the issuer at a time.
    fetch_lock: AsyncMutex<()>,
    /// Single flight for unknown kids: when the last unknown-kid fetch started.
    kid_gate: AsyncMutex<Option<Instant>>,
    /// How many unknown-kid fetches have started.
    kid_fetches: AtomicU64,
    /// When the background task should refresh next; `None` stops it.
    schedule: watch::Sender<Option<Instant>>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// Counted in [`keyrot_core::metric_names::REMOTE_JWKS_STALE`]: refreshing failed and
    /// the set being served is past its lifetime.
    stale: AtomicBool,
}

impl Inner {
    /// The shared state, serving `first` until the first refresh, and the receiver the
    /// background task ([`Inner::spawn`]) follows.
    pub(crate) fn new(
        url: Url,
        client: Client,
        validation: Validation,
        timing: Timing,
        limits: Limits,
        first: Cached,
    ) -> (Arc<Self>, watch::Receiver<Option<Instant>>) {
        let (schedule, rx) = watch::channel(Some(first.refresh_at()));
        let inner = Arc::new(Inner {
            url,
            client,
            validation,
            timing,
            limits,
            cached: ArcSwap::from_pointee(first),
            fetch_lock: AsyncMutex::new(()),
            kid_gate: AsyncMutex::new(None),
            kid_fetches: AtomicU64::new(0),
            schedule,
            task: std::sync::Mutex::new(None),
            stale: AtomicBool::new(false),
        });
        (inner, rx)
    }

    /// Starts the background refresh task.
    pub(crate) fn spawn(self: &Arc<Self>, rx: watch::Receiver<Option<Instant>>) {
        let task = tokio::spawn(run(Arc::downgrade(self), rx));
        if let Ok(mut slot) = self.task.lock() {
            *slot = Some(task);
        }
    }

    /// Fetches the JWKS once (conditionally when an ETag is held) and installs the
    /// result, or keeps the current set and schedules a retry after `min_refresh`.
    pub(crate) async fn refresh(&self) -> Result<(), JwksError> {
        let _one = self.fetch_lock.lock().await;
        let result = self.fetch().await;
        let outcome = match &result {
            Ok(outcome) => {
                self.reschedule(self.cached.load().refresh_at());
                outcome
            }
            Err(e) => {
                tracing::warn!(url = %self.url, error = %ErrorChain(e), "JWKS refresh failed; serving the last good key set");
                self.reschedule(later(Instant::now(), self.timing.min_refresh));
                "failed"
            }
        };
        metrics::counter!(REMOTE_JWKS_FETCHES, "outcome" => outcome).increment(1);
        let cached = self.cached.load();
        self.set_stale(result.is_err() && Instant::now() >= cached.expires());
        result.map(|_| ())
    }

    /// Moves this verifier in or out of the count of stale remote key sets.
    fn set_stale(&self, stale: bool) {
        if self.stale.swap(stale, Ordering::AcqRel) != stale {
            let gauge = metrics::gauge!(REMOTE_JWKS_STALE);
            if stale {
                gauge.increment(1.0)
            } else {
                gauge.decrement(1.0)
            }
        }
    }

    /// Schedules the next background refresh, unless the task was stopped: a refresh that
    /// finishes after [`Inner::stop`] must not start the task again.
    fn reschedule(&self, at: Instant) {
        self.schedule.send_if_modified(|next| match next {
            Some(t) => {
                *t = at;
                true
            }
            None => false,
        });
    }

    /// Fetches and installs the set; the outcome is the metrics label (`updated` for a new
    /// body, `not_modified` for a `304`).
    async fn fetch(&self) -> Result<&'static str, JwksError> {
        let current = self.cached.load_full();
        let sent = Instant::now();
        let response = http::get(
            &self.client,
            &self.url,
            current.etag.as_deref(),
            self.limits,
            Document::Jwks,
        )
        .await?;
        let t = &self.timing;
        let outcome = match response {
            Response::NotModified { .. } => "not_modified",
            Response::Body { .. } => "updated",
        };
        let next = match response {
            Response::NotModified { cache } => {
                let etag = if cache.no_store { None } else { current.etag.clone() };
                let lifetime = cache.lifetime(t.min_refresh, t.max_refresh);
                Cached::new(current.keys.clone(), etag, sent, lifetime, t)
            }
            Response::Body { bytes, etag, cache } => {
                let keys = KeySet::from_jwks(&bytes, &self.validation).map_err(JwksError::KeySet)?;
                let etag = if cache.no_store { None } else { etag };
                let lifetime = cache.lifetime(t.min_refresh, t.max_refresh);
                if keys.is_empty() {
                    tracing::warn!(url = %self.url, "the JWKS holds no key keyrot can verify with");
                }
                Cached::new(keys, etag, sent, lifetime, t)
            }
        };
        self.cached.store(Arc::new(next));
        Ok(outcome)
    }

    /// For a token whose `kid` is not in the set: at most one fetch per `min_refresh`,
    /// shared by every request that meets an unknown kid while it runs. A request that
    /// arrives within the cooldown of the last such fetch does not wait: the answer is
    /// the set as it is. Returns whether `kid` is in the set afterwards.
    pub(crate) async fn refresh_for_unknown_kid(&self, kid: &str) -> bool {
        let arrived = self.kid_fetches.load(Ordering::Acquire);
        let mut gate = self.kid_gate.lock().await;
        if self.cached.load().keys.contains(kid) {
            return true;
        }
        if self.kid_fetches.load(Ordering::Acquire) != arrived {
            // A fetch started (and, under the gate, finished) after this request arrived.
            return false;
        }
        let now = Instant::now();
        if gate.is_some_and(|last| now < later(last, self.timing.min_refresh)) {
            return false;
        }
        *gate = Some(now);
        self.kid_fetches.fetch_add(1, Ordering::AcqRel);
        tracing::debug!(url = %self.url, "unknown kid: fetching the JWKS");
        let _ = self.refresh().await;
        self.cached.load().keys.contains(kid)
    }

    /// Stops the background task and waits for it.
    pub(crate) async fn stop(&self) {
        self.set_stale(false);
        let _ = self.schedule.send_replace(None);
        let task = self.task.lock().ok().and_then(|mut slot| slot.take());
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl Drop for Inner {
    /// A verifier dropped while stale leaves the count.
    fn drop(&mut self) {
        self.set_stale(false);
    }
}

/// The background task: sleeps until the scheduled refresh (or a new schedule), then
/// refreshes. It holds only a weak reference: when the last verifier is dropped, the
/// schedule's sender goes with it and the task ends.
async fn run(inner: Weak<Inner>, mut schedule: watch::Receiver<Option<Instant>>) {
    loop {
        let Some(at) = *schedule.borrow_and_update() else { break };
        tokio::select! {
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
            changed = schedule.changed() => {
                if changed.is_err() {
                    break;
                }
                continue;
            }
        }
        let Some(inner) = inner.upgrade() else { break };
        let _ = inner.refresh().await;
    }
}
