//! Calls into the guest: its `wasi:http` handler (the portable path), and its policy's
//! `decide` and `upstream-failed` (the fast path). Each takes an instance from the pool (or
//! makes one), and gives it back only when the call returned normally; whatever the guest
//! does (traps, loops, exhausts memory, never answers) the caller gets a well-formed outcome.

use super::component::policy_api::{Decision, FailureContext, Reply, RequestHead};
use super::component::{CompiledGuest, GuestInstance, Reuse};
use super::drive::{self, GuestError, Head};
use super::gateway::{Active, Gateway};
use super::pool::{Claim, Worker};
use super::state::MemoryLimitExceeded;
use crate::capabilities::key_cache::{KeyCache, Reads};
use crate::metrics::Metrics;
use crate::responses::{HostFailure, ResponseBody};
use bytes::Bytes;
use keygate_policy::internal_headers;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::oneshot;
use wasmtime::Trap;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

impl Gateway {
    /// An idle instance of `active`, or a store for a new one, ready for a request. When all
    /// `guest.max_instances` slots are taken, the request waits for whichever comes first: an
    /// instance given back (it keeps its slot) or a slot freed by a retired one.
    async fn worker(
        &self,
        active: &Active,
        key_cache: Arc<KeyCache>,
    ) -> Result<Worker, HostFailure> {
        let claim = active.pool.claim(&self.instances).await;
        let mut worker = match claim.map_err(|_| HostFailure::Overloaded)? {
            Claim::Idle(worker) => worker,
            Claim::Slot(slot) => Worker::new(self.new_store(active, key_cache), slot),
        };
        worker.store.data_mut().busy.restart();
        worker.store.set_epoch_deadline(1);
        Ok(worker)
    }

    /// Ask the policy what to do with a request. The instance is held only for the call.
    pub(super) async fn decide(
        &self,
        active: &Active,
        key_cache: Arc<KeyCache>,
        head: &RequestHead,
    ) -> Result<Decided, HostFailure> {
        match self
            .call_policy(active, key_cache, PolicyCall::Decide(head))
            .await?
        {
            PolicyAnswer::Decision(decided) => Ok(decided),
            PolicyAnswer::Reply(_) => unreachable!("decide answers with a decision"),
        }
    }

    /// Ask the policy how to answer a forwarded request whose origin failed.
    pub(super) async fn upstream_failed(
        &self,
        active: &Active,
        key_cache: Arc<KeyCache>,
        context: FailureContext,
    ) -> Result<Reply, HostFailure> {
        match self
            .call_policy(active, key_cache, PolicyCall::UpstreamFailed(&context))
            .await?
        {
            PolicyAnswer::Reply(reply) => Ok(reply),
            PolicyAnswer::Decision(_) => unreachable!("upstream-failed answers with a reply"),
        }
    }

    async fn call_policy(
        &self,
        active: &Active,
        key_cache: Arc<KeyCache>,
        call: PolicyCall<'_>,
    ) -> Result<PolicyAnswer, HostFailure> {
        let mut worker = self.worker(active, key_cache).await?;
        let waited = worker.store.data().busy.waited_flag();
        let outcome = drive::guarded(waited, async move {
            let instance = instance_of(&mut worker, &active.guest, &self.metrics).await?;
            let Some(policy) = &instance.policy else {
                return Err(GuestError::Call(wasmtime::Error::msg(
                    "the component does not export keygate:gateway/block-policy",
                )));
            };
            let answer = match call {
                PolicyCall::Decide(head) => {
                    worker.store.data_mut().watch_reads();
                    let (decision, reuse) = policy
                        .decide(&mut worker.store, head)
                        .await
                        .map_err(GuestError::Call)?;
                    let reads = worker.store.data().reads();
                    PolicyAnswer::Decision(Decided {
                        decision,
                        reuse: reuse
                            .filter(|_| reads.only_fresh)
                            .map(|reuse| (reuse, reads)),
                    })
                }
                PolicyCall::UpstreamFailed(context) => PolicyAnswer::Reply(
                    policy
                        .upstream_failed(&mut worker.store, context)
                        .await
                        .map_err(GuestError::Call)?,
                ),
            };
            worker.instance = Some(instance);
            active.pool.give_back(worker);
            Ok(answer)
        })
        .await;
        outcome.map_err(|failure| guest_failed(&self.metrics, failure))
    }

    pub(super) async fn run_handler<B>(
        &self,
        active: &Active,
        key_cache: Arc<KeyCache>,
        mut request: hyper::Request<B>,
        client: SocketAddr,
    ) -> Result<hyper::Response<ResponseBody>, HostFailure>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let headers = request.headers_mut();
        // wasi:http 0.2 cannot carry an upgraded connection: say so instead of proxying a
        // request whose origin would switch protocols under a gateway that cannot follow.
        if headers.contains_key(http::header::UPGRADE) {
            return Err(HostFailure::UpgradeUnsupported);
        }
        crate::http_util::remove_connection_tokens(headers, false);
        headers.remove(internal_headers::CLIENT_ADDR);
        headers.remove(internal_headers::LOCAL_PORT);
        if let Ok(ip) = crate::http_util::client_ip(client).parse() {
            headers.insert(internal_headers::CLIENT_ADDR, ip);
        }
        let mut worker = self.worker(active, key_cache).await?;
        let waited = worker.store.data().busy.waited_flag();
        // The listener the request came in on (`crate::server` says); the plain one otherwise.
        let inbound = request
            .extensions()
            .get::<crate::server::Inbound>()
            .copied();
        if let Some(inbound) = inbound {
            request
                .headers_mut()
                .insert(internal_headers::LOCAL_PORT, inbound.port.into());
        }
        let scheme = match inbound {
            Some(inbound) if inbound.https => Scheme::Https,
            _ => Scheme::Http,
        };
        let store = &mut worker.store;
        let (sender, receiver) = oneshot::channel();
        let incoming = store
            .data_mut()
            .http()
            .new_incoming_request(scheme, request)
            .map_err(|err| HostFailure::BadRequest(err.to_string()))?;
        let outparam = store
            .data_mut()
            .http()
            .new_response_outparam(sender)
            .map_err(|err| HostFailure::Internal(err.to_string()))?;
        let guest = Arc::clone(&active.guest);
        let pool = Arc::clone(&active.pool);
        let metrics = Arc::clone(&self.metrics);
        // The guest keeps running after it hands over the response head: it streams the body.
        // Only when it returns normally does its instance go back to the pool.
        let call: drive::GuestCall = Box::pin(drive::guarded(waited, async move {
            let instance = instance_of(&mut worker, &guest, &metrics).await?;
            instance
                .proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut worker.store, incoming, outparam)
                .await
                .map_err(GuestError::Call)?;
            worker.instance = Some(instance);
            pool.give_back(worker);
            Ok(())
        }));
        let metrics = Arc::clone(&self.metrics);
        let on_end = move |outcome| {
            if let Err(failure) = outcome {
                // The client already has the guest's response head: no answer of the host's
                // logs this one, so its one line is logged here.
                let failure = guest_failed(&metrics, failure);
                tracing::warn!("{} (while streaming the response body)", failure.describe());
            }
        };
        match drive::until_head(call, receiver, on_end).await {
            Head::Response(response) => Ok(response),
            Head::ErrorCode(code) => Err(HostFailure::GuestFailed(format!(
                "error code instead of a response: {}",
                one_line(&format!("{code:?}"))
            ))),
            Head::Nothing(Ok(())) => Err(HostFailure::GuestFailed(
                "returned without sending a response".into(),
            )),
            Head::Nothing(Err(failure)) => Err(guest_failed(&self.metrics, failure)),
        }
    }
}

/// What the policy decided about a request.
pub(super) struct Decided {
    pub decision: Decision,
    /// The guest's offer to have the decision reused, with what its call read from the key
    /// cache; only when every read was of a fresh verdict.
    pub reuse: Option<(Reuse, Reads)>,
}

/// The policy's two functions, as one call shape.
enum PolicyCall<'a> {
    Decide(&'a RequestHead),
    UpstreamFailed(&'a FailureContext),
}

/// Moved once per call; boxing the larger variant would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum PolicyAnswer {
    Decision(Decided),
    Reply(Reply),
}

/// The worker's instance, made now if it has none yet.
async fn instance_of(
    worker: &mut Worker,
    guest: &CompiledGuest,
    metrics: &Metrics,
) -> Result<GuestInstance, GuestError> {
    match worker.instance.take() {
        Some(instance) => Ok(instance),
        None => {
            metrics.guest_instance_created();
            guest
                .instantiate(&mut worker.store)
                .await
                .map_err(GuestError::Instantiate)
        }
    }
}

/// Count a guest call that did not return normally and log its full error (a wasm backtrace
/// of hundreds of lines) at debug level only; the answer made of the returned failure logs the
/// one warning line with the reason and the request id (`HostFailure::into_response`).
fn guest_failed(metrics: &Metrics, failure: GuestError) -> HostFailure {
    match failure {
        GuestError::Instantiate(err) => {
            metrics.guest_failure("instantiate");
            tracing::error!(
                "could not instantiate the guest: {}",
                one_line(&err.root_cause().to_string())
            );
            tracing::debug!("instantiating the guest failed: {err:?}");
            HostFailure::Overloaded
        }
        GuestError::Call(err) => {
            let reason = if err.is::<MemoryLimitExceeded>() {
                "memory_limit"
            } else {
                match err.downcast_ref::<Trap>() {
                    Some(Trap::Interrupt) => "busy_timeout",
                    _ => "trap",
                }
            };
            metrics.guest_failure(reason);
            tracing::debug!(reason, "guest call failed: {err:?}");
            HostFailure::GuestFailed(format!(
                "{reason}: {}",
                one_line(&err.root_cause().to_string())
            ))
        }
        GuestError::Panic => {
            metrics.guest_failure("panic");
            HostFailure::GuestFailed("panic: a host function panicked during the guest call".into())
        }
    }
}

/// At most [`ONE_LINE`] characters of `text` on one line: what a log line quotes of an error
/// (a root cause is wasmtime's words, but a guest's could quote what it was sent).
fn one_line(text: &str) -> String {
    let mut line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(ONE_LINE)
        .collect();
    if text.chars().nth(ONE_LINE).is_some() {
        line.push('…');
    }
    line
}

const ONE_LINE: usize = 160;
