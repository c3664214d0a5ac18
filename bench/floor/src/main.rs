//! The floor of a gateway built on hyper: what keygate's request path costs without the guest,
//! the plan checks, the smuggling and timeout guards, metrics and logs. One current-thread
//! runtime per CPU on a shared listener (keygate's layout), a pooled hyper-util client per
//! thread, the key looked up in a set: keys `key000000`..`key000099` in the `apikey` header,
//! the origin on 127.0.0.1:18080 (the shared rig's), listening on 127.0.0.1:18095 (its
//! candidate's address). `bench/README.md` says what it measured.

use http_body_util::{Either, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashSet;
use std::rc::Rc;

const LISTEN: &str = "127.0.0.1:18095";
const ORIGIN: &str = "http://127.0.0.1:18080";

type Answer = Response<Either<Incoming, Full<Bytes>>>;

fn main() {
    let listener = std::net::TcpListener::bind(LISTEN).expect("binding 127.0.0.1:18095");
    listener
        .set_nonblocking(true)
        .expect("a non-blocking listener");
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let listener = listener.try_clone().expect("sharing the listener");
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a tokio runtime");
                tokio::task::LocalSet::new().block_on(&runtime, serve(listener));
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
}

async fn serve(listener: std::net::TcpListener) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("registering the listener");
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build_http();
    let keys: Rc<HashSet<String>> = Rc::new((0..100).map(|k| format!("key{k:06}")).collect());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (client, keys) = (client.clone(), Rc::clone(&keys));
        tokio::task::spawn_local(async move {
            let service = hyper::service::service_fn(move |request| {
                answer(client.clone(), Rc::clone(&keys), request)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    client: Client<HttpConnector, Incoming>,
    keys: Rc<HashSet<String>>,
    request: Request<Incoming>,
) -> Result<Answer, hyper_util::client::legacy::Error> {
    let valid = request
        .headers()
        .get("apikey")
        .and_then(|key| key.to_str().ok())
        .is_some_and(|key| keys.contains(key));
    if !valid {
        let mut refused = Response::new(Either::Right(Full::new(Bytes::from_static(
            b"{\"message\":\"Invalid authentication credentials\"}",
        ))));
        *refused.status_mut() = StatusCode::UNAUTHORIZED;
        return Ok(refused);
    }
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |path| path.as_str());
    parts.uri = match format!("{ORIGIN}{path}").parse() {
        Ok(uri) => uri,
        Err(_) => {
            let mut refused = Response::new(Either::Right(Full::default()));
            *refused.status_mut() = StatusCode::BAD_REQUEST;
            return Ok(refused);
        }
    };
    let response = client.request(Request::from_parts(parts, body)).await?;
    Ok(response.map(Either::Left))
}
