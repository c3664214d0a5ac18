//! Kong §6 error responses.

use super::super::*;

#[tokio::test]
async fn error_body_is_kongs_json_template_byte_for_byte() {
    let (_origin, gw) = gateway("").await;
    let reply = get(gw.addr, "/api/x", &[]).await;
    let id = reply.header("x-request-id").unwrap().to_string();
    assert!(is_hex_id(&id), "{id}");
    assert_eq!(
        reply.text(),
        format!(
            "{{\n  \"message\":\"No API key found in request\",\n  \"request_id\":\"{id}\"\n}}"
        )
    );
    assert_eq!(
        reply.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(
        reply.header("content-length"),
        Some(reply.body.len().to_string().as_str())
    );
}

#[tokio::test]
async fn errors_negotiate_their_format_from_accept() {
    let (_origin, gw) = gateway("").await;
    let addr = gw.addr;
    let ask =
        |accept: &'static str| async move { get(addr, "/api/x", &[("accept", accept)]).await };
    let reply = ask("text/plain").await;
    let id = reply.header("x-request-id").unwrap().to_string();
    assert_eq!(
        reply.text(),
        format!("No API key found in request\nrequest_id: {id}\n")
    );
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; charset=utf-8")
    );

    let reply = ask("text/html").await;
    let id = reply.header("x-request-id").unwrap().to_string();
    assert_eq!(
        reply.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(
        reply.text().starts_with("<!doctype html>\n<html>\n"),
        "{}",
        reply.text()
    );
    assert!(
        reply.text().contains(&format!(
            "<p>No API key found in request.</p>\n    <p>request_id: {id}</p>"
        )),
        "{}",
        reply.text()
    );

    let reply = ask("application/xml").await;
    let id = reply.header("x-request-id").unwrap().to_string();
    assert_eq!(
        reply.header("content-type"),
        Some("application/xml; charset=utf-8")
    );
    assert_eq!(
        reply.text(),
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<error>\n  <message>No API key found in request</message>\n  <requestid>{id}</requestid>\n</error>\n"
        )
    );

    for (accept, content_type) in [
        (
            "text/html;q=0.5, application/xml;q=0.9",
            "application/xml; charset=utf-8",
        ),
        (
            "text/html;q=0, text/plain;q=0.1",
            "text/plain; charset=utf-8",
        ),
        ("text/*", "text/plain; charset=utf-8"),
        ("*/*", "application/json; charset=utf-8"),
        ("image/png, text/html", "application/json; charset=utf-8"),
    ] {
        let reply = ask(accept).await;
        assert_eq!(reply.header("content-type"), Some(content_type), "{accept}");
    }
}

#[tokio::test]
async fn every_response_carries_a_request_id_header() {
    let (origin, gw) = gateway("").await;
    for reply in [
        get(gw.addr, "/api/x", &[]).await,
        get(gw.addr, "/nowhere", &[]).await,
        get(gw.addr, "/api/x", &[("apikey", "alice-key")]).await,
    ] {
        let id = reply.header("x-request-id").unwrap_or_default();
        assert!(is_hex_id(id), "{} {id:?}", reply.status);
    }
    let reply = get(gw.addr, "/api/x", &[("apikey", "alice-key")]).await;
    assert_eq!(
        origin.last().header("x-request-id"),
        reply.header("x-request-id"),
        "the origin sees the id the client gets"
    );
}

#[tokio::test]
async fn unmatched_request_is_404_no_route_matched_with_those_values() {
    let (origin, gw) = gateway("").await;
    let reply = get(gw.addr, "/elsewhere", &[("apikey", "alice-key")]).await;
    assert_refused(&reply, 404, "no Route matched with those values");
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn refused_origin_is_502_in_kongs_words() {
    let origin = Origin::start("api").await;
    let dead = closed_port().await;
    let toml = config(&origin, "", API_ROUTE).replace(&origin.addr.to_string(), &dead.to_string());
    let gw = start_gateway(&toml).await;
    let reply = get(gw.addr, "/api/x", &[("apikey", "alice-key")]).await;
    assert_refused(
        &reply,
        502,
        "An invalid response was received from the upstream server",
    );
}

#[tokio::test]
async fn slow_origin_is_504_in_kongs_words() {
    let origin = Origin::start("api").await;
    let toml =
        config(&origin, "", API_ROUTE).replace("/base\"\n", "/base\"\nread_timeout = \"150ms\"\n");
    let gw = start_gateway(&toml).await;
    let reply = get(
        gw.addr,
        "/api/x",
        &[("apikey", "alice-key"), ("x-test-delay-ms", "2000")],
    )
    .await;
    assert_refused(&reply, 504, "The upstream server is timing out");
}

#[tokio::test]
async fn upstream_errors_use_accept_then_content_type_then_error_default_type() {
    let origin = Origin::start("api").await;
    let dead = closed_port().await;
    let toml = config(
        &origin,
        "[compat]\nerror_default_type = \"text/plain\"\n",
        API_ROUTE,
    )
    .replace(&origin.addr.to_string(), &dead.to_string());
    let gw = start_gateway(&toml).await;
    let key = ("apikey", "alice-key");
    let reply = get(gw.addr, "/api/x", &[key]).await;
    let id = reply.header("x-request-id").unwrap().to_string();
    assert_eq!(reply.status, 502);
    assert_eq!(
        reply.text(),
        format!("An invalid response was received from the upstream server\nrequest_id: {id}\n")
    );
    let reply = send_body(gw.addr, "POST", "/api/x", &[key, JSON], "{}").await;
    assert_eq!(
        reply.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    let reply = get(gw.addr, "/api/x", &[key, ("accept", "application/xml")]).await;
    assert_eq!(
        reply.header("content-type"),
        Some("application/xml; charset=utf-8")
    );
    // A plugin's error (401) ignores Content-Type and the default: JSON.
    let reply = get(gw.addr, "/api/x", &[]).await;
    assert_eq!(
        reply.header("content-type"),
        Some("application/json; charset=utf-8")
    );
}

// ---------------------------------------------------------------------------------------
