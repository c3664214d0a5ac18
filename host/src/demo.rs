//! `keygate demo`: the gateway in front of a sample origin and auth API, all on loopback, so a
//! new user sees key auth and routing work with one command.

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// Keys the sample auth API accepts, with the consumer it reports for each.
const DEMO_KEYS: &[(&str, &str, &str)] = &[
    ("alice-key", "alice", "cust-001"),
    ("bob-key", "bob", "cust-002"),
];

pub async fn run(listen: SocketAddr) -> anyhow::Result<()> {
    let origin = spawn_server(|request, body| origin_answer(&request, &body)).await?;
    let auth = spawn_server(|request, _| auth_answer(&request)).await?;
    let config_text = include_str!("../../examples/keygate.toml")
        .replace("127.0.0.1:8080", &listen.to_string())
        .replace(
            "admin_listen = \"127.0.0.1:8081\"",
            "admin_listen = \"127.0.0.1:0\"",
        )
        .replace("http://127.0.0.1:9000", &format!("http://{auth}"))
        .replace("http://127.0.0.1:9001", &format!("http://{origin}"));
    let config = crate::config::parse(&config_text, None).context("the demo config")?;
    let stop = crate::signals::shutdown_signal()?;
    let running = crate::start(config).await?;
    let gw = running.addr;
    let admin = running
        .admin_addr
        .map(|a| a.to_string())
        .unwrap_or_default();
    println!(
        "keygate demo: gateway http://{gw}  origin http://{origin}  auth API http://{auth}\n\
         \n\
         # a static key from the config (consumer \"demo\")\n\
         curl -i http://{gw}/results -H 'apikey: demo-key-1'\n\
         # keys the auth API knows (checked once, then served from the key cache)\n\
         curl -i 'http://{gw}/results/latest?apikey=alice-key'\n\
         curl -i http://{gw}/results -H 'apikey: bob-key' -d '{{\"reading\": 42}}'\n\
         # refused before reaching the origin\n\
         curl -i http://{gw}/results\n\
         curl -i http://{gw}/results -H 'apikey: wrong-key'\n\
         curl -i http://{gw}/elsewhere -H 'apikey: demo-key-1'\n\
         # metrics\n\
         curl -s http://{admin}/metrics\n\
         \n\
         Ctrl-C stops it."
    );
    stop.await?;
    running.shutdown().await;
    Ok(())
}

fn origin_answer(
    request: &hyper::http::request::Parts,
    body: &Bytes,
) -> hyper::Response<Full<Bytes>> {
    let header = |name: &str| {
        request
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let answer = serde_json::json!({
        "origin": "demo measurements API",
        "method": request.method.as_str(),
        "path": request.uri.path(),
        "query": request.uri.query(),
        "consumer": header("x-consumer-username"),
        "consumer_id": header("x-consumer-id"),
        "forwarded_for": header("x-forwarded-for"),
        "body_bytes": body.len(),
    });
    json(200, &answer)
}

fn auth_answer(request: &hyper::http::request::Parts) -> hyper::Response<Full<Bytes>> {
    let key = request
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("apikey="))
        .unwrap_or("");
    match DEMO_KEYS.iter().find(|(k, _, _)| *k == key) {
        Some((_, username, custom_id)) => json(
            200,
            &serde_json::json!({
                "consumer": {"id": format!("{username}-id"), "username": username, "custom_id": custom_id},
                "credential_id": format!("{username}-credential"),
            }),
        ),
        None => json(401, &serde_json::json!({"message": "unknown key"})),
    }
}

fn json(status: u16, value: &serde_json::Value) -> hyper::Response<Full<Bytes>> {
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())))
        .expect("static parts form a valid response")
}

/// A tiny loopback HTTP server answering with `answer(request head, whole body)`.
async fn spawn_server(
    answer: fn(hyper::http::request::Parts, Bytes) -> hyper::Response<Full<Bytes>>,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding a demo server on 127.0.0.1")?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| async move {
                    let (parts, body) = request.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    Ok::<_, Infallible>(answer(parts, body))
                },
            );
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    Ok(addr)
}
