//! Native forwarding's helpers, without a network.

use super::*;

#[test]
fn via_keeps_every_value_the_origin_sent_then_ours() {
    let ours = http::HeaderValue::from_static("1.1 keygate");
    let mut headers = http::HeaderMap::new();
    assert_eq!(joined_via(&headers, ours.clone()), "1.1 keygate");
    headers.append(http::header::VIA, "1.1 a".parse().unwrap());
    headers.append(http::header::VIA, "1.0 b, 1.1 c".parse().unwrap());
    assert_eq!(
        joined_via(&headers, ours),
        "1.1 a, 1.0 b, 1.1 c, 1.1 keygate"
    );
}
