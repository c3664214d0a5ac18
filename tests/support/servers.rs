//! Test origin and auth API: real hyper servers on ephemeral loopback ports that record what
//! reaches them.

use super::tls::ServerCert;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;
pub type Response = hyper::Response<BoxBody>;

/// A server on an ephemeral loopback port answering every request with `handler`, one task per
/// connection (connections may be upgraded). The one HTTP server loop of the tests: [`Origin`]
/// and [`AuthApi`] run on it, and scenarios about HTTP itself give it a handler of their own.
pub async fn serve<F, Fut>(handler: F) -> Listening
where
    F: Fn(hyper::Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    serve_maybe_tls(None, handler).await
}

/// [`serve`] over TLS with `cert` (HTTP/1.1 by ALPN): an https origin or auth API.
pub async fn serve_tls<F, Fut>(cert: &ServerCert, handler: F) -> Listening
where
    F: Fn(hyper::Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    serve_maybe_tls(Some(tls_acceptor(cert)), handler).await
}

async fn serve_maybe_tls<F, Fut>(tls: Option<tokio_rustls::TlsAcceptor>, handler: F) -> Listening
where
    F: Fn(hyper::Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listening = Listening {
        addr: listener.local_addr().unwrap(),
        connections: Arc::default(),
        handshakes: Arc::default(),
        plaintext: Arc::default(),
        server_names: Arc::default(),
    };
    let (connections, handshakes) = (
        Arc::clone(&listening.connections),
        Arc::clone(&listening.handshakes),
    );
    let plaintext = Arc::clone(&listening.plaintext);
    let server_names = Arc::clone(&listening.server_names);
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            connections.fetch_add(1, Ordering::SeqCst);
            let handler = Arc::clone(&handler);
            let service = service_fn(move |request| {
                let answer = handler(request);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let Some(tls) = tls.clone() else {
                tokio::spawn(
                    http1::Builder::new()
                        // More than hyper's 100 lines: a request with the gateway's 100 plus
                        // its forwarding headers (tests/edge.rs).
                        .max_headers(200)
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades(),
                );
                continue;
            };
            let (handshakes, plaintext) = (Arc::clone(&handshakes), Arc::clone(&plaintext));
            let server_names = Arc::clone(&server_names);
            tokio::spawn(async move {
                // A request in clear starts with a method, a TLS connection with a handshake
                // record (0x16).
                let mut first = [0u8; 1];
                if stream.peek(&mut first).await.is_ok_and(|n| n == 1) && first[0] != 0x16 {
                    plaintext.fetch_add(1, Ordering::SeqCst);
                }
                let Ok(stream) = tls.accept(stream).await else {
                    return;
                };
                handshakes.fetch_add(1, Ordering::SeqCst);
                if let Some(name) = stream.get_ref().1.server_name() {
                    server_names.lock().unwrap().push(name.to_string());
                }
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    listening
}

/// A TLS acceptor presenting `cert`'s chain, offering HTTP/1.1 by ALPN.
pub fn tls_acceptor(cert: &ServerCert) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(&cert.cert)
        .expect("the certificate chain file")
        .collect::<Result<Vec<_>, _>>()
        .expect("PEM certificates");
    let key = PrivateKeyDer::from_pem_file(&cert.key).expect("the PEM private key");
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("a usable certificate and key");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// Where a [`serve`]d server listens, and how many connections it accepted.
#[derive(Clone)]
pub struct Listening {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    handshakes: Arc<AtomicUsize>,
    plaintext: Arc<AtomicUsize>,
    server_names: Arc<Mutex<Vec<String>>>,
}

impl Listening {
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// TLS handshakes completed ([`serve_tls`]).
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }

    /// Connections to a [`serve_tls`] server that began in clear instead of with a TLS
    /// handshake.
    pub fn plaintext(&self) -> usize {
        self.plaintext.load(Ordering::SeqCst)
    }

    /// The server name (SNI) of each TLS handshake that sent one.
    pub fn server_names(&self) -> Vec<String> {
        self.server_names.lock().unwrap().clone()
    }
}

/// What the origin saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// The request target as it arrived (path and query).
    pub uri: String,
    pub headers: http::HeaderMap,
    /// The body, whole; empty for `.../upload`, which is only counted as it streams.
    pub body: Bytes,
    pub body_bytes: u64,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// How an origin answers a request it has recorded.
type Answer = Arc<dyn Fn(&Seen) -> Response + Send + Sync>;

/// The tests' origin API: records every request (see [`Seen`]) and answers it. Its own answers,
/// by path as received:
/// - `.../download/N`: streams N bytes (see [`download_sum`]);
/// - `.../upload`: reads the body as a stream and answers `{"bytes":N,"sum":S}`;
/// - anything else: `{"origin":NAME,"method":…,"uri":…}`;
///
/// and request headers steer any answer:
/// - `x-test-delay-ms: N` waits N ms before answering;
/// - `x-test-respond-with: NAME=VALUE` (repeatable) adds that header to the answer.
///
/// [`Origin::answering`] replaces its answers with the test's own.
#[derive(Clone)]
pub struct Origin {
    pub addr: SocketAddr,
    pub name: &'static str,
    seen: Arc<Mutex<Vec<Seen>>>,
    listening: Listening,
}

impl Origin {
    pub async fn start(name: &'static str) -> Self {
        Self::start_answering(name, None).await
    }

    /// An https origin presenting `cert`, answering as [`Origin::start`]'s does.
    pub async fn start_tls(name: &'static str, cert: &ServerCert) -> Self {
        Self::start_maybe_tls(name, None, Some(tls_acceptor(cert))).await
    }

    /// An origin that records each request and answers as `answer` says.
    pub async fn answering(answer: impl Fn(&Seen) -> Response + Send + Sync + 'static) -> Self {
        Self::start_answering("origin", Some(Arc::new(answer))).await
    }

    async fn start_answering(name: &'static str, answer: Option<Answer>) -> Self {
        Self::start_maybe_tls(name, answer, None).await
    }

    async fn start_maybe_tls(
        name: &'static str,
        answer: Option<Answer>,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Self {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = Arc::clone(&seen);
        let listening = serve_maybe_tls(tls, move |request| {
            let log = Arc::clone(&log);
            let answer = answer.clone();
            async move { Self::answer(name, &log, answer.as_ref(), request).await }
        })
        .await;
        Self {
            addr: listening.addr,
            name,
            seen,
            listening,
        }
    }

    /// Requests that reached this origin so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the origin saw a request")
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.listening.connections()
    }

    /// How its connections went: TLS handshakes and connections begun in clear
    /// ([`Origin::start_tls`]).
    pub fn listening(&self) -> &Listening {
        &self.listening
    }

    async fn answer(
        name: &'static str,
        log: &Mutex<Vec<Seen>>,
        answer: Option<&Answer>,
        request: hyper::Request<Incoming>,
    ) -> Response {
        let (parts, mut body) = request.into_parts();
        let uri = parts.uri.to_string();
        if let Some(delay) = parts
            .headers
            .get("x-test-delay-ms")
            .and_then(|v| v.to_str().ok()?.parse().ok())
        {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let path = parts.uri.path().to_string();
        let upload = answer.is_none() && path.ends_with("/upload");
        // An upload is streamed: never more than one frame in memory.
        let (mut kept, mut bytes, mut sum) = (Vec::new(), 0u64, 0u64);
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            if let Some(data) = frame.data_ref() {
                bytes += data.len() as u64;
                sum = data.iter().fold(sum, |s, b| s.wrapping_add(u64::from(*b)));
                if !upload {
                    kept.extend_from_slice(data);
                }
            }
        }
        let seen = Seen {
            method: parts.method.to_string(),
            uri: uri.clone(),
            headers: parts.headers,
            body: Bytes::from(kept),
            body_bytes: bytes,
        };
        log.lock().unwrap().push(seen.clone());
        let mut response = if let Some(answer) = answer {
            answer(&seen)
        } else if let Some(n) = path
            .rsplit_once("/download/")
            .and_then(|(_, n)| n.parse::<u64>().ok())
        {
            download(n)
        } else {
            let json = if upload {
                serde_json::json!({"bytes": bytes, "sum": sum})
            } else {
                serde_json::json!({"origin": name, "method": seen.method, "uri": uri})
            };
            hyper::Response::builder()
                .header("content-type", "application/json")
                .header("x-origin", name)
                .body(Full::new(Bytes::from(json.to_string())).boxed())
                .unwrap()
        };
        let asked_for = seen
            .headers
            .get_all("x-test-respond-with")
            .iter()
            .filter_map(|v| v.to_str().ok()?.split_once('='));
        for (name, value) in asked_for {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::try_from(name),
                http::HeaderValue::try_from(value),
            ) {
                response.headers_mut().append(name, value);
            }
        }
        response
    }
}

/// `n` bytes of the repeating pattern 0..=250, in 64 KiB chunks.
pub fn download(n: u64) -> Response {
    const CHUNK: u64 = 64 * 1024;
    let chunks = (0..n.div_ceil(CHUNK)).map(move |i| {
        let start = i * CHUNK;
        let len = CHUNK.min(n - start);
        let data: Vec<u8> = (start..start + len).map(|b| (b % 251) as u8).collect();
        Ok::<_, Infallible>(Frame::data(Bytes::from(data)))
    });
    hyper::Response::builder()
        .header("content-length", n.to_string())
        .body(StreamBody::new(futures::stream::iter(chunks)).boxed())
        .unwrap()
}

/// The sum of the download pattern's bytes, to check a download arrived whole.
pub fn download_sum(n: u64) -> u64 {
    (0..n).fold(0u64, |s, b| s.wrapping_add(b % 251))
}

/// The provider's auth API: `GET /validate?apikey=KEY` → 200 with the consumer for known
/// keys, 401 otherwise; can be switched to failing with 500 ("down").
#[derive(Clone)]
pub struct AuthApi {
    pub addr: SocketAddr,
    keys: Arc<Mutex<HashMap<String, serde_json::Value>>>,
    calls: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
    delay: Arc<Mutex<Duration>>,
}

impl AuthApi {
    pub async fn start() -> Self {
        Self::start_maybe_tls(None).await
    }

    /// An https auth API presenting `cert`.
    pub async fn start_tls(cert: &ServerCert) -> Self {
        Self::start_maybe_tls(Some(tls_acceptor(cert))).await
    }

    async fn start_maybe_tls(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let keys: Arc<Mutex<HashMap<String, serde_json::Value>>> = Arc::default();
        let mut auth = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            keys,
            calls: Arc::default(),
            answered: Arc::default(),
            down: Arc::default(),
            delay: Arc::default(),
        };
        let state = auth.clone();
        auth.addr = serve_maybe_tls(tls, move |request| {
            let state = state.clone();
            async move { state.answer(request).await }
        })
        .await
        .addr;
        auth
    }

    /// Accept `key`, answering with this JSON body.
    pub fn allow(&self, key: &str, answer: serde_json::Value) -> &Self {
        self.keys.lock().unwrap().insert(key.to_string(), answer);
        self
    }

    /// Stop accepting `key`.
    pub fn deny(&self, key: &str) {
        self.keys.lock().unwrap().remove(key);
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Calls answered so far (after any delay).
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    pub fn set_delay(&self, delay: Duration) {
        *self.delay.lock().unwrap() = delay;
    }

    async fn answer(&self, request: hyper::Request<Incoming>) -> Response {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let delay = *self.delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.answered.fetch_add(1, Ordering::SeqCst);
        let reply = |status: u16, body: String| {
            hyper::Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)).boxed())
                .unwrap()
        };
        if self.down.load(Ordering::SeqCst) {
            return reply(500, "{}".into());
        }
        let key = request
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .find_map(|pair| pair.strip_prefix("apikey="))
            .map(percent_decode)
            .unwrap_or_default();
        match self.keys.lock().unwrap().get(&key) {
            Some(answer) => reply(200, answer.to_string()),
            None => reply(401, "{}".into()),
        }
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
