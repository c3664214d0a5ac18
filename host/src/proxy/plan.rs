//! A forward plan checked against the active configuration. The guest is untrusted: the
//! service must exist, the authority must be that service's, every header name and value must
//! be valid HTTP; hop-by-hop headers are the host's to set and are dropped from the plan. A
//! plan that fails any check is a 500 for that request (with a log line), never a forward.

use crate::request_record::Label;
use crate::runtime::component::policy_api::{ForwardPlan, HeaderEdits, Labels};
use keygate_policy::Config;
use std::sync::Arc;
use std::time::Duration;

/// A plan the host may carry out. Checked once, then only read: requests forwarded on a
/// decision the guest offered for reuse share it (`runtime::reuse`).
pub struct ValidPlan {
    pub service: String,
    pub uri: http::Uri,
    pub request: ValidEdits,
    pub response: ValidResponseEdits,
    pub first_byte_timeout: Duration,
    pub between_bytes_timeout: Duration,
    pub max_request_body: Option<u64>,
    pub request_id: String,
    pub labels: Labels,
    /// `labels` as the requests forwarded on this plan record them, made once.
    pub recorded: RecordedLabels,
}

/// A guest's labels as a request's record holds them: shared by every request forwarded on
/// the same plan (a reused decision's labels cost a reference count each, not a copy).
#[derive(Clone, Default)]
pub struct RecordedLabels {
    pub route: Option<Label>,
    pub service: Option<Label>,
    /// Username, else id.
    pub consumer: Option<Label>,
    pub key_lookup: Option<Label>,
    pub auth_ms: Option<u64>,
    pub rate_limit: Option<Label>,
}

impl RecordedLabels {
    pub fn of(labels: &Labels) -> Self {
        let label = |text: &Option<String>| text.as_deref().map(Label::from);
        Self {
            route: label(&labels.route),
            service: label(&labels.service),
            consumer: labels
                .consumer
                .as_ref()
                .and_then(|consumer| label(&consumer.username).or_else(|| label(&consumer.id))),
            key_lookup: label(&labels.key_lookup),
            auth_ms: labels.auth_call_ms,
            rate_limit: label(&labels.rate_limit),
        }
    }
}

/// Header edits with names and values already parsed.
pub struct ValidEdits {
    pub remove: Vec<http::HeaderName>,
    pub append: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Which of `append` hold the plan's request id as their whole value (bit `i`: the
    /// `i`th), where another request forwarded on the plan puts its own; `None` when the id
    /// also stands past the 64th, and the plan is never forwarded under another id.
    pub request_id_at: Option<u64>,
}

pub struct ValidResponseEdits {
    pub headers: ValidEdits,
    pub via: Option<http::HeaderValue>,
    pub server_if_absent: Option<http::HeaderValue>,
    pub upstream_latency_header: Option<http::HeaderName>,
    pub proxy_latency_header: Option<http::HeaderName>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("service {0:?} is not in the active configuration")]
    UnknownService(String),
    #[error("{scheme}://{authority} is not the origin of service {service:?}")]
    WrongOrigin {
        service: String,
        scheme: String,
        authority: String,
    },
    #[error("path {0:?} is not a valid origin-form request target")]
    Path(String),
    #[error("the path is not a valid origin-form request target: {0}")]
    InvalidPath(String),
    #[error("header name {0:?} is not valid")]
    HeaderName(String),
    #[error("the value of header {0} is not valid")]
    HeaderValue(String),
}

/// Check `plan` against `config`.
pub fn validate(plan: ForwardPlan, config: &Config) -> Result<ValidPlan, PlanError> {
    let service = config
        .services
        .iter()
        .find(|service| service.name == plan.service)
        .ok_or_else(|| PlanError::UnknownService(plan.service.clone()))?;
    if plan.scheme != service.url.scheme() || plan.authority != service.url.authority {
        return Err(PlanError::WrongOrigin {
            service: plan.service,
            scheme: plan.scheme,
            authority: plan.authority,
        });
    }
    if !plan.path_with_query.starts_with('/') {
        return Err(PlanError::Path(plan.path_with_query));
    }
    // The host answers with it (a 413 or 502 it makes for this request): a header value.
    if !is_header_value(plan.request_id.as_bytes()) {
        return Err(PlanError::HeaderValue("request id".to_string()));
    }
    // The plan's string becomes the path's bytes without a copy.
    let path = http::uri::PathAndQuery::from_maybe_shared(bytes::Bytes::from(plan.path_with_query))
        .map_err(|err| PlanError::InvalidPath(err.to_string()))?;
    let uri = http::Uri::builder()
        .scheme(if service.url.https {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        })
        .authority(service.url.authority.as_str())
        .path_and_query(path)
        .build()
        .map_err(|err| PlanError::InvalidPath(err.to_string()))?;
    let response = plan.response;
    let id = plan.request_id.as_bytes();
    Ok(ValidPlan {
        service: plan.service,
        uri,
        request: edits(plan.request_headers, id)?,
        response: ValidResponseEdits {
            headers: edits(response.headers, id)?,
            via: response.via.map(value_of("via")).transpose()?,
            server_if_absent: response
                .server_if_absent
                .map(value_of("server"))
                .transpose()?,
            upstream_latency_header: response
                .upstream_latency_header
                .map(|n| name(n.as_bytes()))
                .transpose()?,
            proxy_latency_header: response
                .proxy_latency_header
                .map(|n| name(n.as_bytes()))
                .transpose()?,
        },
        first_byte_timeout: Duration::from_millis(plan.timeouts.first_byte_ms),
        between_bytes_timeout: Duration::from_millis(plan.timeouts.between_bytes_ms),
        max_request_body: plan.max_request_body,
        request_id: plan.request_id,
        recorded: RecordedLabels::of(&plan.labels),
        labels: plan.labels,
    })
}

/// Whether `bytes` may be a header value as `http::HeaderValue` checks it (visible ASCII,
/// obs-text, spaces and tabs), without making one.
fn is_header_value(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|&byte| byte == b'\t' || (byte >= b' ' && byte != 0x7f))
}

/// `edits` parsed; `request_id`: the plan's, whose places among the appended values are noted.
fn edits(edits: HeaderEdits, request_id: &[u8]) -> Result<ValidEdits, PlanError> {
    let remove = edits
        .remove
        .iter()
        .map(|n| name(n.as_bytes()))
        .collect::<Result<_, _>>()?;
    // The lifted block is shared by the values sliced from it, not copied per value.
    let block = bytes::Bytes::from(edits.append);
    let mut append = Vec::with_capacity(EDITS_CAPACITY);
    for line in super::field_block::lines(&block) {
        let name = name(line.name)?;
        if is_hop_by_hop(&name) {
            tracing::debug!(header = %name, "dropped a hop-by-hop header from a forward plan");
            continue;
        }
        // Checked as `from_bytes` checks.
        let value = http::HeaderValue::from_maybe_shared(block.slice(line.value))
            .map_err(|_| PlanError::HeaderValue(name.to_string()))?;
        append.push((name, value));
    }
    let request_id_at = append
        .iter()
        .enumerate()
        .filter(|(_, (_, value))| value.as_bytes() == request_id)
        .try_fold(0u64, |bits, (at, _)| {
            u32::try_from(at)
                .ok()
                .and_then(|at| 1u64.checked_shl(at))
                .map(|bit| bits | bit)
        });
    Ok(ValidEdits {
        remove,
        append,
        request_id_at,
    })
}

impl ValidPlan {
    /// Whether another request can be forwarded on this plan under its own id: the plan's
    /// id stands only where [`Forwarding::appended`] replaces it.
    pub fn can_take_another_id(&self) -> bool {
        self.request.request_id_at.is_some() && self.response.headers.request_id_at.is_some()
    }
}

/// A checked plan as one request carries it out: the plan, shared with any other request
/// forwarded on the same decision, and this request's own id.
pub struct Forwarding {
    pub plan: Arc<ValidPlan>,
    /// This request's id: the plan's own, or a new one for a plan decided for another request.
    pub request_id: Label,
    /// `request_id` as a header value, when it is not the plan's own.
    new_id: Option<http::HeaderValue>,
}

impl Forwarding {
    /// The request the plan was decided for.
    pub fn decided(plan: ValidPlan) -> Self {
        Self {
            request_id: Label::from(plan.request_id.as_str()),
            plan: Arc::new(plan),
            new_id: None,
        }
    }

    /// Another request forwarded on `plan`, under an id of its own; `None` when the plan's id
    /// stands where it cannot be replaced.
    pub fn again(plan: &Arc<ValidPlan>) -> Option<Self> {
        if !plan.can_take_another_id() {
            return None;
        }
        let digits = crate::http_util::request_id_digits();
        let new_id = http::HeaderValue::from_bytes(&digits).ok()?;
        Some(Self {
            plan: Arc::clone(plan),
            request_id: Label::from(new_id.to_str().ok()?),
            new_id: Some(new_id),
        })
    }

    /// The headers `edits` (the plan's request or response edits) append, each with this
    /// request's id where the plan's stood.
    pub fn appended<'a>(
        &'a self,
        edits: &'a ValidEdits,
    ) -> impl Iterator<Item = (&'a http::HeaderName, &'a http::HeaderValue)> {
        let ids = edits.request_id_at.unwrap_or(0);
        edits
            .append
            .iter()
            .enumerate()
            .map(move |(at, (name, value))| match &self.new_id {
                Some(id) if at < 64 && ids & (1 << at) != 0 => (name, id),
                _ => (name, value),
            })
    }
}

/// `text` as a header name. A plan names mostly the same headers request after request (the
/// forwarded-for family, the consumer's, the latency ones): parsed names are remembered per
/// request thread, so a name seen before costs a lookup and a reference count instead of a
/// parse and an allocation.
pub(super) fn name(text: &[u8]) -> Result<http::HeaderName, PlanError> {
    let parse = || {
        if let Some(known) = KNOWN_NAMES
            .iter()
            .find(|known| known.as_str().as_bytes() == text)
        {
            return Ok(known.clone());
        }
        http::HeaderName::from_bytes(text)
            .map_err(|_| PlanError::HeaderName(String::from_utf8_lossy(text).into_owned()))
    };
    if text.len() > NAME_MEMO_MAX {
        return parse();
    }
    NAMES.with(|names| {
        let mut names = names.borrow_mut();
        if names.is_empty() {
            names.resize_with(NAME_SLOTS, || None);
        }
        // Two ways: a name is looked for in its slot and that slot's pair.
        let first = name_slot(text);
        for slot in [first, first ^ 1] {
            if let Some((known, name)) = &names[slot]
                && **known == *text
            {
                return Ok(name.clone());
            }
        }
        let name = parse()?;
        let slot = if names[first].is_none() {
            first
        } else {
            first ^ 1
        };
        names[slot] = Some((text.into(), name.clone()));
        Ok(name)
    })
}

/// Room for a plan's usual header lines (the forwarded-for family, the consumer's, the request
/// id), so the list is not regrown line by line.
const EDITS_CAPACITY: usize = 16;

/// The names keygate's guest (Kong's rules) puts in nearly every plan, as static names: a
/// request's copy of one is then a pointer, where a parsed name's is a reference count taken
/// and dropped (an atomic each way) per header per request.
static KNOWN_NAMES: [http::HeaderName; 14] = [
    http::HeaderName::from_static("x-forwarded-for"),
    http::HeaderName::from_static("x-forwarded-proto"),
    http::HeaderName::from_static("x-forwarded-host"),
    http::HeaderName::from_static("x-forwarded-port"),
    http::HeaderName::from_static("x-forwarded-path"),
    http::HeaderName::from_static("x-forwarded-prefix"),
    http::HeaderName::from_static("x-real-ip"),
    http::HeaderName::from_static("x-kong-request-id"),
    http::HeaderName::from_static("x-kong-upstream-latency"),
    http::HeaderName::from_static("x-kong-proxy-latency"),
    http::HeaderName::from_static("x-consumer-id"),
    http::HeaderName::from_static("x-consumer-username"),
    http::HeaderName::from_static("x-consumer-custom-id"),
    http::HeaderName::from_static("x-credential-identifier"),
];

/// Remembered header names: two-way, a later name taking an earlier one's slot (the guest may
/// name any header the client sent, so the memo must stay bounded).
const NAME_SLOTS: usize = 128;
const NAME_MEMO_MAX: usize = 64;

/// A slot of the memo: the text and the name parsed from it.
type NameSlot = Option<(Box<[u8]>, http::HeaderName)>;

thread_local! {
    static NAMES: std::cell::RefCell<Vec<NameSlot>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The name's slot, from its length and its first and last eight bytes: a plan's names share
/// prefixes (`x-forwarded-`), not ends, and hashing every byte cost more than the lookup it
/// saves. A collision only costs a parse.
fn name_slot(text: &[u8]) -> usize {
    let word = |bytes: &[u8]| {
        let mut word = [0u8; 8];
        word[..bytes.len()].copy_from_slice(bytes);
        u64::from_le_bytes(word)
    };
    let head = word(&text[..text.len().min(8)]);
    let tail = word(&text[text.len().saturating_sub(8)..]);
    let mixed =
        (head ^ tail.rotate_left(29) ^ text.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (mixed >> 57) as usize % NAME_SLOTS
}

fn value_of(header: &'static str) -> impl Fn(String) -> Result<http::HeaderValue, PlanError> {
    move |text| {
        http::HeaderValue::try_from(text).map_err(|_| PlanError::HeaderValue(header.to_string()))
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and `Upgrade`: the host's own business on each hop.
pub fn is_hop_by_hop(name: &http::HeaderName) -> bool {
    crate::http_util::is_hop_by_hop_name(name) || name == http::header::UPGRADE
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::component::policy_api::{ResponseEdits, Timeouts};

    fn config() -> Config {
        keygate_policy::Config::from_toml(
            r#"
[server]
listen = "127.0.0.1:0"
[[services]]
name = "api"
url = "http://127.0.0.1:9000/v1"
[[services.routes]]
paths = ["/api"]
"#,
        )
        .unwrap()
    }

    fn plan() -> ForwardPlan {
        ForwardPlan {
            service: "api".into(),
            scheme: "http".into(),
            authority: "127.0.0.1:9000".into(),
            path_with_query: "/v1/x?a=%20".into(),
            request_headers: HeaderEdits {
                remove: vec!["apikey".into()],
                append: b"host: 127.0.0.1:9000\r\n".to_vec(),
            },
            response: ResponseEdits {
                headers: HeaderEdits {
                    remove: vec![],
                    append: Vec::new(),
                },
                via: Some("1.1 keygate".into()),
                server_if_absent: None,
                upstream_latency_header: None,
                proxy_latency_header: None,
            },
            timeouts: Timeouts {
                connect_ms: 1000,
                first_byte_ms: 1000,
                between_bytes_ms: 1000,
            },
            max_request_body: None,
            request_id: "0".repeat(32),
            labels: Labels {
                route: None,
                service: None,
                consumer: None,
                key_lookup: None,
                auth_call_ms: None,
                rate_limit: None,
            },
        }
    }

    #[test]
    fn the_places_of_the_request_id_are_noted_for_a_request_forwarded_on_the_plan_again() {
        let id = "0".repeat(32);
        let mut decided = plan();
        decided.request_headers.append =
            format!("x-a: 1\r\nx-request-id: {id}\r\nx-b: id {id}\r\n").into_bytes();
        decided.response.headers.append = format!("x-request-id: {id}\r\n").into_bytes();
        let valid = validate(decided, &config()).unwrap();
        assert_eq!(valid.request.request_id_at, Some(0b010));
        assert_eq!(valid.response.headers.request_id_at, Some(0b1));

        let first = Forwarding::decided(valid);
        assert_eq!(*first.request_id, *id);
        let again = Forwarding::again(&first.plan).expect("replaceable");
        assert_ne!(*again.request_id, *id);
        let request: Vec<(&str, &str)> = again
            .appended(&again.plan.request)
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        let b = format!("id {id}");
        assert_eq!(
            request,
            [
                ("x-a", "1"),
                ("x-request-id", &*again.request_id),
                ("x-b", b.as_str())
            ]
        );
        // The decided request keeps the plan's own id.
        let own: Vec<&str> = first
            .appended(&first.plan.request)
            .map(|(_, v)| v.to_str().unwrap())
            .collect();
        assert_eq!(own, ["1", id.as_str(), b.as_str()]);

        // Past the 64th header the id cannot be marked, and the plan is not forwarded again.
        let mut long = plan();
        long.request_headers.append = (0..64)
            .map(|i| format!("x-{i}: {i}\r\n"))
            .chain([format!("x-request-id: {id}\r\n")])
            .collect::<String>()
            .into_bytes();
        let long = Arc::new(validate(long, &config()).unwrap());
        assert_eq!(long.request.request_id_at, None);
        assert!(Forwarding::again(&long).is_none());
    }

    #[test]
    fn remembered_names_are_the_names_asked_for_even_when_slots_are_shared() {
        // More names than slots: every lookup, first or repeated, evicting or not, must give
        // the name asked for.
        let texts: Vec<String> = (0..3 * NAME_SLOTS).map(|i| format!("x-name-{i}")).collect();
        for _ in 0..2 {
            for text in &texts {
                assert_eq!(name(text.as_bytes()).unwrap().as_str(), text);
            }
        }
    }

    #[test]
    fn the_request_id_check_accepts_what_a_header_value_accepts() {
        for byte in 0..=u8::MAX {
            assert_eq!(
                is_header_value(&[b'a', byte]),
                http::HeaderValue::from_bytes(&[b'a', byte]).is_ok(),
                "byte {byte:#x}"
            );
        }
    }

    #[test]
    fn a_plan_for_a_configured_service_is_accepted_verbatim() {
        let valid = validate(plan(), &config()).unwrap();
        assert_eq!(valid.uri.to_string(), "http://127.0.0.1:9000/v1/x?a=%20");
        assert_eq!(valid.request.append.len(), 1);
    }

    #[test]
    fn plans_that_leave_the_configuration_are_refused() {
        let config = config();
        let mut unknown = plan();
        unknown.service = "other".into();
        assert!(matches!(
            validate(unknown, &config),
            Err(PlanError::UnknownService(_))
        ));
        let mut elsewhere = plan();
        elsewhere.authority = "169.254.169.254".into();
        assert!(matches!(
            validate(elsewhere, &config),
            Err(PlanError::WrongOrigin { .. })
        ));
        let mut absolute = plan();
        absolute.path_with_query = "http://evil/".into();
        assert!(matches!(
            validate(absolute, &config),
            Err(PlanError::Path(_))
        ));
    }

    #[test]
    fn invalid_headers_are_refused_and_hop_by_hop_ones_dropped() {
        let config = config();
        let mut split = plan();
        split
            .request_headers
            .append
            .extend_from_slice(b"x-a: 1\rx-b: 2\r\n");
        assert!(matches!(
            validate(split, &config),
            Err(PlanError::HeaderValue(_))
        ));
        let mut bad_id = plan();
        bad_id.request_id = "0\r\nx-b: 2".into();
        assert!(matches!(
            validate(bad_id, &config),
            Err(PlanError::HeaderValue(_))
        ));
        let mut bad_name = plan();
        bad_name
            .request_headers
            .append
            .extend_from_slice(b"x a: 1\r\n");
        assert!(matches!(
            validate(bad_name, &config),
            Err(PlanError::HeaderName(_))
        ));
        let mut hop = plan();
        hop.request_headers
            .append
            .extend_from_slice(b"transfer-encoding: chunked\r\n");
        assert_eq!(validate(hop, &config).unwrap().request.append.len(), 1);
    }
}
