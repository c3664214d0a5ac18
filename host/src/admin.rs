//! The operator's listener: Prometheus metrics and the running component/config status.

use crate::runtime::Gateway;
use crate::runtime::invoke::{ResponseBody, error_response, full_body};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::UNIX_EPOCH;
use tokio::net::TcpListener;

pub async fn serve(listener: TcpListener, gateway: Arc<Gateway>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let gateway = Arc::clone(&gateway);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let gateway = Arc::clone(&gateway);
                async move { Ok::<_, Infallible>(route(&gateway, &request)) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn route<B>(gateway: &Gateway, request: &hyper::Request<B>) -> hyper::Response<ResponseBody> {
    match (request.method().as_str(), request.uri().path()) {
        ("GET", "/metrics") => hyper::Response::builder()
            .header(
                http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
            .body(full_body(gateway.metrics.render(gateway.key_cache().len())))
            .expect("static parts form a valid response"),
        ("GET", "/admin/status") => {
            let active = gateway.active();
            let status = serde_json::json!({
                "component": {
                    "source": active.guest.source.to_string(),
                    "sha256": active.guest.sha256,
                    "loaded_at_unix": active.guest.loaded_at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                },
                "services": active.config.services.iter().map(|s| &s.name).collect::<Vec<_>>(),
                "key_cache_entries": gateway.key_cache().len(),
            });
            hyper::Response::builder()
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(full_body(status.to_string()))
                .expect("static parts form a valid response")
        }
        _ => error_response(404, "Not found"),
    }
}
