//! `[[upstreams]]`: which target a request to an upstream-backed service goes to.
//!
//! Kong's default algorithm, weighted round-robin, done the smooth way (nginx's): over any
//! window of `sum(weights)` picks each target gets its weight's share, interleaved rather than
//! in runs. A weight of 0 drains a target. Passive health: a target that refuses a connection
//! or does not accept one within `connect_timeout` is skipped for the upstream's `down_for`,
//! then offered traffic again (the next failure skips it again); when every target is down the
//! request gets Kong's 503 at once instead of waiting on a dead address.

use crate::metrics::Metrics;
use keygate_policy::Config;
use keygate_policy::upstream::Upstream;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The balancers of one configuration, by upstream name (lower case, as hosts compare).
#[derive(Default)]
pub struct Balancers {
    by_name: HashMap<String, Arc<Balancer>>,
}

impl Balancers {
    /// Balancers for `config`'s upstreams, keeping the state (rotation, targets marked down)
    /// of `previous` ones whose definition did not change.
    pub fn for_config(config: &Config, previous: &Balancers, metrics: &Metrics) -> Self {
        let by_name = config
            .upstreams
            .iter()
            .map(|upstream| {
                let name = upstream.name.to_ascii_lowercase();
                let balancer = match previous.by_name.get(&name) {
                    Some(kept) if kept.definition == *upstream => Arc::clone(kept),
                    _ => Arc::new(Balancer::new(upstream, metrics)),
                };
                (name, balancer)
            })
            .collect();
        Self { by_name }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Balancer>> {
        self.by_name.values()
    }

    /// The balancer of the upstream a service URL's `host` names, if one does.
    pub fn get(&self, host: &str) -> Option<&Arc<Balancer>> {
        if self.by_name.is_empty() {
            return None;
        }
        self.by_name.get(&host.to_ascii_lowercase())
    }
}

pub struct Balancer {
    definition: Upstream,
    targets: Vec<TargetState>,
    rotation: Mutex<Rotation>,
    down_for: Duration,
}

struct TargetState {
    /// `host:port`.
    address: String,
    weight: i64,
    requests: Counter,
    failures: Counter,
    /// 1 while marked down.
    down: Gauge,
}

struct Rotation {
    /// Smooth weighted round-robin's running weights.
    current: Vec<i64>,
    /// Until when each target is skipped.
    down_until: Vec<Option<Instant>>,
}

/// A target chosen for one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick(usize);

impl Balancer {
    fn new(upstream: &Upstream, metrics: &Metrics) -> Self {
        let targets: Vec<TargetState> = upstream
            .targets
            .iter()
            .map(|target| {
                let address = target.address().unwrap_or_else(|_| target.target.clone());
                let counters = metrics.upstream_target(&upstream.name, &address);
                TargetState {
                    weight: i64::from(target.weight),
                    requests: counters.requests,
                    failures: counters.failures,
                    down: counters.down,
                    address,
                }
            })
            .collect();
        Self {
            rotation: Mutex::new(Rotation {
                current: vec![0; targets.len()],
                down_until: vec![None; targets.len()],
            }),
            targets,
            down_for: upstream.down_for.get(),
            definition: upstream.clone(),
        }
    }

    pub fn name(&self) -> &str {
        &self.definition.name
    }

    /// The next target, skipping drained ones, ones marked down and `tried` ones; `None` when
    /// none is left.
    pub fn pick(&self, tried: &[Pick]) -> Option<Pick> {
        let now = Instant::now();
        let mut rotation = self.rotation.lock().unwrap_or_else(|p| p.into_inner());
        let mut total = 0;
        let mut best: Option<usize> = None;
        for (i, target) in self.targets.iter().enumerate() {
            if let Some(until) = rotation.down_until[i] {
                if until > now {
                    continue;
                }
                rotation.down_until[i] = None;
                target.down.set(0);
            }
            if target.weight == 0 || tried.contains(&Pick(i)) {
                continue;
            }
            rotation.current[i] += target.weight;
            total += target.weight;
            if best.is_none_or(|b| rotation.current[i] > rotation.current[b]) {
                best = Some(i);
            }
        }
        let chosen = best?;
        rotation.current[chosen] -= total;
        self.targets[chosen].requests.inc();
        Some(Pick(chosen))
    }

    /// `host:port` of a pick.
    pub fn address(&self, pick: Pick) -> &str {
        &self.targets[pick.0].address
    }

    /// A pick could not be connected to: skip it for `down_for`.
    pub fn failed(&self, pick: Pick) {
        let target = &self.targets[pick.0];
        target.failures.inc();
        let mut rotation = self.rotation.lock().unwrap_or_else(|p| p.into_inner());
        if rotation.down_until[pick.0].is_none() {
            tracing::warn!(
                upstream = %self.definition.name,
                target = %target.address,
                "target refused or timed out a connection; skipped for {:?}",
                self.down_for
            );
        }
        rotation.down_until[pick.0] = Some(Instant::now() + self.down_for);
        target.down.set(1);
    }

    /// How many targets a request may try (each at most once).
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Each target: address and whether it is marked down now (for status and Kong's health
    /// metric).
    pub fn health(&self) -> Vec<(String, bool)> {
        let now = Instant::now();
        let rotation = self.rotation.lock().unwrap_or_else(|p| p.into_inner());
        self.targets
            .iter()
            .zip(&rotation.down_until)
            .map(|(target, until)| (target.address.clone(), until.is_some_and(|u| u > now)))
            .collect()
    }
}

/// Why a balanced request got no response.
#[derive(Debug)]
pub enum BalancedError<E> {
    /// Every target is drained or marked down: Kong's 503 "failure to get a peer from the
    /// ring-balancer", at once.
    NoPeer,
    /// The last attempt's failure.
    Failed(E),
}

/// Send `request` to a target of `balancer` with `send_one`, and when a target cannot be
/// connected to (`refused` says which errors mean that) and none of the request was sent,
/// to the next one: each target at most once.
pub async fn send<B, R, E, F, Fut>(
    balancer: &Balancer,
    request: http::Request<B>,
    refused: impl Fn(&E) -> bool,
    mut send_one: F,
) -> Result<R, BalancedError<E>>
where
    B: http_body::Body + Unpin,
    F: FnMut(http::Request<Recoverable<B>>) -> Fut,
    Fut: Future<Output = Result<R, E>>,
{
    let (parts, body) = request.into_parts();
    let mut body = Some(body);
    let mut tried = Vec::new();
    let mut last = None;
    while let Some(pick) = balancer.pick(&tried) {
        tried.push(pick);
        let Some(this_body) = body.take() else { break };
        let mut uri = http::uri::Parts::from(parts.uri.clone());
        uri.authority = balancer.address(pick).parse().ok();
        let mut attempt = http::Request::new(());
        *attempt.method_mut() = parts.method.clone();
        *attempt.version_mut() = parts.version;
        *attempt.headers_mut() = parts.headers.clone();
        if let Ok(uri) = http::Uri::from_parts(uri) {
            *attempt.uri_mut() = uri;
        }
        let (recoverable, slot) = Recoverable::new(this_body);
        match send_one(attempt.map(|()| recoverable)).await {
            Ok(response) => return Ok(response),
            Err(err) if refused(&err) => {
                balancer.failed(pick);
                body = slot.take_back();
                if body.is_none() {
                    return Err(BalancedError::Failed(err));
                }
                last = Some(err);
            }
            Err(err) => return Err(BalancedError::Failed(err)),
        }
    }
    Err(last.map_or(BalancedError::NoPeer, BalancedError::Failed))
}

/// A request body that can be taken back when the connection it was meant for never opened:
/// the client that fails to connect drops the request, not the body in the shared slot.
pub struct Recoverable<B> {
    slot: Arc<RecoverableSlot<B>>,
}

pub struct RecoverableSlot<B> {
    body: Mutex<Option<B>>,
    started: std::sync::atomic::AtomicBool,
}

impl<B> Recoverable<B> {
    fn new(body: B) -> (Self, Arc<RecoverableSlot<B>>) {
        let slot = Arc::new(RecoverableSlot {
            body: Mutex::new(Some(body)),
            started: std::sync::atomic::AtomicBool::new(false),
        });
        (
            Self {
                slot: Arc::clone(&slot),
            },
            slot,
        )
    }
}

impl<B> RecoverableSlot<B> {
    /// The body, if nothing of it was read yet.
    fn take_back(&self) -> Option<B> {
        if self.started.load(std::sync::atomic::Ordering::SeqCst) {
            return None;
        }
        self.body.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for Recoverable<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        self.slot
            .started
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let mut body = self.slot.body.lock().unwrap_or_else(|p| p.into_inner());
        match body.as_mut() {
            Some(body) => std::pin::Pin::new(body).poll_frame(cx),
            None => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        let body = self.slot.body.lock().unwrap_or_else(|p| p.into_inner());
        body.as_ref().is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let body = self.slot.body.lock().unwrap_or_else(|p| p.into_inner());
        body.as_ref()
            .map(http_body::Body::size_hint)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate_policy::upstream::Target;

    fn balancer(weights: &[u32]) -> Balancer {
        let upstream = Upstream {
            name: "u".into(),
            targets: weights
                .iter()
                .enumerate()
                .map(|(i, &weight)| Target {
                    target: format!("t{i}:80"),
                    weight,
                })
                .collect(),
            algorithm: "round-robin".into(),
            down_for: keygate_policy::Duration::from_secs(10),
        };
        Balancer::new(&upstream, &Metrics::default())
    }

    fn picks(balancer: &Balancer, n: usize) -> Vec<usize> {
        (0..n).map(|_| balancer.pick(&[]).unwrap().0).collect()
    }

    #[test]
    fn weights_share_the_traffic_smoothly_and_zero_drains() {
        let b = balancer(&[5, 1, 1, 0]);
        let picks = picks(&b, 14);
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]);
        assert!(!picks.contains(&3), "weight 0 is drained");
    }

    #[test]
    fn a_failed_target_is_skipped_then_tried_again() {
        let b = balancer(&[1, 1]);
        let first = b.pick(&[]).unwrap();
        b.failed(first);
        assert!(picks(&b, 4).iter().all(|&i| i != first.0));
        assert_eq!(b.health().iter().filter(|(_, down)| *down).count(), 1);
        // A retry of one request never gets the same target twice.
        let other = Pick(1 - first.0);
        assert_eq!(b.pick(&[other]), None, "the other is down, this one tried");
        b.rotation.lock().unwrap().down_until[first.0] = Some(Instant::now());
        assert!(picks(&b, 4).contains(&first.0), "back after down_for");
    }
}
