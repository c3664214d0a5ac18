//! Test origin and auth API: real hyper servers on ephemeral loopback ports that record what
//! reaches them.

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

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// What the origin saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query as received.
    pub uri: String,
    pub headers: http::HeaderMap,
    pub body_bytes: u64,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect()
    }
}

/// A request an origin read whole, body included.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// The request target as it arrived (path and query).
    pub uri: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn new(parts: http::request::Parts, body: Bytes) -> Self {
        Self {
            method: parts.method.to_string(),
            uri: parts.uri.to_string(),
            headers: parts.headers,
            body,
        }
    }

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

/// An origin API. Paths it understands (as it receives them):
/// - `.../download/N`: streams N bytes;
/// - `.../upload`: reads the body as a stream and answers `{"bytes":N,"sum":S}`;
/// - header `x-test-delay-ms: N`: waits N ms before answering;
/// - header `x-test-respond-with: NAME=VALUE` (repeatable): adds that header to the answer;
/// - anything else: `{"origin":NAME,"method":…,"uri":…}`.
#[derive(Clone)]
pub struct Origin {
    pub addr: SocketAddr,
    pub name: &'static str,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
}

impl Origin {
    pub async fn start(name: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = Self {
            addr: listener.local_addr().unwrap(),
            name,
            seen: Arc::default(),
            connections: Arc::default(),
        };
        let state = origin.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                state.connections.fetch_add(1, Ordering::SeqCst);
                let state = state.clone();
                let service = service_fn(move |request| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(state.answer(request).await) }
                });
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
            }
        });
        origin
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
        self.connections.load(Ordering::SeqCst)
    }

    async fn answer(&self, request: hyper::Request<Incoming>) -> hyper::Response<BoxBody> {
        let (parts, mut body) = request.into_parts();
        let uri = parts.uri.to_string();
        if let Some(delay) = parts
            .headers
            .get("x-test-delay-ms")
            .and_then(|v| v.to_str().ok()?.parse().ok())
        {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        // Streamed: never more than one frame in memory.
        let (mut bytes, mut sum) = (0u64, 0u64);
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            if let Some(data) = frame.data_ref() {
                bytes += data.len() as u64;
                sum = data.iter().fold(sum, |s, b| s.wrapping_add(u64::from(*b)));
            }
        }
        self.seen.lock().unwrap().push(Seen {
            method: parts.method.to_string(),
            uri: uri.clone(),
            headers: parts.headers.clone(),
            body_bytes: bytes,
        });
        let path = parts.uri.path();
        if let Some(n) = path
            .rsplit_once("/download/")
            .and_then(|(_, n)| n.parse::<u64>().ok())
        {
            return download(n);
        }
        let json = if path.ends_with("/upload") {
            serde_json::json!({"bytes": bytes, "sum": sum})
        } else {
            serde_json::json!({"origin": self.name, "method": parts.method.as_str(), "uri": uri})
        };
        let mut response = hyper::Response::builder()
            .header("content-type", "application/json")
            .header("x-origin", self.name);
        let asked_for = parts
            .headers
            .get_all("x-test-respond-with")
            .iter()
            .filter_map(|v| v.to_str().ok()?.split_once('='));
        for (name, value) in asked_for {
            response = response.header(name, value);
        }
        response
            .body(Full::new(Bytes::from(json.to_string())).boxed())
            .unwrap()
    }
}

/// `n` bytes of the repeating pattern 0..=250, in 64 KiB chunks.
fn download(n: u64) -> hyper::Response<BoxBody> {
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
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let auth = Self {
            addr: listener.local_addr().unwrap(),
            keys: Arc::default(),
            calls: Arc::default(),
            answered: Arc::default(),
            down: Arc::default(),
            delay: Arc::default(),
        };
        let state = auth.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = state.clone();
                let service = service_fn(move |request| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(state.answer(request).await) }
                });
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
            }
        });
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

    async fn answer(&self, request: hyper::Request<Incoming>) -> hyper::Response<BoxBody> {
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
