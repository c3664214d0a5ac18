use super::*;
use crate::GuestConfig;

const EXAMPLE: &str = include_str!("../../../examples/keygate.toml");

#[test]
fn the_shipped_example_loads() {
    let config = Config::from_toml(EXAMPLE).unwrap();
    assert_eq!(
        config.services[0].routes[0].paths,
        vec![RoutePath::Prefix("/results".into())]
    );
    assert!(config.services[0].routes[0].strip_path, "Kong's default");
    assert_eq!(config.key_auth.key_names, vec!["apikey"]);
}

#[test]
fn guest_config_round_trips_as_json_without_raw_keys() {
    let config = Config::from_toml(EXAMPLE).unwrap();
    let json = config.guest_config().to_json();
    assert!(!json.contains("demo-key-1"), "raw key leaked: {json}");
    assert_eq!(
        GuestConfig::from_json(&json).unwrap(),
        config.guest_config()
    );
}

fn error_of(toml: &str) -> String {
    Config::from_toml(toml).unwrap_err().to_string()
}

#[test]
fn unknown_fields_name_the_field_and_line() {
    let err = error_of("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n");
    assert!(err.contains("line 3") && err.contains("lisen"), "{err}");
}

#[test]
fn bad_values_name_the_field() {
    let err = error_of("[auth_api]\nurl = \"http://a/{key}\"\ntimeout = \"soon\"\n");
    assert!(
        err.contains("timeout") && err.contains("invalid duration"),
        "{err}"
    );
    let err = error_of("[auth_api]\nurl = \"http://a/validate\"\n");
    assert!(
        err.contains("auth_api.url") && err.contains("{key}"),
        "{err}"
    );
    let err = error_of("[[services]]\nname = \"a\"\nurl = \"ftp://a\"\n");
    assert!(err.contains("line 3") && err.contains("not http"), "{err}");
    let err = error_of(
        "[[services]]\nname = \"a\"\nurl = \"http://a\"\n[[services.routes]]\npaths = [\"~/x(\"]\n",
    );
    assert!(
        err.contains("line 5") && err.contains("invalid regex"),
        "{err}"
    );
    let err = error_of(
        "[[services]]\nname = \"a\"\nurl = \"http://a\"\n[[services.routes]]\nmethods = [\"get\"]\n",
    );
    assert!(err.contains("services[0].routes[0].methods[0]"), "{err}");
}

#[test]
fn anonymous_must_name_a_consumer() {
    let base = "[[consumers]]\nusername = \"guest\"\n";
    for name in ["guest", &crate::fingerprint::consumer_uuid("guest")] {
        let toml = format!("[key_auth]\nanonymous = \"{name}\"\n{base}");
        let config = Config::from_toml(&toml).unwrap();
        assert!(config.anonymous_consumer(name).is_some());
    }
    let err = error_of(&format!("[key_auth]\nanonymous = \"nobody\"\n{base}"));
    assert!(
        err.contains("key_auth.anonymous") && err.contains("nobody"),
        "{err}"
    );
}

#[test]
fn route_headers_are_validated() {
    let route = |headers: &str| {
        format!(
            "[[services]]\nname = \"a\"\nurl = \"http://a\"\n[[services.routes]]\nheaders = {headers}\n"
        )
    };
    let config = Config::from_toml(&route("{ x-version = [\"v1\", \"~*^v2\"] }")).unwrap();
    assert_eq!(config.services[0].routes[0].headers["x-version"].len(), 2);
    let err = error_of(&route("{ Host = [\"a\"] }"));
    assert!(err.contains("services[0].routes[0].headers.Host"), "{err}");
    let err = error_of(&route("{ x-a = [] }"));
    assert!(err.contains("at least one value"), "{err}");
    let err = error_of(&route("{ x-a = [\"~*(\"] }"));
    assert!(
        err.contains("headers.x-a[0]") && err.contains("invalid regex"),
        "{err}"
    );
}

fn route_with(field: &str) -> String {
    format!(
        "[[services]]\nname = \"a\"\nurl = \"http://a\"\n[[services.routes]]\npaths = [\"/\"]\n{field}"
    )
}

#[test]
fn max_body_size_parses_like_the_other_sizes() {
    let size = |field: &str| {
        Config::from_toml(&route_with(field)).unwrap().services[0].routes[0]
            .max_body_size
            .map(ByteSize::bytes)
    };
    assert_eq!(size("max_body_size = \"1k\"\n"), Some(1024));
    assert_eq!(size("max_body_size = \"8m\"\n"), Some(8 << 20));
    assert_eq!(size("max_body_size = \"8M\"\n"), Some(8 << 20));
    assert_eq!(size("max_body_size = 1500\n"), Some(1500));
    assert_eq!(size(""), None, "absent is no limit");
}

#[test]
fn max_body_size_refuses_what_is_not_a_limit() {
    let err = error_of(&route_with("max_body_size = \"8 megs\"\n"));
    assert!(
        err.contains("line 6") && err.contains("invalid size"),
        "{err}"
    );
    let err = error_of(&route_with("max_body_size = -1\n"));
    assert!(err.contains("line 6"), "{err}");
    let err = error_of(&route_with("max_body_size = 0\n"));
    assert!(
        err.contains("services[0].routes[0].max_body_size") && err.contains("no limit"),
        "{err}"
    );
}

#[test]
fn max_body_size_reaches_the_guest_and_absent_changes_no_revision() {
    let config = Config::from_toml(&route_with("max_body_size = \"2k\"\n")).unwrap();
    let guest = GuestConfig::from_json(&config.guest_config().to_json()).unwrap();
    assert_eq!(
        guest.services[0].routes[0].max_body_size,
        Some(ByteSize(2048))
    );
    let config = Config::from_toml(&route_with("")).unwrap();
    let json = serde_json::to_string(&config).unwrap();
    assert!(!json.contains("max_body_size"), "{json}");
}

#[test]
fn proxy_compat_and_body_size_sections_parse() {
    let config = Config::from_toml(
        "[proxy]\ntrusted_ips = [\"10.0.0.0/8\", \"::1\"]\n[compat]\nheaders = \"kong\"\nerror_default_type = \"text/plain\"\n[key_auth]\nkey_in_body = true\nbody_buffer_size = \"16k\"\n",
    )
    .unwrap();
    assert_eq!(config.proxy.trusted_ips.len(), 2);
    assert_eq!(config.compat.headers, crate::HeaderStyle::Kong);
    assert_eq!(config.key_auth.body_buffer_size.bytes(), 16 * 1024);
    let guest = config.guest_config();
    assert_eq!(guest.trusted_ips, config.proxy.trusted_ips);
    assert_eq!(GuestConfig::from_json(&guest.to_json()).unwrap(), guest);
    let err = error_of("[proxy]\ntrusted_ips = [\"10.0.0.0/40\"]\n");
    assert!(
        err.contains("trusted_ips") && err.contains("prefix"),
        "{err}"
    );
    let err = error_of("[compat]\nheaders = \"nginx\"\n");
    assert!(err.contains("headers"), "{err}");
}
