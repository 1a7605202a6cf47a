//! Serving a protocol on the overlay, fairly: one loop every daemon runs.
//!
//! How a request flows:
//! 1. The overlay hands the request over ([`ServeStream::next`]); the daemon's `lane_of` puts it
//!    in a lane (the node keeps lease operations apart from commands run in slivers).
//! 2. Admission: a principal (the caller's key) may have at most
//!    [`Fairness::per_principal`] requests admitted or waiting in one lane; past that it is
//!    refused at once as busy, so no principal can hold more than that share of a lane.
//! 3. The request waits for one of its lane's [`Fairness::lane_limit`] places, at most
//!    [`Fairness::admit_within`]; a request that waited that long is refused as busy.
//! 4. The handler runs; its reply goes back to the caller.
//!
//! The loop never waits for a place itself, so a full lane never delays another lane or
//! another principal's refusal. On stop it takes no more requests and gives those in flight
//! until the drain deadline; what is still running then is abandoned (its caller gets the
//! overlay's "no answer" error).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capability_schema::{PublicKey, Rejection, protocol::Reply};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::overlay::{Incoming, Protocol, ServeStream};

/// How long a stopping daemon gives the requests in flight before it abandons them.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// How a daemon shares its request handling among principals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fairness {
    /// Requests handled at once in each lane.
    pub lane_limit: usize,
    /// Requests one principal may have admitted or waiting in one lane.
    pub per_principal: usize,
    /// The longest a request waits for a place in its lane before it is refused as busy.
    pub admit_within: Duration,
}

impl Fairness {
    /// `lane_limit` places per lane; a principal may hold a quarter of them (at least one);
    /// a request waits at most 30 s for its place.
    pub fn with_limit(lane_limit: usize) -> Self {
        let lane_limit = lane_limit.max(1);
        Fairness {
            lane_limit,
            per_principal: (lane_limit / 4).max(1),
            admit_within: Duration::from_secs(30),
        }
    }
}

/// What a principal holds in each lane.
#[derive(Debug, Default)]
struct Holdings {
    counts: Mutex<HashMap<(PublicKey, usize), usize>>,
}

/// One admitted request of a principal; counted until dropped.
#[derive(Debug)]
struct Held {
    holdings: Arc<Holdings>,
    key: (PublicKey, usize),
}

impl Holdings {
    fn take(self: &Arc<Self>, peer: PublicKey, lane: usize, most: usize) -> Option<Held> {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = counts.entry((peer, lane)).or_default();
        if *count >= most {
            return None;
        }
        *count += 1;
        Some(Held {
            holdings: Arc::clone(self),
            key: (peer, lane),
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut counts = self
            .holdings
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// Serves `requests` until `stop` turns true (or the overlay closes the stream), then waits
/// for the requests in flight at most `drain` before it returns.
///
/// `lane_of` names the lane of a request (below `lanes`); `handler` answers one request of
/// a caller. See the module docs for admission.
pub async fn serve_protocol<P, H, Fut>(
    mut requests: ServeStream<P>,
    fairness: Fairness,
    lanes: usize,
    lane_of: fn(&P::Request) -> usize,
    handler: H,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) where
    P: Protocol,
    H: Fn(PublicKey, P::Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply<P::Response>> + Send + 'static,
{
    let handler = Arc::new(handler);
    let places: Vec<Arc<Semaphore>> = (0..lanes.max(1))
        .map(|_| Arc::new(Semaphore::new(fairness.lane_limit.max(1))))
        .collect();
    let holdings = Arc::new(Holdings::default());
    let mut tasks = JoinSet::new();
    loop {
        let incoming = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            next = requests.next() => match next { Some(i) => i, None => break },
        };
        let lane = lane_of(&incoming.request).min(places.len() - 1);
        let Some(held) = holdings.take(incoming.peer, lane, fairness.per_principal) else {
            let detail = format!(
                "busy: {} of your requests are in flight here, the most one principal may have",
                fairness.per_principal
            );
            tasks.spawn(refuse(incoming, detail));
            continue;
        };
        let (place, handler) = (Arc::clone(&places[lane]), Arc::clone(&handler));
        tasks.spawn(async move {
            let admitted = tokio::time::timeout(fairness.admit_within, place.acquire_owned());
            let Ok(Ok(permit)) = admitted.await else {
                let detail = format!(
                    "busy: no place to serve this request within {:?}",
                    fairness.admit_within
                );
                return refuse(incoming, detail).await;
            };
            let Incoming {
                peer,
                request,
                responder,
                ..
            } = incoming;
            let reply = handler(peer, request).await;
            drop((permit, held));
            if let Err(e) = responder.send(reply).await {
                tracing::debug!(error = %e, "answer not delivered");
            }
        });
    }
    let drained =
        tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            left = tasks.len(),
            "requests still in flight after the {drain:?} shutdown deadline: abandoned"
        );
        tasks.abort_all();
    }
}

async fn refuse<P: Protocol>(incoming: Incoming<P>, detail: String) {
    let reply = Err(Rejection::Unavailable { detail }.into());
    if let Err(e) = incoming.responder.send(reply).await {
        tracing::debug!(error = %e, "refusal not delivered");
    }
}
