//! Keys found in and removed from form, JSON and multipart bodies.

use super::*;

fn text(s: &str) -> BodyValue {
    BodyValue::Text(s.to_string())
}

#[test]
fn content_types_are_recognised_like_kong() {
    assert_eq!(
        BodyKind::of("application/x-www-form-urlencoded"),
        Some(BodyKind::Form)
    );
    assert_eq!(
        BodyKind::of("Application/JSON; charset=utf-8"),
        Some(BodyKind::Json)
    );
    assert_eq!(
        BodyKind::of("multipart/form-data; boundary=\"xyz\""),
        Some(BodyKind::Multipart {
            boundary: Some("xyz".into())
        })
    );
    assert_eq!(BodyKind::of("text/plain"), None);
}

#[test]
fn form_fields_follow_get_post_args() {
    assert_eq!(form_value("a=1&apikey=k%2B1+x", "apikey"), text("k+1 x"));
    assert_eq!(form_value("apikey=a&apikey=b", "apikey"), BodyValue::Table);
    assert_eq!(form_value("apikey", "apikey"), BodyValue::Other);
    assert_eq!(form_value("apikey[]=a", "apikey"), BodyValue::Absent);
    assert_eq!(form_value("apikey=", "apikey"), text(""));
    assert_eq!(
        form_remove("a=1&apikey=k&b=2", "apikey").as_deref(),
        Some("a=1&b=2")
    );
    assert_eq!(form_remove("a=1", "apikey"), None);
}

#[test]
fn json_fields_follow_cjson() {
    assert_eq!(json_value(r#"{"apikey":"k","a":1}"#, "apikey"), text("k"));
    assert_eq!(
        json_value(r#"{"apikey":["a","b"]}"#, "apikey"),
        BodyValue::Table
    );
    assert_eq!(
        json_value(r#"{"apikey":{"a":1}}"#, "apikey"),
        BodyValue::Table
    );
    assert_eq!(json_value(r#"{"apikey":12}"#, "apikey"), BodyValue::Other);
    assert_eq!(
        json_value(r#"{"apikey":"a","apikey":"b"}"#, "apikey"),
        text("b")
    );
    assert_eq!(
        json_value(r#"{"nested":{"apikey":"k"}}"#, "apikey"),
        BodyValue::Absent
    );
    assert_eq!(json_value(r#"["apikey"]"#, "apikey"), BodyValue::Absent);
    assert_eq!(json_value("{not json", "apikey"), BodyValue::Absent);
    assert_eq!(
        json_remove(
            r#"{ "a": [1, 2.50], "apikey": "k", "z": {"x": null} }"#,
            "apikey"
        )
        .as_deref(),
        Some(r#"{"a":[1, 2.50],"z":{"x": null}}"#)
    );
    assert_eq!(
        json_remove(r#"{"apikey":"k"}"#, "apikey").as_deref(),
        Some("{}")
    );
    assert_eq!(json_remove(r#"{"a":1}"#, "apikey"), None);
}

/// Found by `cargo fuzz run credentials`: a JSON body with invalid UTF-8 had its key
/// found (the lookup reads it lossily) but kept (the removal wanted strict UTF-8), so
/// `hide_credentials` forwarded the key to the origin.
#[test]
fn a_key_found_in_a_json_body_that_is_not_utf8_is_removed() {
    let body = b"{\"apikey\":\"k1\",\"x\":\"\xff\xfe\"}";
    assert_eq!(BodyKind::Json.value(body, "apikey"), text("k1"));
    let forwarded = BodyKind::Json
        .remove(body, "apikey")
        .expect("the key is removed");
    assert_eq!(
        BodyKind::Json.value(&forwarded, "apikey"),
        BodyValue::Absent
    );
    assert_eq!(
        String::from_utf8(forwarded).unwrap(),
        "{\"x\":\"\u{fffd}\u{fffd}\"}"
    );
}

const MULTIPART: &str = "--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--XyZ\r\nContent-Disposition: form-data; name=\"apikey\"\r\n\r\nkey-1\r\n--XyZ\r\ncontent-disposition: form-data; name=\"file\"; filename=\"f.txt\"\r\nContent-Type: text/plain\r\n\r\nline1\r\nline2\r\n--XyZ\r\nContent-Disposition: form-data; name=\"apikey\"\r\n\r\nkey-2\r\n--XyZ--\r\n";

#[test]
fn multipart_fields_follow_lua_multipart() {
    let body = MULTIPART.as_bytes();
    assert_eq!(
        multipart_value(body, "XyZ", "apikey"),
        text("key-1"),
        "first wins"
    );
    assert_eq!(multipart_value(body, "XyZ", "file"), text("line1\r\nline2"));
    assert_eq!(multipart_value(body, "other", "apikey"), BodyValue::Absent);
    let removed = multipart_remove(body, "XyZ", "apikey").unwrap();
    let removed = String::from_utf8(removed).unwrap();
    assert!(
        !removed.contains("apikey") && !removed.contains("key-"),
        "{removed}"
    );
    assert_eq!(
        multipart_value(removed.as_bytes(), "XyZ", "file"),
        text("line1\r\nline2")
    );
    assert!(removed.ends_with("line2\r\n--XyZ--\r\n"), "{removed}");
}

#[test]
fn multipart_boundaries_are_read_from_the_content_type() {
    assert_eq!(
        multipart_boundary("multipart/form-data; boundary=abc").as_deref(),
        Some("abc")
    );
    assert_eq!(
        multipart_boundary("multipart/form-data;boundary=\"a b\"").as_deref(),
        Some("\"a")
    );
    assert_eq!(multipart_boundary("multipart/form-data"), None);
}
