//! Kong §1 key-auth: hide_credentials, preflight, realm, anonymous, consumer headers.

use super::super::*;

#[tokio::test]
async fn hide_credentials_removes_the_header_and_the_query_argument() {
    let (origin, gw) = gateway("[key_auth]\nhide_credentials = true\n").await;
    let reply = get(gw.addr, "/api/x?a=1&apikey=alice-key&b=2", &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(origin.last().uri, "/base/x?a=1&b=2");
    // Kong clears both places for the name that matched, wherever the key was.
    get(gw.addr, "/api/x?apikey=other", &[("apikey", "alice-key")]).await;
    let seen = origin.last();
    assert_eq!(seen.uri, "/base/x", "no argument left, no `?`");
    assert_eq!(seen.header("apikey"), None);
    let (origin, gw) =
        gateway("[key_auth]\nhide_credentials = true\nkey_names = [\"api_key\"]\n").await;
    get(
        gw.addr,
        "/api/x",
        &[("api-key", "alice-key"), ("x-other", "1")],
    )
    .await;
    let seen = origin.last();
    assert_eq!(
        seen.header("api-key"),
        None,
        "the dashed spelling is hidden too"
    );
    assert_eq!(seen.header("x-other"), Some("1"));
}

#[tokio::test]
async fn hide_credentials_removes_the_form_field_and_fixes_the_length() {
    let (origin, gw) = gateway("[key_auth]\nkey_in_body = true\nhide_credentials = true\n").await;
    let reply = send_body(
        gw.addr,
        "POST",
        "/api/x",
        &[FORM],
        "a=1&apikey=alice-key&b=%20",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = origin.last();
    assert_eq!(seen.body_text(), "a=1&b=%20");
    assert_eq!(seen.header("content-length"), Some("9"));
}

#[tokio::test]
async fn hide_credentials_removes_the_json_field() {
    let (origin, gw) = gateway("[key_auth]\nkey_in_body = true\nhide_credentials = true\n").await;
    let body = r#"{"z": [1, 2.50], "apikey": "alice-key", "a": {"b": null}}"#;
    let reply = send_body(gw.addr, "POST", "/api/x", &[JSON], body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = origin.last();
    assert_eq!(seen.body_text(), r#"{"z":[1, 2.50],"a":{"b": null}}"#);
    assert_eq!(
        seen.header("content-length"),
        Some(seen.body.len().to_string().as_str())
    );
}

#[tokio::test]
async fn hide_credentials_removes_the_multipart_part() {
    let (origin, gw) = gateway("[key_auth]\nkey_in_body = true\nhide_credentials = true\n").await;
    let keep = "--xx\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhi\r\n";
    let body = format!(
        "{keep}--xx\r\nContent-Disposition: form-data; name=\"apikey\"\r\n\r\nalice-key\r\n--xx--\r\n"
    );
    let reply = send_body(
        gw.addr,
        "POST",
        "/api/x",
        &[("content-type", "multipart/form-data; boundary=xx")],
        body,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(origin.last().body_text(), format!("{keep}--xx--\r\n"));
}

#[tokio::test]
async fn hide_credentials_also_removes_a_body_field_when_the_key_was_in_a_header() {
    let (origin, gw) = gateway("[key_auth]\nkey_in_body = true\nhide_credentials = true\n").await;
    let reply = send_body(
        gw.addr,
        "POST",
        "/api/x",
        &[FORM, ("apikey", "alice-key")],
        "apikey=second-copy&x=1",
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(origin.last().body_text(), "x=1");
}

#[tokio::test]
async fn run_on_preflight_false_lets_options_through_without_a_key() {
    let (origin, gw) = gateway("").await;
    let reply = send_body(gw.addr, "OPTIONS", "/api/x", &[], "").await;
    assert_refused(&reply, 401, "No API key found in request");
    let (origin2, gw) = gateway("[key_auth]\nrun_on_preflight = false\n").await;
    let forged = [
        ("x-consumer-id", "forged"),
        ("x-anonymous-consumer", "true"),
    ];
    let reply = send_body(gw.addr, "OPTIONS", "/api/x", &forged, "").await;
    assert_eq!(reply.status, 200);
    let seen = origin2.last();
    assert_eq!(
        seen.header("x-consumer-id"),
        None,
        "client copies never pass"
    );
    assert_eq!(seen.header("x-anonymous-consumer"), None);
    assert_eq!(origin.hits(), 0);
    let reply = send_body(gw.addr, "GET", "/api/x", &[], "").await;
    assert_eq!(reply.status, 401, "only OPTIONS skips the key");
}

#[tokio::test]
async fn www_authenticate_is_on_every_401() {
    let (_origin, gw) = gateway("").await;
    let dup = [("apikey", "a"), ("apikey", "b")];
    for reply in [
        get(gw.addr, "/api/x", &[]).await,
        get(gw.addr, "/api/x", &[("apikey", "wrong")]).await,
        get(gw.addr, "/api/x", &dup).await,
    ] {
        assert_eq!(reply.status, 401);
        assert_eq!(
            reply.header("www-authenticate"),
            Some("Key"),
            "{}",
            reply.text()
        );
    }
}

#[tokio::test]
async fn realm_is_sent_in_www_authenticate() {
    let (_origin, gw) = gateway("[key_auth]\nrealm = \"orders\"\n").await;
    for reply in [
        get(gw.addr, "/api/x", &[]).await,
        get(gw.addr, "/api/x", &[("apikey", "wrong")]).await,
    ] {
        assert_eq!(
            reply.header("www-authenticate"),
            Some("Key realm=\"orders\"")
        );
    }
}

#[tokio::test]
async fn anonymous_consumer_is_used_when_the_key_is_missing_or_invalid() {
    let (origin, gw) =
        gateway("[key_auth]\nanonymous = \"anonymous-user\"\nhide_credentials = true\n").await;
    let forged = [
        ("x-credential-identifier", "forged"),
        ("x-anonymous-consumer", "false"),
    ];
    for headers in [
        forged.to_vec(),
        [&forged[..], &[("apikey", "a"), ("apikey", "b")]].concat(),
        [&forged[..], &[("apikey", "wrong")]].concat(),
    ] {
        let reply = get(gw.addr, "/api/x", &headers).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let seen = origin.last();
        assert_eq!(seen.header_all("x-anonymous-consumer"), vec!["true"]);
        assert_eq!(
            seen.header("x-consumer-id"),
            Some(consumer_uuid("anonymous-user").as_str())
        );
        assert_eq!(seen.header("x-consumer-username"), Some("anonymous-user"));
        assert_eq!(seen.header("x-consumer-custom-id"), Some("anon"));
        assert_eq!(seen.header("x-credential-identifier"), None);
    }
    assert_eq!(
        origin.last().header("apikey"),
        None,
        "hide_credentials applies to the invalid key too"
    );
    get(
        gw.addr,
        "/api/x",
        &[("apikey", "alice-key"), ("x-anonymous-consumer", "true")],
    )
    .await;
    let seen = origin.last();
    assert_eq!(seen.header("x-anonymous-consumer"), None);
    assert_eq!(seen.header("x-consumer-username"), Some("alice"));
}

#[tokio::test]
async fn anonymous_consumer_can_be_named_by_id() {
    let id = consumer_uuid("anonymous-user");
    let (origin, gw) = gateway(&format!("[key_auth]\nanonymous = \"{id}\"\n")).await;
    assert_eq!(get(gw.addr, "/api/x", &[]).await.status, 200);
    assert_eq!(origin.last().header("x-consumer-id"), Some(id.as_str()));
}

#[tokio::test]
async fn anonymous_is_not_used_when_the_auth_api_cannot_answer() {
    let origin = Origin::start("api").await;
    let auth = AuthApi::start().await;
    auth.set_down(true);
    let sections = format!(
        "[key_auth]\nanonymous = \"anonymous-user\"\n[auth_api]\nurl = \"http://{}/validate?apikey={{key}}\"\n",
        auth.addr
    );
    let gw = start_gateway(&config(&origin, &sections, API_ROUTE)).await;
    let reply = get(gw.addr, "/api/x", &[("apikey", "maybe-valid")]).await;
    assert_refused(
        &reply,
        503,
        "The authentication service is currently unavailable",
    );
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn anonymous_must_name_a_configured_consumer() {
    let origin = Origin::start("api").await;
    let toml = config(&origin, "[key_auth]\nanonymous = \"ghost\"\n", API_ROUTE);
    let err = keygate::config::parse(&toml, None).unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("key_auth.anonymous") && err.contains("ghost"),
        "{err}"
    );
}

#[tokio::test]
async fn consumer_headers_are_set_or_removed_exactly() {
    let origin = Origin::start("api").await;
    let auth = AuthApi::start().await;
    auth.allow("api-key-1", json!({"consumer": {"username": "carol"}}));
    let sections = format!(
        "[auth_api]\nurl = \"http://{}/validate?apikey={{key}}\"\n",
        auth.addr
    );
    let gw = start_gateway(&config(&origin, &sections, API_ROUTE)).await;
    let forged = [
        ("x-consumer-id", "forged"),
        ("x-consumer-custom-id", "forged"),
        ("x-consumer-username", "forged"),
        ("x-credential-identifier", "forged"),
        ("x-anonymous-consumer", "true"),
    ];
    get(
        gw.addr,
        "/api/x",
        &[&forged[..], &[("apikey", "bob-key")]].concat(),
    )
    .await;
    let seen = origin.last();
    assert_eq!(
        seen.header_all("x-consumer-id"),
        vec![consumer_uuid("bob").as_str()]
    );
    assert_eq!(seen.header_all("x-consumer-username"), vec!["bob"]);
    assert_eq!(
        seen.header("x-consumer-custom-id"),
        None,
        "bob has none: removed"
    );
    assert_eq!(
        seen.header_all("x-credential-identifier"),
        vec![credential_uuid(&fingerprint("bob-key")).as_str()],
        "static keys have a stable credential id"
    );
    assert_eq!(seen.header("x-anonymous-consumer"), None);
    // An auth API answer without id or credential: those headers are removed.
    get(
        gw.addr,
        "/api/x",
        &[&forged[..], &[("apikey", "api-key-1")]].concat(),
    )
    .await;
    let seen = origin.last();
    assert_eq!(seen.header_all("x-consumer-username"), vec!["carol"]);
    for name in [
        "x-consumer-id",
        "x-consumer-custom-id",
        "x-credential-identifier",
    ] {
        assert_eq!(seen.header(name), None, "{name}");
    }
}

// ---------------------------------------------------------------------------------------
