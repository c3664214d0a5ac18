//! A guest that misbehaves on purpose, to prove the host contains it: `/trap` panics (a wasm
//! trap), `/loop` spins forever, `/loop-on-host` spins calling the host (the clock) on every
//! turn, `/wait` waits 600 ms on a timer before answering (waiting is not being busy;
//! `/wait?ms=N` waits N ms), `/grow` allocates past any sane memory limit; anything else
//! answers 200 `ok` so the test can show the next request is served normally. `/count` answers
//! how many requests this instance has served, to observe instance reuse.

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Misbehaving;

static SERVED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl wasip2::exports::http::incoming_handler::Guest for Misbehaving {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let served = SERVED.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        match request.path_with_query().as_deref() {
            Some("/trap") => panic!("trap requested"),
            Some("/loop") => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            Some("/loop-on-host") => loop {
                std::hint::black_box(wasip2::clocks::monotonic_clock::now());
            },
            Some(path) if path == "/wait" || path.starts_with("/wait?") => {
                let ms: u64 = path
                    .strip_prefix("/wait?ms=")
                    .and_then(|ms| ms.parse().ok())
                    .unwrap_or(600);
                wasip2::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
                answer(out, "waited");
            }
            Some("/grow") => {
                let mut hog: Vec<Vec<u8>> = Vec::new();
                loop {
                    hog.push(vec![1u8; 16 << 20]);
                    std::hint::black_box(&hog);
                }
            }
            path => {
                let text = if path == Some("/count") {
                    served.to_string()
                } else {
                    "ok".to_string()
                };
                answer(out, &text);
            }
        }
    }
}

fn answer(out: ResponseOutparam, text: &str) {
    let response = OutgoingResponse::new(Fields::new());
    let body = response.body().expect("fresh response has a body");
    ResponseOutparam::set(out, Ok(response));
    let stream = body.write().expect("fresh body has a stream");
    stream
        .blocking_write_and_flush(text.as_bytes())
        .expect("write");
    drop(stream);
    OutgoingBody::finish(body, None).expect("finish");
}

#[cfg(target_arch = "wasm32")]
wasip2::http::proxy::export!(Misbehaving);
