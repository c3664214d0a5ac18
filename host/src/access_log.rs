//! The access log: one line per request (`[log] access = "text" | "json"`), written by a thread
//! of its own so a request never waits for a disk.
//!
//! A request hands its [`RequestRecord`] over a bounded queue and goes on; the writer formats
//! it, buffers, and flushes at least once a second. When the sink cannot keep up and the
//! queue is full, the line is dropped and counted (`keygate_access_log_dropped_total`), never
//! waited for. SIGUSR1 reopens the file, so logrotate can move it away.
//!
//! No line holds a key: the path loses its query string unless `access_query` keeps it, and
//! then the values of the key parameters are `REDACTED`; the key itself appears only as the
//! first characters of its fingerprint.

use crate::request_record::RequestRecord;
use anyhow::Context;
use keygate_policy::{AccessLog as Format, Config};
use prometheus_client::metrics::counter::Counter;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, Instant, UNIX_EPOCH};

/// Records waiting for the writer at most (a few MiB when full).
const QUEUE: usize = 16_384;

/// The writer flushes at least this often.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// How often the writer takes what the queue holds (see [`Writer::run`]); with [`QUEUE`] this
/// bounds the lines per second it can take before dropping: 16 384 per 20 ms.
const DRAIN_EVERY: Duration = Duration::from_millis(20);

/// Where lines go, and how they look.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub format: Format,
    /// `None`: stdout.
    pub file: Option<PathBuf>,
    pub keep_query: bool,
    /// Query parameters whose values are keys (`key_auth.key_names`).
    pub key_names: Vec<String>,
}

impl Settings {
    /// From `[log]`, with `--access-log` (if given) in place of `access_file`.
    pub fn of(config: &Config, file_override: Option<PathBuf>) -> Self {
        Self {
            format: config.log.access,
            file: file_override.or_else(|| config.log.access_file.clone()),
            keep_query: config.log.access_query,
            key_names: config.key_auth.key_names.clone(),
        }
    }
}

/// The request side: cheap to call, never blocks.
pub struct AccessLog {
    queue: SyncSender<RequestRecord>,
    reopen: Arc<AtomicBool>,
    dropped: Counter,
}

impl AccessLog {
    /// Start the writer; `None` when the access log is off. Fails when the file cannot be
    /// opened, so a typo in `access_file` stops the start rather than losing every line.
    pub fn start(settings: Settings, dropped: Counter) -> anyhow::Result<Option<Self>> {
        if settings.format == Format::Off {
            return Ok(None);
        }
        let sink = Sink::open(settings.file.as_ref())?;
        let (queue, records) = std::sync::mpsc::sync_channel(QUEUE);
        let reopen = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            settings,
            sink,
            reopen: Arc::clone(&reopen),
            line: String::new(),
        };
        std::thread::Builder::new()
            .name("keygate-access-log".into())
            .spawn(move || writer.run(records))
            .context("starting the access log writer")?;
        Ok(Some(Self {
            queue,
            reopen,
            dropped,
        }))
    }

    pub fn record(&self, record: RequestRecord) {
        match self.queue.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.inc();
            }
        }
    }

    /// Reopen the file before the next line (SIGUSR1).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::SeqCst);
    }
}

enum Sink {
    Stdout(io::BufWriter<io::Stdout>),
    File {
        path: PathBuf,
        file: io::BufWriter<File>,
    },
}

impl Sink {
    fn open(path: Option<&PathBuf>) -> anyhow::Result<Self> {
        Ok(match path {
            None => Self::Stdout(io::BufWriter::new(io::stdout())),
            Some(path) => Self::File {
                file: io::BufWriter::new(open_append(path)?),
                path: path.clone(),
            },
        })
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Self::Stdout(out) => out,
            Self::File { file, .. } => file,
        }
    }
}

fn open_append(path: &PathBuf) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening the access log {}", path.display()))
}

struct Writer {
    settings: Settings,
    sink: Sink,
    reopen: Arc<AtomicBool>,
    line: String,
}

impl Writer {
    /// Drain the queue every [`DRAIN_EVERY`] rather than wait on it: a writer blocked on the
    /// queue would be woken by every request (a futex wake and a context switch each), which
    /// cost more CPU than the line.
    fn run(mut self, records: Receiver<RequestRecord>) {
        let mut flushed = Instant::now();
        loop {
            if self.reopen.swap(false, Ordering::SeqCst) {
                self.reopen_file();
            }
            loop {
                match records.try_recv() {
                    Ok(record) => {
                        self.line.clear();
                        format_record(&record, &self.settings, &mut self.line);
                        if let Err(err) = self.sink.writer().write_all(self.line.as_bytes()) {
                            tracing::warn!("writing the access log: {err}");
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        let _ = self.sink.writer().flush();
                        return;
                    }
                }
            }
            if flushed.elapsed() >= FLUSH_EVERY {
                let _ = self.sink.writer().flush();
                flushed = Instant::now();
            }
            std::thread::sleep(DRAIN_EVERY);
        }
    }

    fn reopen_file(&mut self) {
        if let Sink::File { path, file } = &mut self.sink {
            let _ = file.flush();
            match open_append(path) {
                Ok(reopened) => {
                    *file = io::BufWriter::new(reopened);
                    tracing::info!(path = %path.display(), "access log reopened");
                }
                Err(err) => tracing::warn!("{err:#}; still writing to the old file"),
            }
        }
    }
}

/// One line, newline included.
pub fn format_record(record: &RequestRecord, settings: &Settings, out: &mut String) {
    let path = log_path(&record.uri, settings);
    let time = rfc3339_millis(record.at);
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    match settings.format {
        Format::Json => {
            // Written field by field: building a `serde_json::Value` first allocated a map
            // and a string per field, per line.
            let mut first = true;
            let mut field = |out: &mut String, name: &str| {
                out.push(if first { '{' } else { ',' });
                first = false;
                json_string(out, name);
                out.push(':');
            };
            let text = |out: &mut String, value: Option<&str>| match value {
                Some(value) => json_string(out, value),
                None => out.push_str("null"),
            };
            field(out, "time");
            json_string(out, &time);
            field(out, "request_id");
            text(out, record.request_id.as_deref());
            field(out, "client_ip");
            let _ = write!(out, "\"{}\"", record.client_ip);
            field(out, "method");
            json_string(out, record.method.as_str());
            field(out, "path");
            json_string(out, &path);
            field(out, "route");
            text(out, record.route.as_deref());
            field(out, "service");
            text(out, record.service.as_deref());
            field(out, "consumer");
            text(out, record.consumer.as_deref());
            field(out, "status");
            let _ = write!(out, "{}", record.status);
            field(out, "source");
            json_string(out, record.source.label());
            field(out, "bytes_in");
            let _ = write!(out, "{}", record.bytes_in);
            field(out, "bytes_out");
            let _ = write!(out, "{}", record.bytes_out);
            field(out, "latency_ms");
            let _ = write!(out, "{}", round3(ms(record.total)));
            field(out, "upstream_ms");
            match record.upstream {
                Some(upstream) => {
                    let _ = write!(out, "{}", round3(ms(upstream)));
                }
                None => out.push_str("null"),
            }
            field(out, "gateway_ms");
            let _ = write!(out, "{}", round3(ms(record.gateway)));
            field(out, "auth_ms");
            match record.auth_ms {
                Some(auth) => {
                    let _ = write!(out, "{auth}");
                }
                None => out.push_str("null"),
            }
            field(out, "key_cache");
            text(out, record.key_lookup.as_deref());
            field(out, "key");
            text(out, record.key.as_deref());
            out.push_str("}\n");
        }
        Format::Text | Format::Off => {
            let _ = write!(
                out,
                "{time} {} {} {} {} status={} source={} route={} service={} consumer={} \
                 in={} out={} latency_ms={:.3} upstream_ms={} gateway_ms={:.3} auth_ms={} \
                 key_cache={} key={}",
                or_dash(record.request_id.as_deref()),
                record.client_ip,
                record.method,
                quoted(&path),
                record.status,
                record.source.label(),
                quoted(or_dash(record.route.as_deref())),
                quoted(or_dash(record.service.as_deref())),
                quoted(or_dash(record.consumer.as_deref())),
                record.bytes_in,
                record.bytes_out,
                ms(record.total),
                record
                    .upstream
                    .map_or_else(|| "-".to_string(), |d| format!("{:.3}", ms(d))),
                ms(record.gateway),
                record
                    .auth_ms
                    .map_or_else(|| "-".to_string(), |n| n.to_string()),
                or_dash(record.key_lookup.as_deref()),
                or_dash(record.key.as_deref()),
            );
            out.push('\n');
        }
    }
}

/// `value` as a JSON string: quotes, backslashes and control characters escaped.
fn json_string(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// A missing value as the text format writes it.
fn or_dash(value: Option<&str>) -> &str {
    value.unwrap_or("-")
}

/// A value as is when it is one plain word, else in double quotes with `"`, `\` and control
/// characters escaped: one record stays one line whatever a consumer's name holds.
fn quoted(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\');
    if plain {
        value.to_string()
    } else {
        let mut quoted = String::with_capacity(value.len() + 2);
        json_string(&mut quoted, value);
        quoted
    }
}

/// The path, with the query gone, or kept with the key parameters' values redacted.
fn log_path(uri: &http::Uri, settings: &Settings) -> String {
    let path = uri.path();
    let Some(query) = uri.query().filter(|_| settings.keep_query) else {
        return path.to_string();
    };
    let mut out = format!("{path}?");
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        let name = pair.split('=').next().unwrap_or("");
        let decoded = crate::http_util::percent_decode(name);
        if settings
            .key_names
            .iter()
            .any(|key| key.eq_ignore_ascii_case(&decoded))
        {
            out.push_str(name);
            out.push_str("=REDACTED");
        } else {
            out.push_str(pair);
        }
    }
    out
}

/// `2026-11-30T09:25:05.874Z`.
fn rfc3339_millis(at: std::time::SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since.as_secs();
    let (year, month, day) = keygate_counters_core::civil_from_days(seconds / 86_400);
    let in_day = seconds % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3600,
        in_day / 60 % 60,
        in_day % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request_record::Source;
    use std::time::Duration;

    fn record(uri: &str) -> RequestRecord {
        RequestRecord {
            at: UNIX_EPOCH + Duration::from_millis(1_764_494_705_874),
            request_id: Some("0123456789abcdef0123456789abcdef".into()),
            client_ip: "203.0.113.7".parse().unwrap(),
            method: http::Method::GET,
            uri: uri.parse().unwrap(),
            route: Some("results".into()),
            service: Some("measurements".into()),
            consumer: Some("acme corp".into()),
            status: 200,
            source: Source::Origin,
            bytes_in: 120,
            bytes_out: 345,
            total: Duration::from_micros(1500),
            upstream: Some(Duration::from_micros(900)),
            gateway: Duration::from_micros(400),
            auth_ms: None,
            key_lookup: Some("fresh".into()),
            key: Some("3fa9c2d1".into()),
        }
    }

    fn settings(format: Format, keep_query: bool) -> Settings {
        Settings {
            format,
            file: None,
            keep_query,
            key_names: vec!["apikey".into(), "x-api-key".into()],
        }
    }

    #[test]
    fn a_text_line_has_every_field_and_no_query() {
        let mut line = String::new();
        format_record(
            &record("/results/7?apikey=SECRETKEY&page=2"),
            &settings(Format::Text, false),
            &mut line,
        );
        assert_eq!(
            line,
            "2025-11-30T09:25:05.874Z 0123456789abcdef0123456789abcdef 203.0.113.7 GET \
             /results/7 status=200 source=origin route=results service=measurements \
             consumer=\"acme corp\" in=120 out=345 latency_ms=1.500 upstream_ms=0.900 \
             gateway_ms=0.400 auth_ms=- key_cache=fresh key=3fa9c2d1\n"
        );
    }

    #[test]
    fn a_kept_query_has_its_keys_redacted_however_they_are_spelled() {
        let mut line = String::new();
        format_record(
            &record("/r?APIKEY=SECRETKEY&page=2&api%6Bey=SECRET2&x-api-key=SECRET3"),
            &settings(Format::Json, true),
            &mut line,
        );
        assert!(!line.contains("SECRET"), "{line}");
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            json["path"],
            "/r?APIKEY=REDACTED&page=2&api%6Bey=REDACTED&x-api-key=REDACTED"
        );
        assert_eq!(json["latency_ms"], 1.5);
        assert_eq!(json["upstream_ms"], 0.9);
        assert_eq!(json["auth_ms"], serde_json::Value::Null);
        assert_eq!(json["consumer"], "acme corp");
        assert!(line.ends_with("}\n"));
    }

    /// A sink that does not keep up costs requests nothing: a full queue drops and counts.
    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let (queue, _stuck_writer) = std::sync::mpsc::sync_channel(1);
        let dropped = Counter::default();
        let log = AccessLog {
            queue,
            reopen: Arc::default(),
            dropped: dropped.clone(),
        };
        log.record(record("/a"));
        log.record(record("/b"));
        log.record(record("/c"));
        assert_eq!(dropped.get(), 2);
    }

    #[test]
    fn odd_names_stay_on_one_line() {
        let mut odd = record("/x");
        odd.consumer = Some("a\"b\nc".into());
        let mut line = String::new();
        format_record(&odd, &settings(Format::Text, false), &mut line);
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert!(line.contains(r#"consumer="a\"b\nc""#), "{line}");
    }
}
