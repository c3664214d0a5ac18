//! Reading `keygate.toml` from disk, with the checks that depend on this host.

use anyhow::Context;
use keygate_policy::Config;
use std::path::Path;

/// Read, parse and validate a config file; errors name the file and the field or line.
/// A relative `guest.component` is taken relative to the config file.
pub fn load(path: &Path) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    parse(&text, path.parent()).with_context(|| format!("invalid config {}", path.display()))
}

pub fn parse(text: &str, base_dir: Option<&Path>) -> anyhow::Result<Config> {
    let mut config = Config::from_toml(text)?;
    if let (Some(component), Some(base)) = (&config.guest.component, base_dir)
        && component.is_relative()
    {
        config.guest.component = Some(base.join(component));
    }
    for (i, service) in config.services.iter().enumerate() {
        if service.url.https {
            anyhow::bail!(
                "services[{i}].url: https origins are not supported yet; use http:// (e.g. through a local TLS sidecar)"
            );
        }
    }
    if let Some(api) = &config.auth_api
        && api.url.starts_with("https://")
    {
        anyhow::bail!("auth_api.url: https is not supported yet; use http://");
    }
    // Counting a Redis limit per node would silently allow N times what the operator wrote.
    for (i, plugin) in config.plugins.iter().enumerate() {
        if plugin
            .rate_limiting()
            .is_some_and(|limit| limit.policy == keygate_policy::plugins::Policy::Redis)
        {
            anyhow::bail!(
                "plugins[{i}].config.policy: \"redis\" is not supported yet; use \"local\" \
                 (counters per keygate node)"
            );
        }
    }
    if let Some(component) = &config.guest.component
        && !component.is_file()
    {
        anyhow::bail!(
            "guest.component: {} does not exist or is not a file",
            component.display()
        );
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_redis_rate_limiting_policy_is_refused_until_it_is_implemented() {
        let toml = "[[plugins]]\nname = \"rate-limiting\"\n[plugins.config]\nminute = 1\n\
                    policy = \"redis\"\nredis = { host = \"127.0.0.1\" }\n";
        let err = parse(toml, None).unwrap_err().to_string();
        assert!(
            err.starts_with("plugins[0].config.policy: \"redis\" is not supported yet"),
            "{err}"
        );
        let local = "[[plugins]]\nname = \"rate-limiting\"\n[plugins.config]\nminute = 1\n";
        assert!(parse(local, None).is_ok());
    }
}
