//! `keygate import-kong`: Kong declarative files in, a keygate.toml that `keygate check`
//! accepts (and that serves the same endpoints) out, the report on stderr.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use support::Origin;
use support::client::get;
use support::process::{KEYGATE, run};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/kong")
        .join(name)
}

/// `keygate import-kong ARGS…` with only the given `DECK_` variables set.
fn import(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(KEYGATE);
    command.arg("import-kong").args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("DECK_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    command.output().expect("run keygate import-kong")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Import to a file in a fresh directory, assert success, run `keygate check` on the result.
fn import_and_check(name: &str, env: &[(&str, &str)]) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("keygate.toml");
    let output = import(
        &[
            fixture(name).to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        env,
    );
    let report = stderr(&output);
    assert!(output.status.success(), "import failed: {report}");
    assert!(output.stdout.is_empty(), "with --out, nothing on stdout");
    let check = run(&["check", "--config", out.to_str().unwrap()]);
    assert!(
        check.status.success(),
        "keygate check refused the import: {}\n{}",
        stderr(&check),
        std::fs::read_to_string(&out).unwrap()
    );
    (std::fs::read_to_string(&out).unwrap(), report)
}

fn config_of(toml: &str) -> keygate_policy::Config {
    keygate_policy::Config::from_toml(toml).unwrap()
}

const DECK_ENV: &[(&str, &str)] = &[
    ("DECK_BILLING_URL", "http://billing.internal:9000/api"),
    ("DECK_STATUS_HOST", "status.internal"),
];

#[test]
fn a_deck_3_file_with_nested_entities_imports_and_checks() {
    let (toml, report) = import_and_check("deck-3.0.yaml", DECK_ENV);
    let config = config_of(&toml);
    let billing = &config.services[0];
    assert_eq!(billing.name, "billing");
    assert_eq!(
        billing.url.clone().into_string(),
        "http://billing.internal:9000/api"
    );
    assert_eq!(billing.read_timeout.as_millis(), 5000);
    let invoices = &billing.routes[0];
    assert_eq!(invoices.name.as_deref(), Some("invoices"));
    assert_eq!(invoices.methods, ["GET"]);
    assert!(invoices.auth, "key-auth on the service covers its routes");
    let by_id = &billing.routes[1];
    assert_eq!(
        String::from(by_id.paths[0].clone()),
        r"~/billing/invoices/\d+$"
    );
    assert_eq!((by_id.regex_priority, by_id.strip_path), (10, false));
    let status = &config.services[1];
    assert_eq!(
        status.url.clone().into_string(),
        "http://status.internal:8080/health"
    );
    assert_eq!(status.routes[0].hosts, ["status.example.com"]);
    assert!(status.routes[0].preserve_host);
    assert!(
        !status.routes[0].auth,
        "no key-auth on this service: public"
    );
    // key-auth on one service: that service's own instance; [key_auth] keeps Kong's defaults.
    assert_eq!(config.key_auth.key_names, ["apikey"]);
    let billing_auth = config
        .plugins
        .iter()
        .find_map(|p| {
            p.key_auth()
                .filter(|_| p.service.as_deref() == Some("billing"))
        })
        .expect("billing's key-auth instance");
    assert_eq!(billing_auth.key_names, ["x-api-key"]);
    assert!(billing_auth.hide_credentials);

    let acme = &config.consumers[0];
    assert_eq!(
        acme.id.as_deref(),
        Some("1c9e4d2a-5b7f-4e0a-9a61-0d3f2c8b7e11")
    );
    assert_eq!(acme.custom_id.as_deref(), Some("acme-corp"));
    assert_eq!(acme.keys, ["acme-prod-7Qx"]);
    assert_eq!(
        acme.keys[0].id(),
        Some("7a2b3c4d-1e2f-4a5b-8c9d-0e1f2a3b4c5d"),
        "the credential's id is kept"
    );
    assert_eq!(
        config.consumers[1].keys,
        ["partner-key-1"],
        "top-level credential"
    );

    assert_eq!(
        config.plugins.len(),
        3,
        "two rate limits and billing's key-auth"
    );
    let service_limit = &config.plugins[0];
    assert_eq!(service_limit.service.as_deref(), Some("billing"));
    let rl = service_limit.rate_limiting().unwrap();
    assert_eq!((rl.minute, rl.hour), (Some(120.0), Some(5000.0)));
    assert_eq!(rl.policy, keygate_policy::plugins::Policy::Local);
    let pair = &config.plugins[1];
    assert_eq!(
        (pair.route.as_deref(), pair.consumer.as_deref()),
        (Some("invoices"), Some("partner"))
    );

    for expected in [
        "policy \"cluster\" mapped to \"local\"",
        "plugin correlation-id (service \"status\")",
        "route \"invoice-by-id\": snis ignored",
        "consumer \"partner\": has no id",
        "_info.select_tags",
        "key-auth credential of consumer \"partner\": has no id",
    ] {
        assert!(
            report.contains(expected),
            "{expected:?} not in the report:\n{report}"
        );
    }
    for key in ["acme-prod-7Qx", "partner-key-1"] {
        assert!(!report.contains(key), "the report printed a key:\n{report}");
    }
}

#[test]
fn a_1_1_file_turns_regex_looking_paths_into_regexes() {
    let (toml, report) = import_and_check("kong-1.1.yml", &[]);
    let config = config_of(&toml);
    let users = &config.services[0];
    let paths: Vec<String> = users
        .routes
        .iter()
        .map(|r| String::from(r.paths[0].clone()))
        .collect();
    assert_eq!(paths, [r"~/users/\d+$", "/users", "/search"]);
    assert_eq!(users.routes[2].methods, ["GET", "POST"], "top-level route");
    assert!(users.routes.iter().all(|r| r.auth), "global key-auth");
    assert!(!report.contains("_ignore"), "{report}");
}

#[test]
fn env_templates_are_substituted_and_a_missing_variable_is_named() {
    let (toml, _) = import_and_check("deck-3.0.yaml", DECK_ENV);
    assert!(toml.contains("status.internal"), "{toml}");
    let output = import(
        &[fixture("deck-3.0.yaml").to_str().unwrap()],
        &DECK_ENV[..1],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let err = stderr(&output);
    assert!(
        err.contains("DECK_STATUS_HOST") && err.contains("not set"),
        "{err}"
    );
}

#[test]
fn an_existing_output_is_kept_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("keygate.toml");
    std::fs::write(&out, "# mine\n").unwrap();
    let args = [
        fixture("kong-1.1.yml").to_str().unwrap().to_string(),
        "--out".into(),
        out.to_str().unwrap().into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = import(&args, &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("--force"), "{}", stderr(&output));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "# mine\n");

    let mut forced = args.clone();
    forced.push("--force");
    let output = import(&forced, &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        std::fs::read_to_string(&out)
            .unwrap()
            .contains("[[services]]")
    );
}

#[test]
fn unknown_plugins_are_warned_and_access_plugins_refused() {
    let (_, report) = import_and_check("deck-3.0.yaml", DECK_ENV);
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("warning: plugin correlation-id") && l.contains("skipped")),
        "{report}"
    );
    let output = import(&[fixture("refused.yaml").to_str().unwrap()], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty(), "nothing written when refused");
    let err = stderr(&output);
    assert!(
        err.contains("refused") && err.contains("plugin acl (route \"admin\")"),
        "{err}"
    );
}

#[test]
fn json_input_imports_to_stdout() {
    let output = import(&[fixture("kong.json").to_str().unwrap()], &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let toml = String::from_utf8(output.stdout.clone()).unwrap();
    let config = config_of(&toml);
    assert_eq!(
        config.services[0].url.clone().into_string(),
        "http://echo.internal:8080"
    );
    assert!(!config.services[0].routes[0].strip_path);
    assert_eq!(config.consumers[0].keys, ["bob-key"]);
    assert!(!stderr(&output).contains("bob-key"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_file_serves_kong_keys() {
    let origin = Origin::start("kong-origin").await;
    let addr = origin.addr.to_string();
    let output = import(
        &[fixture("serve.yaml").to_str().unwrap()],
        &[("DECK_ORIGIN", &addr)],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let toml = String::from_utf8(output.stdout.clone()).unwrap();
    let gateway = support::start_gateway_with(&toml, |config| {
        config.server.listen = "127.0.0.1:0".parse().unwrap();
    })
    .await;

    let ok = get(gateway.addr, "/orders/7", &[("apikey", "alice-key-1")]).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(origin.last().uri, "/v1/7");
    let seen = origin.last();
    assert_eq!(
        (
            seen.header("x-consumer-id"),
            seen.header("x-credential-identifier")
        ),
        (
            Some("9b2f6c1e-0d4a-4c3b-8e7f-1a2b3c4d5e6f"),
            Some("3e4f5a6b-7c8d-4e9f-a0b1-c2d3e4f5a6b7")
        ),
        "Kong's ids, unchanged by the migration"
    );
    let missing = get(gateway.addr, "/orders/7", &[]).await;
    assert_eq!(missing.status, 401);
    let wrong = get(gateway.addr, "/orders/7", &[("apikey", "nope")]).await;
    assert_eq!(wrong.status, 401);
    let public = get(gateway.addr, "/ping", &[]).await;
    assert_eq!(public.status, 200, "no key-auth on this service in Kong");
    assert_eq!(origin.hits(), 2);
}

/// `--fallback`: routes keygate cannot guard (an acl) stay with the old Kong, reached through a
/// last catch-all route with the client's Host and key; everything else is served by keygate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_fallback_routes_move_over_one_at_a_time() {
    let origin = Origin::start("billing").await;
    let kong = Origin::start("old-kong").await;
    let (origin_addr, kong_url) = (origin.addr.to_string(), format!("http://{}", kong.addr));
    let output = import(
        &[
            fixture("fallback.yaml").to_str().unwrap(),
            "--fallback",
            &kong_url,
        ],
        &[("DECK_ORIGIN", &origin_addr)],
    );
    let report = stderr(&output);
    assert!(output.status.success(), "{report}");
    assert!(
        report.contains("route \"admin\" left to Kong") && report.contains("plugin acl"),
        "{report}"
    );
    assert!(report.contains("trusted_ips"), "{report}");
    let toml = String::from_utf8(output.stdout.clone()).unwrap();
    let config = config_of(&toml);
    let routes: Vec<&str> = config
        .services
        .iter()
        .flat_map(|s| s.routes.iter().filter_map(|r| r.name.as_deref()))
        .collect();
    assert_eq!(routes, ["invoices", "kong-fallback"], "{toml}");
    assert!(
        config.plugins.iter().any(|p| p.prometheus().is_some()),
        "Kong's prometheus plugin is carried over: {toml}"
    );
    let targets: Vec<(String, u32)> = config.upstreams[0]
        .targets
        .iter()
        .map(|t| (t.target.clone(), t.weight))
        .collect();
    assert_eq!(
        targets,
        [(origin_addr.clone(), 100), ("10.9.9.9:8080".to_string(), 0)],
        "nested and top-level targets: {toml}"
    );
    let gateway = support::start_gateway_with(&toml, |config| {
        config.server.listen = "127.0.0.1:0".parse().unwrap();
    })
    .await;

    // Served by keygate: the key is checked here.
    let ok = get(gateway.addr, "/invoices/7", &[("apikey", "acme-key")]).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(origin.last().uri, "/v1/7");
    assert_eq!(get(gateway.addr, "/invoices/7", &[]).await.status, 401);
    // Left to Kong, which checks the key (and the acl) itself: it gets the request as sent.
    let admin = get(
        gateway.addr,
        "/admin/users",
        &[("apikey", "admin-key"), ("host", "api.example.com")],
    )
    .await;
    assert_eq!(admin.status, 200, "{}", admin.text());
    let seen = kong.last();
    assert_eq!(seen.uri, "/admin/users");
    assert_eq!(seen.header("host"), Some("api.example.com"));
    assert_eq!(seen.header("apikey"), Some("admin-key"));
    // And so is whatever no imported route matches.
    assert_eq!(get(gateway.addr, "/not-imported", &[]).await.status, 200);
    assert_eq!(kong.hits(), 2);
    assert_eq!(origin.hits(), 1);
}

/// Kong's key-auth at three scopes: each route looks for the key where its own instance
/// (route, then service, then global) says, as Kong does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_auth_at_three_scopes_keeps_each_routes_key_location() {
    let origin = Origin::start("origin").await;
    let addr = origin.addr.to_string();
    let output = import(
        &[fixture("key-auth-scopes.yaml").to_str().unwrap()],
        &[("DECK_ORIGIN", &addr)],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let toml = String::from_utf8(output.stdout.clone()).unwrap();
    let config = config_of(&toml);
    assert_eq!(
        config.key_auth.key_names,
        ["apikey"],
        "the global instance: {toml}"
    );
    let scoped: Vec<(Option<&str>, Option<&str>)> = config
        .plugins
        .iter()
        .filter(|p| p.key_auth().is_some())
        .map(|p| (p.service.as_deref(), p.route.as_deref()))
        .collect();
    assert_eq!(
        scoped,
        [(Some("billing"), None), (None, Some("exports"))],
        "{toml}"
    );
    let gateway = support::start_gateway_with(&toml, |config| {
        config.server.listen = "127.0.0.1:0".parse().unwrap();
    })
    .await;
    let status = |path: &'static str, header: &'static str| {
        let addr = gateway.addr;
        async move { get(addr, path, &[(header, "alice-key")]).await.status }
    };
    assert_eq!(status("/accounts/1", "apikey").await, 200);
    assert_eq!(status("/accounts/1", "x-api-key").await, 401);
    assert_eq!(status("/invoices/1", "x-api-key").await, 200);
    assert_eq!(
        status("/invoices/1", "apikey").await,
        401,
        "the service's instance wins"
    );
    assert_eq!(status("/exports/1", "token").await, 200);
    assert_eq!(
        origin.last().header("token"),
        None,
        "hidden by the route's instance"
    );
    assert_eq!(
        status("/exports/1", "x-api-key").await,
        401,
        "the route's instance wins"
    );
}

/// A realistic deployment, imported: the whole keygate.toml and the whole report are what was
/// reviewed and kept next to it (`realistic.golden.*`), and `keygate check` accepts the file.
/// After a deliberate change, `KEYGATE_BLESS=1` rewrites the golden files; review their diff.
#[test]
fn a_realistic_deployment_imports_to_the_reviewed_config_and_report() {
    let output = import(&[fixture("realistic.yaml").to_str().unwrap()], &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let toml = String::from_utf8(output.stdout.clone()).unwrap();
    let report = stderr(&output);
    let golden = |name: &str| fixture(name);
    if std::env::var_os("KEYGATE_BLESS").is_some() {
        std::fs::write(golden("realistic.golden.toml"), &toml).unwrap();
        std::fs::write(golden("realistic.golden.report"), &report).unwrap();
    }
    assert_eq!(
        toml,
        std::fs::read_to_string(golden("realistic.golden.toml")).unwrap(),
        "the imported keygate.toml changed"
    );
    assert_eq!(
        report,
        std::fs::read_to_string(golden("realistic.golden.report")).unwrap(),
        "the report changed"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keygate.toml");
    std::fs::write(&file, &toml).unwrap();
    let check = run(&["check", "--config", file.to_str().unwrap()]);
    assert!(check.status.success(), "{}", stderr(&check));
}

trait IntoText {
    fn into_string(self) -> String;
}

impl IntoText for keygate_policy::ServiceUrl {
    fn into_string(self) -> String {
        String::from(self)
    }
}

/// cors, ip-restriction and request-termination are carried over at their scopes (consumer
/// ones included), what keygate cannot take is named, and the result serves Kong's answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn companion_plugins_are_imported_at_their_scopes_and_serve() {
    let origin = Origin::start("kong-origin").await;
    let addr = origin.addr.to_string();
    let (toml, report) = import_and_check("companions.yaml", &[("DECK_ORIGIN", &addr)]);
    let config = config_of(&toml);
    let named = |name: &str| -> Vec<&keygate_policy::Plugin> {
        config.plugins.iter().filter(|p| p.name() == name).collect()
    };
    let cors = named("cors");
    assert_eq!(cors.len(), 2, "{toml}");
    assert_eq!(cors[0].service.as_deref(), Some("api"));
    let api_cors = cors[0].cors().unwrap();
    assert_eq!(api_cors.origins, ["https://app.example.com"]);
    assert!(api_cors.credentials);
    assert_eq!(api_cors.max_age, Some(600.0));
    assert_eq!(cors[1].cors().unwrap().origins, Vec::<String>::new());
    let ip = named("ip-restriction");
    assert_eq!(ip.len(), 2, "{toml}");
    assert_eq!(ip[0].route.as_deref(), Some("admin"));
    assert_eq!(
        ip[0].ip_restriction().unwrap().deny.as_ref().unwrap().len(),
        2
    );
    let alice = ip.iter().find(|p| p.consumer.is_some()).unwrap();
    assert_eq!(alice.consumer.as_deref(), Some("alice"));
    let alice = alice.ip_restriction().unwrap();
    assert_eq!(
        (alice.allow.as_ref().unwrap().len(), alice.status()),
        (1, 451)
    );
    let terminations = named("request-termination");
    assert_eq!(terminations.len(), 2, "{toml}");
    for expected in [
        "plugin cors (service \"api\"): origin \"https://(?!evil).*\\\\.example\\\\.org\" dropped",
        "config.allow_origin_absent = false ignored",
        "config.whitelist read as config.allow",
    ] {
        assert!(
            report.contains(expected),
            "{expected:?} not in the report:\n{report}"
        );
    }
    for refused in ["refused", "keygate has no such plugin"] {
        assert!(!report.contains(refused), "{report}");
    }

    let gateway = support::start_gateway_with(&toml, |config| {
        config.server.listen = "127.0.0.1:0".parse().unwrap();
    })
    .await;
    let bob = ("apikey", "bob-key-1");
    let ok = get(
        gateway.addr,
        "/orders/7",
        &[bob, ("origin", "https://app.example.com")],
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    let drained = get(gateway.addr, "/orders/7", &[bob, ("x-drain", "1")]).await;
    assert_eq!(drained.status, 503);
    assert_eq!(drained.text(), r#"{"message":"Orders are paused"}"#);
    let forbidden = get(gateway.addr, "/graphql", &[bob]).await;
    assert_eq!(forbidden.status, 403);
    assert_eq!(forbidden.text(), r#"{"message":"Access is forbidden."}"#);
    assert_eq!(forbidden.header("access-control-allow-origin"), Some("*"));
    assert_eq!(get(gateway.addr, "/graphql", &[]).await.status, 401);
    let admin = get(gateway.addr, "/admin", &[bob]).await;
    assert_eq!(admin.status, 403);
    assert_eq!(admin.json()["message"], "Not from here");
    // alice may only come from 10.0.0.0/8 (her own instance beats the route's).
    let alice = get(gateway.addr, "/orders/7", &[("apikey", "alice-key-1")]).await;
    assert_eq!(alice.status, 451);
    assert_eq!(alice.json()["message"], "IP address not allowed: 127.0.0.1");
    assert_eq!(origin.hits(), 1);
}

/// request-size-limiting becomes the `max_body_size` of the routes it covers (Kong's
/// precedence: route, service, global), a consumer's instance is named as not imported, and
/// the result answers an over-limit body 413 before the origin sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_size_limiting_becomes_max_body_size_at_its_scope() {
    let origin = Origin::start("kong-origin").await;
    let addr = origin.addr.to_string();
    let (toml, report) = import_and_check("request-size.yaml", &[("DECK_ORIGIN", &addr)]);
    let config = config_of(&toml);
    let limit_of = |route: &str| {
        config
            .services
            .iter()
            .flat_map(|service| &service.routes)
            .find(|r| r.name.as_deref() == Some(route))
            .unwrap_or_else(|| panic!("route {route} in {toml}"))
            .max_body_size
            .map(keygate_policy::ByteSize::bytes)
    };
    assert_eq!(limit_of("uploads"), Some(1000), "the route's instance wins");
    assert_eq!(limit_of("orders"), Some(64 * 1024), "then the service's");
    assert_eq!(limit_of("status"), Some(128 << 20), "then the global one");
    assert!(toml.contains("max_body_size = \"64k\""), "{toml}");
    for expected in [
        "plugin request-size-limiting (consumer \"alice\"): not imported",
        "require_content_length ignored",
        "imported as max_body_size = 1000 bytes on its route",
        "\"Payload too large\"",
    ] {
        assert!(
            report.contains(expected),
            "{expected:?} not in the report:\n{report}"
        );
    }
    assert!(
        config
            .plugins
            .iter()
            .all(|p| p.name() != "request-size-limiting")
    );

    let gateway = support::start_gateway_with(&toml, |config| {
        config.server.listen = "127.0.0.1:0".parse().unwrap();
    })
    .await;
    let post = |path: &'static str, size: usize| {
        let request = support::request("POST", gateway.addr, path)
            .header("apikey", "alice-key-1")
            .body(http_body_util::Full::new(bytes::Bytes::from(vec![
                b'b';
                size
            ])))
            .unwrap();
        support::send(gateway.addr, request)
    };
    let refused = post("/uploads", 1001).await;
    assert_eq!(refused.status, 413, "{}", refused.text());
    assert_eq!(refused.json()["message"], "Payload too large");
    assert_eq!(origin.hits(), 0);
    assert_eq!(post("/uploads", 1000).await.status, 200);
    assert_eq!(post("/orders", 2000).await.status, 200);
    assert_eq!(origin.hits(), 2);
}
