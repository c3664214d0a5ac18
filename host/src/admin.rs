//! The operator's listener: metrics, status, reload and key revocation. It binds loopback
//! unless configured otherwise, and then requires `Authorization: Bearer <server.admin_token>`.

use crate::capabilities::key_cache::parse_fingerprint;
use crate::cluster::Cluster;
use crate::dashboard;
use crate::responses::{ResponseBody, error_response, full_body};
use crate::runtime::Gateway;
use crate::runtime::reload::Reloader;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use keygate_policy::fingerprint::fingerprint;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::UNIX_EPOCH;
use tokio::net::TcpListener;

pub struct Admin {
    pub gateway: Arc<Gateway>,
    pub reloader: Arc<Reloader>,
    pub token: Option<String>,
    /// `[cluster] redis`: revocations reach every node.
    pub cluster: Option<Arc<Cluster>>,
}

pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let admin = Arc::clone(&admin);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let admin = Arc::clone(&admin);
                async move { Ok::<_, Infallible>(admin.route(&request).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

impl Admin {
    async fn route<B>(&self, request: &hyper::Request<B>) -> hyper::Response<ResponseBody> {
        // Probes answer without the token: a load balancer has none.
        if let Some(probe) = self.probe(request) {
            return probe;
        }
        // The dashboard page holds no data (its script asks for the token, then the stats).
        if request.method() == http::Method::GET && request.uri().path() == "/" {
            return dashboard::page();
        }
        if !self.authorized(request) {
            let mut response = error_response(401, "Unauthorized");
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            return response;
        }
        let path = request.uri().path();
        match (request.method().as_str(), path) {
            ("GET", "/metrics") => hyper::Response::builder()
                .header(http::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)
                .body(full_body(self.gateway.render_metrics()))
                .expect("static parts form a valid response"),
            ("GET", "/admin/status") => json(200, &self.status()),
            ("GET", "/admin/stats") => json(200, &dashboard::stats(&self.gateway, &self.status())),
            ("POST", "/admin/reload") => match self.reloader.reload("admin API").await {
                Ok(report) => json(200, &serde_json::json!({"reloaded": report})),
                Err(err) => json(422, &serde_json::json!({"error": format!("{err:#}")})),
            },
            ("DELETE", "/admin/keys") => {
                let removed = self.gateway.key_cache().len();
                self.gateway.key_cache().clear();
                let published = match &self.cluster {
                    Some(cluster) => Some(cluster.revoke_all().await),
                    None => None,
                };
                revoked(serde_json::json!({"removed": removed}), published)
            }
            ("DELETE", _) if path.starts_with("/admin/keys/") => {
                let key = crate::http_util::percent_decode(&path["/admin/keys/".len()..]);
                let fingerprint = fingerprint(&key);
                let removed = self
                    .gateway
                    .key_cache()
                    .invalidate(parse_fingerprint(&fingerprint));
                let published = match &self.cluster {
                    Some(cluster) => Some(cluster.revoke(&fingerprint).await),
                    None => None,
                };
                revoked(serde_json::json!({"removed": removed}), published)
            }
            _ => error_response(404, "Not found"),
        }
    }

    /// `GET /healthz` (the process answers), `GET /readyz` and Kong's `GET /status/ready`
    /// (ready for traffic: the component is loaded and the listeners bound — both hold once
    /// this listener answers — and the gateway is not draining).
    fn probe<B>(&self, request: &hyper::Request<B>) -> Option<hyper::Response<ResponseBody>> {
        if request.method() != http::Method::GET && request.method() != http::Method::HEAD {
            return None;
        }
        let draining = self.gateway.is_draining();
        Some(match request.uri().path() {
            "/healthz" => text(200, "ok\n"),
            "/readyz" if draining => text(503, "draining\n"),
            "/readyz" => text(200, "ready\n"),
            // Kong's answers, which balancers in front of Kong already parse.
            "/status/ready" if draining => json(
                503,
                &serde_json::json!({"message": "the gateway is shutting down"}),
            ),
            "/status/ready" => json(200, &serde_json::json!({"message": "ready"})),
            _ => return None,
        })
    }

    fn authorized<B>(&self, request: &hyper::Request<B>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let presented = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        constant_time_eq(presented.as_bytes(), token.as_bytes())
    }

    fn status(&self) -> serde_json::Value {
        let active = self.gateway.active();
        serde_json::json!({
            "component": {
                "source": active.guest.source.to_string(),
                "sha256": active.guest.sha256,
                "loaded_at_unix": active.guest.loaded_at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                "loaded_from": active.guest.loaded_from.label(),
                "exports_policy": active.guest.has_policy(),
            },
            // Which export serves requests: `policy` (the guest decides, the host forwards)
            // or `wasi-http` (the guest's incoming-handler does everything).
            "entry": if active.fast_path { "policy" } else { "wasi-http" },
            "config": {
                "revision": active.revision,
                "file": self.reloader.config_path().map(|p| p.display().to_string()),
                "services": active.config.services.iter().map(|s| &s.name).collect::<Vec<_>>(),
            },
            "reload": self.reloader.status(),
            "key_cache_entries": self.gateway.key_cache().len(),
            "cluster": self.cluster.as_ref().map(|cluster| serde_json::json!({
                "redis": cluster.server(),
                "subscribed": cluster.is_subscribed(),
            })),
        })
    }
}

/// A revocation's answer: 200 when it is done here and, with `[cluster]`, published to the
/// other nodes (`nodes_notified` counts the subscribed nodes, this one included); 503 when
/// Redis did not take it, so the operator knows the other nodes still hold the verdict.
fn revoked(
    mut body: serde_json::Value,
    published: Option<Result<u64, String>>,
) -> hyper::Response<ResponseBody> {
    match published {
        None => json(200, &body),
        Some(Ok(nodes)) => {
            body["nodes_notified"] = nodes.into();
            json(200, &body)
        }
        Some(Err(err)) => {
            body["error"] =
                format!("revoked on this node only; the other nodes were not told: {err}").into();
            json(503, &body)
        }
    }
}

fn text(status: u16, body: &'static str) -> hyper::Response<ResponseBody> {
    hyper::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(full_body(body))
        .expect("static parts form a valid response")
}

fn json(status: u16, value: &serde_json::Value) -> hyper::Response<ResponseBody> {
    hyper::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(full_body(value.to_string()))
        .expect("static parts form a valid response")
}

/// Comparing tokens must not leak how much of a guess was right through timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_in_admin_paths_are_percent_decoded() {
        assert_eq!(crate::http_util::percent_decode("a%2Fb%20c%zz"), "a/b c%zz");
    }

    #[test]
    fn token_comparison() {
        assert!(super::constant_time_eq(b"secret", b"secret"));
        assert!(!super::constant_time_eq(b"secret", b"secreT"));
        assert!(!super::constant_time_eq(b"secret", b"secret2"));
    }
}
