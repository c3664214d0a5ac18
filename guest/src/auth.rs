//! Is this key valid, and whose is it? Static consumers first, then the host's key cache, then
//! the provider's auth API, whose verdicts go back into the cache.

use crate::bindings::keygate::gateway::key_cache::{self, Consumer, Lookup, Verdict};
use crate::config::Policy;
use crate::credentials::Credential;
use crate::errors::GatewayError;
use crate::outbound;
use crate::percent::percent_encode;
use core::sync::atomic::{AtomicU64, Ordering};
use keygate_policy::KeyAuth;
use keygate_policy::errors::{AUTH_UNAVAILABLE, DUPLICATE_KEY, INVALID_KEY, NO_KEY};
use keygate_policy::fingerprint::fingerprint;
use keygate_policy::{GuestAuthApi, GuestConsumer};
use wasip2::clocks::monotonic_clock;
use wasip2::http::types::{ErrorCode, Fields, OutgoingRequest, Scheme};

/// Who a forwarded request is from: a consumer whose key was valid, or the anonymous
/// consumer (`key_auth.anonymous`) after a failed authentication.
pub struct Identity {
    pub consumer: Consumer,
    pub anonymous: bool,
}

impl Identity {
    /// Kong's `set_consumer(anonymous_consumer)`: no credential.
    pub fn anonymous(consumer: &GuestConsumer) -> Self {
        Self {
            consumer: Consumer {
                id: consumer.id.clone(),
                username: consumer.username.clone(),
                custom_id: consumer.custom_id.clone(),
                credential_id: None,
            },
            anonymous: true,
        }
    }

    fn of(consumer: Consumer) -> Self {
        Self {
            consumer,
            anonymous: false,
        }
    }
}

/// Hex characters of a key's fingerprint the access log shows: 48 bits tell keys apart in a
/// log, and reveal nothing usable of the key.
const KEY_FINGERPRINT_PREFIX: usize = 12;

/// The auth API's answer is at most this large; anything bigger is not a verdict.
const AUTH_BODY_LIMIT: usize = 64 * 1024;

/// Where a verdict came from, for the host's metrics and access log.
pub struct AuthTrace {
    /// `static`, `fresh`, `stale`, `miss` (the auth API was asked), `none` (no key to look up).
    pub key_lookup: &'static str,
    pub auth_call_ms: Option<u64>,
    /// The first characters of the key's fingerprint, for the host's access log.
    pub key_fingerprint: Option<String>,
}

impl Default for AuthTrace {
    fn default() -> Self {
        Self {
            key_lookup: "none",
            auth_call_ms: None,
            key_fingerprint: None,
        }
    }
}

pub fn authenticate(
    policy: &Policy,
    key_auth: &KeyAuth,
    credential: Credential<'_>,
    trace: &mut AuthTrace,
) -> Result<Identity, GatewayError> {
    let key = match credential {
        Credential::Found { key, .. } => key,
        Credential::Missing | Credential::Empty { .. } => {
            return Err(unauthorized(key_auth, NO_KEY));
        }
        Credential::Duplicate => return Err(unauthorized(key_auth, DUPLICATE_KEY)),
    };
    let fp = fingerprint(&key);
    trace.key_fingerprint = Some(fp[..KEY_FINGERPRINT_PREFIX].to_string());
    if let Some((consumer, credential_id)) = policy.static_consumer(&fp) {
        trace.key_lookup = "static";
        return Ok(Identity::of(static_identity(consumer, credential_id)));
    }
    let Some(api) = &policy.config.auth_api else {
        return Err(unauthorized(key_auth, INVALID_KEY));
    };
    let lookup = key_cache::get(&fp);
    trace.key_lookup = match lookup {
        Lookup::Fresh(_) => "fresh",
        Lookup::Stale(_) => "stale",
        Lookup::Miss => "miss",
    };
    let verdict = match lookup {
        Lookup::Fresh(verdict) => verdict,
        // Not asked (no `auth_call_ms` in the trace, which is how the host counts the skip).
        lookup if known_down() => {
            key_cache::release(&fp);
            fall_back(lookup)?
        }
        lookup => match timed(trace, || ask_auth_api(api, &key)) {
            Ok((verdict, ttl)) => {
                let stale = api.stale_if_error.map_or(0, |d| d.as_millis());
                key_cache::put(&fp, &verdict, ttl, stale);
                verdict
            }
            Err(failure) => {
                key_cache::release(&fp);
                if failure.known_down {
                    remember_down();
                } else {
                    // One line per distinct failure: the host sums repeats up per second,
                    // which a per-key detail would defeat during an outage with many keys.
                    eprintln!("auth API unavailable: {}", failure.reason);
                }
                fall_back(lookup)?
            }
        },
    };
    match verdict {
        Verdict::Valid(consumer) => Ok(Identity::of(consumer)),
        Verdict::Invalid => Err(unauthorized(key_auth, INVALID_KEY)),
    }
}

/// The verdict to use when the auth API cannot answer: a stale one, else 503.
fn fall_back(lookup: Lookup) -> Result<Verdict, GatewayError> {
    match lookup {
        Lookup::Stale(verdict) => Ok(verdict),
        _ => Err(GatewayError::new(503, AUTH_UNAVAILABLE)),
    }
}

/// Until when (monotonic-clock nanoseconds) this instance does not ask the auth API, because
/// its host said the API is known to be down (its breaker is open); 0 = ask.
///
/// A host with a breaker refuses such a call at once, but building the request, starting it
/// and waiting for the refusal is most of what a fresh key costs during an outage (80 k of
/// 160 k instructions per request, against 80 k for a request without a key). Remembering the
/// refusal briefly keeps a flood of fresh keys during an outage as cheap as the gateway's own
/// 401s; the host still probes the API and closes its breaker, and an instance asks again at
/// most [`KNOWN_DOWN_FOR_NS`] after that.
static KNOWN_DOWN_UNTIL: AtomicU64 = AtomicU64::new(0);

const KNOWN_DOWN_FOR_NS: u64 = 100_000_000;

fn known_down() -> bool {
    let until = KNOWN_DOWN_UNTIL.load(Ordering::Relaxed);
    if until == 0 {
        return false;
    }
    if monotonic_clock::now() < until {
        return true;
    }
    KNOWN_DOWN_UNTIL.store(0, Ordering::Relaxed);
    false
}

fn remember_down() {
    KNOWN_DOWN_UNTIL.store(
        monotonic_clock::now().saturating_add(KNOWN_DOWN_FOR_NS),
        Ordering::Relaxed,
    );
}

/// Why an auth call gave no verdict.
struct AuthFailure {
    reason: String,
    /// The host did not try: it knows the auth API is down (`destination-unavailable`).
    known_down: bool,
}

impl From<String> for AuthFailure {
    fn from(reason: String) -> Self {
        Self {
            reason,
            known_down: false,
        }
    }
}

impl From<outbound::CallError> for AuthFailure {
    fn from(err: outbound::CallError) -> Self {
        Self {
            known_down: matches!(
                err,
                outbound::CallError::Http(ErrorCode::DestinationUnavailable)
            ),
            reason: err.to_string(),
        }
    }
}

/// Run the auth call, noting how long it took.
fn timed<T>(trace: &mut AuthTrace, call: impl FnOnce() -> T) -> T {
    let started = wasip2::clocks::monotonic_clock::now();
    let result = call();
    trace.auth_call_ms = Some(crate::request::millis_between(
        started,
        wasip2::clocks::monotonic_clock::now(),
    ));
    result
}

/// Kong 3.7+: every key-auth 401 carries `WWW-Authenticate: Key` (with the realm if set).
fn unauthorized(key_auth: &KeyAuth, message: &'static str) -> GatewayError {
    let challenge = match &key_auth.realm {
        Some(realm) => format!("Key realm=\"{realm}\""),
        None => "Key".to_string(),
    };
    GatewayError::new(401, message).with_header("www-authenticate", challenge)
}

fn static_identity(consumer: &GuestConsumer, credential_id: &str) -> Consumer {
    Consumer {
        id: consumer.id.clone(),
        username: consumer.username.clone(),
        custom_id: consumer.custom_id.clone(),
        credential_id: Some(credential_id.to_string()),
    }
}

/// One auth API call: the verdict and how long (ms) to trust it, or why there is none.
fn ask_auth_api(api: &GuestAuthApi, key: &str) -> Result<(Verdict, u64), AuthFailure> {
    let url = auth_url(&api.url, key);
    let (https, authority, path_with_query) =
        split_url(&url).ok_or_else(|| format!("bad auth API URL {}", api.url))?;
    // GET is an outgoing request's method unless set (one host call fewer). The host knows an
    // auth call by where it goes: no label needed.
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_scheme(Some(if https { &Scheme::Https } else { &Scheme::Http }));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some(&path_with_query));
    let timeout = api.timeout.get();
    let deadline = outbound::deadline_in(timeout);
    let future = outbound::start(request, outbound::options(timeout, timeout, timeout))?;
    let response = outbound::wait(&future, Some(deadline))?;
    let status = response.status();
    match status {
        200..=299 => {
            let body = response.consume().map_err(|()| "no body".to_string())?;
            let bytes = {
                let stream = body.stream().map_err(|()| "no body stream".to_string())?;
                outbound::read_to_end(&stream, AUTH_BODY_LIMIT, deadline)?
            };
            drop(body);
            let (consumer, ttl) = valid_answer(&bytes, api.cache_ttl.as_millis());
            Ok((Verdict::Valid(consumer), ttl))
        }
        401 | 403 | 404 => Ok((Verdict::Invalid, api.negative_ttl.as_millis())),
        other => Err(format!("auth API answered {other}").into()),
    }
}

/// The auth API's URL for `key`: the template with `{key}` replaced by the percent-encoded key.
pub(crate) fn auth_url(template: &str, key: &str) -> String {
    template.replace("{key}", &percent_encode(key))
}

/// A 2xx answer's body: whose key it is, and how long (ms) to trust that (the answer's `ttl`,
/// at most `cache_ttl_ms`).
pub(crate) fn valid_answer(body: &[u8], cache_ttl_ms: u64) -> (Consumer, u64) {
    let answer = AuthAnswer::parse(body);
    let ttl = answer.ttl.map_or(cache_ttl_ms, |secs| {
        (secs.saturating_mul(1000)).min(cache_ttl_ms)
    });
    (answer.consumer(), ttl)
}

/// The optional JSON body of a 2xx auth API answer. Anything unparsable means "valid, anonymous".
#[derive(Default, serde::Deserialize)]
struct AuthAnswer {
    #[serde(default)]
    consumer: Option<AnswerConsumer>,
    #[serde(default)]
    credential_id: Option<String>,
    #[serde(default)]
    ttl: Option<u64>,
}

#[derive(Default, serde::Deserialize)]
struct AnswerConsumer {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    custom_id: Option<String>,
}

impl AuthAnswer {
    fn parse(bytes: &[u8]) -> Self {
        serde_json::from_slice(bytes).unwrap_or_default()
    }

    fn consumer(self) -> Consumer {
        let consumer = self.consumer.unwrap_or_default();
        Consumer {
            id: consumer.id,
            username: consumer.username,
            custom_id: consumer.custom_id,
            credential_id: self.credential_id,
        }
    }
}

/// `http[s]://authority/path?query` → (https, authority, path-with-query).
pub fn split_url(url: &str) -> Option<(bool, &str, String)> {
    let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else {
        (false, url.strip_prefix("http://")?)
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    Some((https, authority, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_urls_split_into_parts() {
        assert_eq!(
            split_url("http://127.0.0.1:9000/validate?apikey=k"),
            Some((false, "127.0.0.1:9000", "/validate?apikey=k".to_string()))
        );
        assert_eq!(
            split_url("https://auth?k=1"),
            Some((true, "auth", "/?k=1".to_string()))
        );
        assert_eq!(split_url("ftp://x"), None);
    }

    #[test]
    fn auth_answer_body_is_optional() {
        let c = AuthAnswer::parse(b"not json").consumer();
        assert_eq!(c.username, None);
        let c = AuthAnswer::parse(
            br#"{"consumer":{"id":"1","username":"ann"},"credential_id":"c9","ttl":5}"#,
        );
        assert_eq!(c.ttl, Some(5));
        let c = c.consumer();
        assert_eq!(
            (c.id.as_deref(), c.credential_id.as_deref()),
            (Some("1"), Some("c9"))
        );
    }
}
