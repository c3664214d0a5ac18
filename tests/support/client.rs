//! A minimal HTTP/1.1 client for tests: one connection per request unless told otherwise.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use tokio::net::TcpStream;

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|err| panic!("body is not JSON ({err}): {}", self.text()))
    }
}

/// Build a request to `addr` (path may carry a query).
pub fn request(method: &str, addr: SocketAddr, path: &str) -> http::request::Builder {
    http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string())
}

/// Send one request with any body on a fresh connection; the reply body is left to stream.
pub async fn open<B>(
    addr: SocketAddr,
    request: http::Request<B>,
) -> hyper::Response<hyper::body::Incoming>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.expect("connect to gateway");
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP handshake");
    tokio::spawn(connection);
    sender.send_request(request).await.expect("response head")
}

/// Send one request on a fresh connection and read the whole reply.
pub async fn send(addr: SocketAddr, request: http::Request<Full<Bytes>>) -> Reply {
    let (parts, body) = open(addr, request).await.into_parts();
    let body = body.collect().await.expect("response body").to_bytes();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

/// `GET path` with optional headers.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = request("GET", addr, path)
        .body(Full::new(Bytes::new()))
        .unwrap();
    for (name, value) in headers {
        let name = http::HeaderName::try_from(*name).unwrap();
        let value = http::HeaderValue::try_from(*value).unwrap();
        if name == http::header::HOST {
            request.headers_mut().insert(name, value);
        } else {
            request.headers_mut().append(name, value);
        }
    }
    send(addr, request).await
}
