//! What an answer is counted and logged under: the guest's labels (the fast path's WIT
//! `labels`, the portable path's `keygate-labels` annotation) and what the host saw (who
//! answered, the origin's latency), completing the request's record.

use super::component::policy_api::Labels;
use crate::proxy::plan::RecordedLabels;
use crate::request_record::{Label, RequestRecord, Source};
use keygate_policy::annotation::Annotation;
use keygate_policy::internal_headers;
use std::time::Instant;

/// What an answer is counted and logged under: the guest's labels, and what the host saw.
#[derive(Default)]
pub(super) struct AnswerLabels {
    pub(super) route: Option<Label>,
    pub(super) service: Option<Label>,
    /// Username, else id.
    pub(super) consumer: Option<Label>,
    pub(super) key_lookup: Option<Label>,
    pub(super) auth_ms: Option<u64>,
    pub(super) rate_limit: Option<Label>,
    pub(super) request_id: Option<Label>,
    /// Set when the origin's response is the answer.
    pub(super) from_origin: bool,
    /// The gateway's own time before forwarding (forwarded requests).
    pub(super) gateway: Option<std::time::Duration>,
    /// Sending to the origin until its response head.
    pub(super) upstream: Option<std::time::Duration>,
    /// The key's fingerprint prefix.
    pub(super) key: Option<String>,
}

impl AnswerLabels {
    pub(super) fn of(labels: &Labels) -> Self {
        Self::recorded(&RecordedLabels::of(labels))
    }

    /// A plan's labels, shared with the plan.
    pub(super) fn recorded(labels: &RecordedLabels) -> Self {
        Self {
            route: labels.route.clone(),
            service: labels.service.clone(),
            consumer: labels.consumer.clone(),
            key_lookup: labels.key_lookup.clone(),
            auth_ms: labels.auth_ms,
            rate_limit: labels.rate_limit.clone(),
            ..Self::default()
        }
    }

    /// `record` (started from the request's head) completed with what is known once the
    /// response head is ready; the body's bytes and the total come when it ends.
    pub(super) fn complete<B>(
        self,
        mut record: RequestRecord,
        response: &hyper::Response<B>,
        started: Instant,
    ) -> RequestRecord {
        record.route = self.route;
        record.service = self.service;
        record.consumer = self.consumer;
        record.key_lookup = self.key_lookup;
        record.auth_ms = self.auth_ms;
        record.request_id = self.request_id.or_else(|| {
            ["x-kong-request-id", "x-request-id"]
                .iter()
                .find_map(|name| {
                    response
                        .headers()
                        .get(*name)
                        .and_then(|value| value.to_str().ok())
                        .map(Label::from)
                })
        });
        record.source = if self.from_origin {
            Source::Origin
        } else {
            Source::Gateway
        };
        record.upstream = self.upstream;
        record.gateway = self.gateway.unwrap_or_else(|| started.elapsed());
        record.key = self.key;
        record
    }
}

/// The `keygate-labels` annotation of a guest's answer (the guest sends one), removed from it.
pub(super) fn take_annotation(headers: &mut http::HeaderMap) -> Annotation {
    headers
        .remove(internal_headers::LABELS)
        .and_then(|value| Annotation::from_header(value.as_bytes()))
        .unwrap_or_default()
}
