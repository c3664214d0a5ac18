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
