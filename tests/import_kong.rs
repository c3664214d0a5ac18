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
    assert_eq!(config.key_auth.key_names, ["x-api-key"]);
    assert!(config.key_auth.hide_credentials);

    let acme = &config.consumers[0];
    assert_eq!(
        acme.id.as_deref(),
        Some("1c9e4d2a-5b7f-4e0a-9a61-0d3f2c8b7e11")
    );
    assert_eq!(acme.custom_id.as_deref(), Some("acme-corp"));
    assert_eq!(acme.keys, ["acme-prod-7Qx"]);
    assert_eq!(
        config.consumers[1].keys,
        ["partner-key-1"],
        "top-level credential"
    );

    assert_eq!(config.plugins.len(), 2);
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
        "plugin prometheus (service \"status\")",
        "route \"invoice-by-id\": snis ignored",
        "consumer \"partner\": has no id",
        "_info.select_tags",
        "X-Credential-Identifier will change",
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
            .any(|l| l.starts_with("warning: plugin prometheus") && l.contains("skipped")),
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
    let missing = get(gateway.addr, "/orders/7", &[]).await;
    assert_eq!(missing.status, 401);
    let wrong = get(gateway.addr, "/orders/7", &[("apikey", "nope")]).await;
    assert_eq!(wrong.status, 401);
    let public = get(gateway.addr, "/ping", &[]).await;
    assert_eq!(public.status, 200, "no key-auth on this service in Kong");
    assert_eq!(origin.hits(), 2);
}

trait IntoText {
    fn into_string(self) -> String;
}

impl IntoText for keygate_policy::ServiceUrl {
    fn into_string(self) -> String {
        String::from(self)
    }
}
