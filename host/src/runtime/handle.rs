//! The entry every client request takes. With a component that exports
//! `keygate:gateway/block-policy` (and `[guest] entry = "auto"`), the guest decides from the head
//! and the host forwards natively (`crate::proxy`); otherwise the request runs through the
//! guest's `wasi:http` handler.

use super::answer::{AnswerLabels, take_annotation};
use super::component::policy_api::{Decision, UpstreamFailure};
use super::gateway::{Active, Gateway};
use super::reuse;
use crate::metrics::RateLimitOutcome;
use crate::observe::Observed;
use crate::proxy;
use crate::proxy::forward::ForwardError;
use crate::proxy::plan::Forwarding;
use crate::request_record::Label;
use crate::responses::{ErrorContext, HostFailure, ResponseBody};
use keygate_policy::internal_headers;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

impl Gateway {
    /// Answer one client request.
    pub async fn handle(
        &self,
        request: hyper::Request<hyper::body::Incoming>,
        client: SocketAddr,
    ) -> hyper::Response<ResponseBody> {
        self.metrics.request_started();
        let started = Instant::now();
        let record = crate::observe::start_record(&request, client);
        let active = self.active();
        // Kept for an answer the host may have to make itself (cheap: shared bytes).
        let asked = ErrorContext {
            method: request.method().clone(),
            accept: request.headers().get(http::header::ACCEPT).cloned(),
            content_type: request.headers().get(http::header::CONTENT_TYPE).cloned(),
        };
        let outcome = if active.fast_path {
            self.fast_path(&active, request, client, started, &asked)
                .await
        } else {
            // Boxed, here and below: its future is several KiB, which every future holding it
            // inline would be too (see `fast_path`).
            let portable = Box::pin(self.portable_path(&active, request, client));
            portable.await
        };
        self.metrics.request_done();
        let (mut response, labels) = match outcome {
            Ok(answer) => answer,
            Err(failure) => (
                failure.into_response(&asked, &active.config.compat, started),
                AnswerLabels::default(),
            ),
        };
        // The key the guest found, for the access log (its fingerprint's first characters).
        let mut labels = labels;
        labels.key = crate::http_util::take_internal_headers(
            response.headers_mut(),
            Some(internal_headers::KEY),
        )
        .and_then(|value| value.to_str().ok().map(str::to_string));
        let rate_limit = labels
            .rate_limit
            .as_deref()
            .and_then(RateLimitOutcome::parse);
        let record = labels.complete(record, &response, started);
        let route = record.route.as_deref().unwrap_or("(none)");
        self.metrics.request(route, response.status().as_u16());
        if let Some(outcome) = rate_limit {
            self.metrics.rate_limit(route, outcome);
        }
        Observed::wrap(
            response,
            record,
            started,
            Arc::clone(&self.observer),
            Arc::clone(&active.config),
        )
    }

    /// The guest's `wasi:http` handler answers; the route label comes back in a header.
    async fn portable_path(
        &self,
        active: &Active,
        request: hyper::Request<hyper::body::Incoming>,
        client: SocketAddr,
    ) -> Result<(hyper::Response<ResponseBody>, AnswerLabels), HostFailure> {
        let response = self
            .run_handler(active, Arc::clone(&self.key_cache), request, client)
            .await?;
        let (mut parts, body) = response.into_parts();
        let annotation = take_annotation(&mut parts.headers);
        let ms = |ms: Option<u64>| ms.map(std::time::Duration::from_millis);
        let labels = AnswerLabels {
            route: annotation.route.map(Label::from),
            service: annotation.service.map(Label::from),
            consumer: annotation.consumer.map(Label::from),
            key_lookup: annotation.key_lookup.map(Label::from),
            auth_ms: annotation.auth_ms,
            rate_limit: annotation.rate_limit.map(Label::from),
            request_id: annotation.request_id.map(Label::from),
            from_origin: annotation.from_origin,
            gateway: ms(annotation.gateway_ms),
            upstream: ms(annotation.upstream_ms),
            key: None,
        };
        Ok((hyper::Response::from_parts(parts, body), labels))
    }

    /// The guest decides from the head (or decided an identical request before, and said the
    /// decision may be reused); the host forwards or answers.
    async fn fast_path(
        &self,
        active: &Active,
        request: hyper::Request<hyper::body::Incoming>,
        client: SocketAddr,
        started: Instant,
        asked: &ErrorContext,
    ) -> Result<(hyper::Response<ResponseBody>, AnswerLabels), HostFailure> {
        let view = proxy::head::view(&request, client, self.listen_port)?;
        let reuse_decisions = active.config.guest.reuse_decisions;
        let place = match reuse::reused(
            active.reuse_generation,
            reuse_decisions,
            &view,
            &self.key_cache,
            started,
        ) {
            reuse::Lookup::Decide(place) => place,
            reuse::Lookup::Reused(forwarding) => {
                let labels = &forwarding.plan.labels;
                self.metrics
                    .decision_reused(labels.key_lookup.as_deref() == Some("fresh"));
                let forward = Box::pin(self.forward(active, forwarding, request, started, asked));
                return forward.await;
            }
        };
        let (head, client_ip) = (view.lower(), view.client);
        // Boxed, as the forward below: inline, these two grew the future of every answer to
        // 27 KiB, which is moved into hyper's box per request (~6 k instructions of memcpy); an
        // allocation each is cheaper. Each box is made in a statement of its own: a temporary
        // of the statement that awaits keeps its room in this future (4.5 KiB, not 1.7).
        let decide = Box::pin(self.decide(active, Arc::clone(&self.key_cache), &head));
        let decided = decide.await?;
        match decided.decision {
            Decision::Respond(reply) => {
                let labels = AnswerLabels::of(&reply.labels);
                Ok((proxy::reply::to_response(reply)?, labels))
            }
            Decision::UseHandler => {
                let portable = Box::pin(self.portable_path(active, request, client));
                portable.await
            }
            Decision::Forward(plan) => {
                // Logged once, with the request id, where the 500 is made.
                let plan = proxy::plan::validate(plan, &active.config).map_err(|err| {
                    HostFailure::Internal(format!("refused the guest's forward plan: {err}"))
                })?;
                let forwarding = Forwarding::decided(plan);
                if let Some(offer) = decided.reuse {
                    reuse::keep(
                        active.reuse_generation,
                        reuse_decisions,
                        place,
                        (head, client_ip),
                        &forwarding.plan,
                        offer,
                        started,
                    );
                }
                let forward = Box::pin(self.forward(active, forwarding, request, started, asked));
                forward.await
            }
        }
    }

    /// Carry out a checked plan: forward to the service's origin, and answer a failure the
    /// way the guest words it.
    async fn forward(
        &self,
        active: &Active,
        forwarding: Forwarding,
        request: hyper::Request<hyper::body::Incoming>,
        started: Instant,
        asked: &ErrorContext,
    ) -> Result<(hyper::Response<ResponseBody>, AnswerLabels), HostFailure> {
        let plan = &*forwarding.plan;
        let mut labels = AnswerLabels::recorded(&plan.recorded);
        labels.request_id = Some(forwarding.request_id.clone());
        let balancer = active
            .config
            .services
            .iter()
            .find(|service| service.name == plan.service)
            .and_then(|service| active.balancers.get(&service.url.host))
            .map(|balancer| &**balancer);
        let tls = if plan.uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
            active.tls.service(&plan.service)
        } else {
            None
        };
        let sending = started.elapsed();
        let forwarded = self
            .upstream
            .forward(&forwarding, request, started, &self.metrics, balancer, tls)
            .await;
        labels.gateway = Some(sending);
        labels.upstream = Some(started.elapsed().saturating_sub(sending));
        match forwarded {
            Ok(response) => {
                labels.from_origin = true;
                Ok((response, labels))
            }
            // Answered like the guest's own 413 (route labels, the plan's request id).
            Err(ForwardError::BodyTooLarge) => Ok((
                HostFailure::BodyTooLarge.into_response_as(
                    forwarding.request_id.to_string(),
                    asked,
                    &active.config.compat,
                    started,
                ),
                labels,
            )),
            Err(ForwardError::NoPeer) => Err(HostFailure::NoPeer),
            Err(ForwardError::OriginDown(failure)) => Err(HostFailure::OriginDown {
                timed_out: matches!(
                    failure,
                    UpstreamFailure::ConnectTimeout | UpstreamFailure::ResponseTimeout
                ),
            }),
            Err(ForwardError::Upstream(failure)) => {
                let context = proxy::forward::failure_context(forwarding, failure, asked, started);
                // Boxed: rare, and its guest call would grow every answer's future.
                let failed =
                    Box::pin(self.upstream_failed(active, Arc::clone(&self.key_cache), context));
                let reply = failed.await?;
                Ok((proxy::reply::to_response(reply)?, labels))
            }
        }
    }
}
