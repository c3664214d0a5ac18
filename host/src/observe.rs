//! Seeing each request to its end: the response body is wrapped so that when its last byte
//! has gone (or the client left), the request's [`RequestRecord`] — with the bytes sent and
//! the whole latency — goes to the metrics and the access log.

use crate::access_log::{AccessLog, Settings};
use crate::metrics::Metrics;
use crate::request_record::{RequestRecord, Source};
use crate::responses::ResponseBody;
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use keygate_policy::Config;
use keygate_policy::plugins::{ConsumerIdentity, PluginKind, Prometheus};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

/// Where finished requests go: the metrics, and the access log when one is on.
pub struct Observer {
    pub metrics: Arc<Metrics>,
    access_log: ArcSwapOption<AccessLog>,
    /// What the running access log was started with, to restart it when a reload changes it.
    settings: Mutex<Option<Settings>>,
    /// `keygate serve --access-log PATH`: wins over `[log] access_file` across reloads.
    file_override: Option<PathBuf>,
}

impl Observer {
    pub fn new(
        metrics: Arc<Metrics>,
        config: &Config,
        file_override: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let observer = Self {
            metrics,
            access_log: ArcSwapOption::empty(),
            settings: Mutex::new(None),
            file_override,
        };
        observer.configure(config)?;
        Ok(observer)
    }

    /// Follow `config`'s `[log]` and `prometheus` plugins. An access log that cannot be
    /// (re)opened is an error, and the one running keeps running.
    pub fn configure(&self, config: &Config) -> anyhow::Result<()> {
        self.metrics.set_kong_families(
            config
                .plugins
                .iter()
                .any(|plugin| plugin.enabled && plugin.prometheus().is_some()),
        );
        let settings = Settings::of(config, self.file_override.clone());
        let mut running = self.settings.lock().unwrap_or_else(|p| p.into_inner());
        if running.as_ref() == Some(&settings) {
            return Ok(());
        }
        let log = AccessLog::start(settings.clone(), self.metrics.access_log_dropped())?;
        self.access_log.store(log.map(Arc::new));
        *running = Some(settings);
        Ok(())
    }

    /// Reopen the access log file (SIGUSR1).
    pub fn reopen(&self) {
        if let Some(log) = self.access_log.load().as_ref() {
            log.reopen();
        }
    }

    fn finished(&self, record: RequestRecord, config: &Config) {
        let kong = prometheus_for(config, &record);
        self.metrics.completed(&record, kong);
        if let Some(log) = self.access_log.load().as_ref() {
            log.record(record);
        }
    }
}

/// The `prometheus` instance that applies to `record`, by Kong's precedence.
fn prometheus_for<'a>(config: &'a Config, record: &RequestRecord) -> Option<&'a Prometheus> {
    let plugins = &config.plugins;
    let scope = plugins.scope(
        record.route.as_deref(),
        record.service.as_deref(),
        record.consumer.as_deref().map(|name| ConsumerIdentity {
            id: Some(name),
            username: Some(name),
        }),
    );
    plugins
        .applicable(PluginKind::Prometheus, &scope)
        .and_then(|applicable| applicable.plugin.prometheus())
}

/// A response body that reports its request when it ends.
pub struct Observed {
    inner: ResponseBody,
    /// `None` once reported.
    pending: Option<Pending>,
}

struct Pending {
    record: RequestRecord,
    started: Instant,
    observer: Arc<Observer>,
    config: Arc<Config>,
}

impl Observed {
    /// Wrap `response`'s body: `record` is complete but for `bytes_out` (the head's size is
    /// added here, the body's as it goes) and `total`.
    pub fn wrap(
        response: hyper::Response<ResponseBody>,
        mut record: RequestRecord,
        started: Instant,
        observer: Arc<Observer>,
        config: Arc<Config>,
    ) -> hyper::Response<ResponseBody> {
        record.status = response.status().as_u16();
        record.bytes_out = head_size(response.headers());
        let pending = Pending {
            record,
            started,
            observer,
            config,
        };
        response.map(|inner| {
            Self {
                inner,
                pending: Some(pending),
            }
            .boxed_unsync()
        })
    }

    fn report(&mut self) {
        if let Some(Pending {
            mut record,
            started,
            observer,
            config,
        }) = self.pending.take()
        {
            record.total = started.elapsed();
            observer.finished(record, &config);
        }
    }
}

impl Body for Observed {
    type Data = Bytes;
    type Error = <ResponseBody as Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(pending)) = (frame.data_ref(), self.pending.as_mut()) {
                    pending.record.bytes_out += data.len() as u64;
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.report(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    /// A client that leaves before the end still made a request: it is reported with what
    /// was sent.
    fn drop(&mut self) {
        self.report();
    }
}

/// The bytes of a status line and headers as HTTP/1.1 writes them.
pub fn head_size(headers: &http::HeaderMap) -> u64 {
    let fields: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + 2 + value.len() + 2)
        .sum();
    // "HTTP/1.1 200 OK\r\n" and the blank line.
    (17 + fields + 2) as u64
}

/// The bytes of a request line and headers as the client sent them (near enough: HTTP/1.1
/// framing), plus its declared body.
pub fn request_size(request: &hyper::Request<hyper::body::Incoming>) -> u64 {
    let target = request
        .uri()
        .path_and_query()
        .map_or(1, |target| target.as_str().len());
    let line = request.method().as_str().len() + 1 + target + 11;
    let body = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok())
        .unwrap_or(0);
    head_size(request.headers()) - 17 + line as u64 + body
}

/// What a request's record starts with, taken from its head before the request is consumed.
pub fn start_record(
    request: &hyper::Request<hyper::body::Incoming>,
    client: std::net::SocketAddr,
) -> RequestRecord {
    RequestRecord {
        at: std::time::SystemTime::now(),
        request_id: None,
        client_ip: client.ip(),
        method: request.method().clone(),
        uri: request.uri().clone(),
        route: None,
        service: None,
        consumer: None,
        status: 0,
        source: Source::Gateway,
        bytes_in: request_size(request),
        bytes_out: 0,
        total: Default::default(),
        upstream: None,
        gateway: Default::default(),
        auth_ms: None,
        key_lookup: None,
        key: None,
    }
}
