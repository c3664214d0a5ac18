//! The Kong import's mapping rules, entity by entity.

use super::*;

fn import(text: &str) -> Imported {
    convert(text, |_| None, None).unwrap()
}

#[test]
fn old_format_paths_that_look_like_regex_become_regexes() {
    assert_eq!(migrate_path("/users/\\d+$"), "~/users/\\d+$");
    assert_eq!(migrate_path("/plain/path-1.2_x"), "/plain/path-1.2_x");
    let paths = |version: &str| {
        let out = import(&format!(
            "_format_version: \"{version}\"\nservices:\n- name: a\n  url: http://a\n  routes:\n  - paths: [\"/x/\\\\d+\", \"/y\"]\n"
        ));
        let config = keygate_policy::Config::from_toml(&out.toml).unwrap();
        config.services[0].routes[0]
            .paths
            .iter()
            .map(|p| String::from(p.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(paths("1.1"), ["~/x/\\d+", "/y"]);
    assert_eq!(paths("2.1"), ["~/x/\\d+", "/y"]);
    assert_eq!(paths("3.0"), ["/x/\\d+", "/y"]);
}

#[test]
fn env_templates_need_deck_variables_that_are_set() {
    let env = |name: &str| (name == "DECK_HOST").then(|| "origin".to_string());
    assert_eq!(
        substitute_env("url: http://${{ env \"DECK_HOST\" }}:80", env).unwrap(),
        "url: http://origin:80"
    );
    let err = substitute_env("${{ env \"DECK_MISSING\" }}", env).unwrap_err();
    assert!(err.to_string().contains("DECK_MISSING"), "{err}");
    let err = substitute_env("${{ env \"HOME\" }}", env).unwrap_err();
    assert!(err.to_string().contains("DECK_"), "{err}");
}

#[test]
fn credential_ids_are_kept_next_to_keys_without_one() {
    let out = import(
        "_format_version: \"3.0\"\nconsumers:\n- username: a\n  keyauth_credentials:\n  - {key: k1, id: cred-1}\n  - {key: k2}\n",
    );
    let config = keygate_policy::Config::from_toml(&out.toml).unwrap();
    let keys: Vec<(&str, Option<&str>)> = config.consumers[0]
        .keys
        .iter()
        .map(|key| (key.key(), key.id()))
        .collect();
    assert_eq!(keys, [("k1", Some("cred-1")), ("k2", None)], "{}", out.toml);
    assert!(
        out.warnings
            .iter()
            .any(|w| w.contains("has no id") && w.contains("X-Credential-Identifier")),
        "{:?}",
        out.warnings
    );
}

#[test]
fn key_values_never_reach_the_report() {
    let out = import(
        "_format_version: \"3.0\"\nconsumers:\n- username: a\n  keyauth_credentials:\n  - key: s3cret-value\n    ttl: 5\n",
    );
    assert!(out.warnings.iter().all(|w| !w.contains("s3cret-value")));
    assert!(out.toml.contains("s3cret-value"));
}
