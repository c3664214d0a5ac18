//! Reading `keygate.toml` from disk, with the checks that depend on this host.

use anyhow::Context;
use keygate_policy::Config;
use keygate_policy::plugins::{Policy, RedisTarget};
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
    if let Some(base) = base_dir {
        for path in [&mut config.server.tls_cert, &mut config.server.tls_key]
            .into_iter()
            .flatten()
        {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    }
    crate::server::tls::check(&config.server)?;
    if let Some(base) = base_dir {
        let services = config.services.iter_mut().map(|s| &mut s.ca_file);
        for path in services
            .chain(config.auth_api.iter_mut().map(|api| &mut api.ca_file))
            .flatten()
        {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    }
    crate::tls_client::TlsClients::check(&config)?;
    check_redis_limits(&config)?;
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

/// What the host's Redis client must be able to do for each `policy = "redis"` limit; the
/// fields themselves were checked when the file was read.
fn check_redis_limits(config: &Config) -> anyhow::Result<()> {
    // Instances that share a counter namespace share counters, so they must share a server.
    let mut servers: Vec<(String, RedisTarget, usize)> = Vec::new();
    for (i, plugin) in config.plugins.iter().enumerate() {
        let Some(limit) = plugin.rate_limiting() else {
            continue;
        };
        if limit.policy != Policy::Redis {
            continue;
        }
        let field = format!("plugins[{i}].config.redis");
        let target = limit
            .redis
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("{field}.host: required when policy = \"redis\""))?
            .target()
            .map_err(|err| anyhow::anyhow!("{field}: {err}"))?;
        if target
            .server_name
            .as_deref()
            .is_some_and(|name| name != target.host)
        {
            anyhow::bail!(
                "{field}.server_name: only the host's own name can be checked (keygate's Redis \
                 client verifies the name it connects to); connect to {name:?} as the host",
                name = target.server_name.as_deref().unwrap_or_default()
            );
        }
        let namespace = plugin.counter_namespace();
        if let Some((_, other, j)) = servers
            .iter()
            .find(|(seen, other, _)| *seen == namespace && *other != target)
        {
            anyhow::bail!(
                "{field}: plugins[{j}] has the same route and service scope ({}) and so the \
                 same counters, but another Redis ({}:{}/{}); give both the same redis settings",
                plugin.scope_description(),
                other.host,
                other.port,
                other.database
            );
        }
        servers.push((namespace, target, i));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis_limit(scope: &str, redis: &str) -> String {
        format!(
            "[[plugins]]\nname = \"rate-limiting\"\n{scope}\n[plugins.config]\nminute = 1\n\
             policy = \"redis\"\nredis = {{ {redis} }}\n"
        )
    }

    #[test]
    fn redis_over_tls_checks_only_the_hosts_own_name() {
        assert!(parse(&redis_limit("", "host = \"r\", ssl = true"), None).is_ok());
        assert!(parse(&redis_limit("", "url = \"rediss://:pw@r:6380/2\""), None).is_ok());
        let other = parse(
            &redis_limit(
                "",
                "host = \"10.0.0.5\", ssl = true, server_name = \"redis.internal\"",
            ),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            other.starts_with("plugins[0].config.redis.server_name: only the host's own name"),
            "{other}"
        );
    }

    #[test]
    fn key_auth_plugins_take_kongs_scopes_and_leave_the_global_one_to_key_auth() {
        let services = "[[services]]\nname = \"s\"\nurl = \"http://127.0.0.1:1\"\n\
                        [[services.routes]]\nname = \"r\"\npaths = [\"/\"]\n";
        let plugin = |scope: &str, config: &str| {
            format!(
                "[[plugins]]\nname = \"key-auth\"\n{scope}\n[plugins.config]\n{config}\n{services}"
            )
        };
        let ok = plugin(
            "route = \"r\"",
            "key_names = [\"token\"]\nhide_credentials = true",
        );
        assert!(parse(&ok, None).is_ok(), "{:?}", parse(&ok, None).err());
        let global = parse(&plugin("", "key_names = [\"token\"]"), None).unwrap_err();
        assert!(
            global
                .to_string()
                .starts_with("plugins[0]: a global key-auth is [key_auth]"),
            "{global}"
        );
        let bad_name =
            parse(&plugin("service = \"s\"", "key_names = [\"a b\"]"), None).unwrap_err();
        assert!(
            bad_name
                .to_string()
                .starts_with("plugins[0].config.key_names[0]:"),
            "{bad_name}"
        );
        let buffer = parse(
            &plugin("service = \"s\"", "body_buffer_size = \"1m\""),
            None,
        )
        .unwrap_err();
        assert!(
            buffer
                .to_string()
                .contains("body_buffer_size: is a [key_auth] setting"),
            "{buffer}"
        );
    }

    #[test]
    fn limits_sharing_counters_must_share_their_redis() {
        let services = "[[consumers]]\nusername = \"a\"\n[[consumers]]\nusername = \"b\"\n\
                        [[services]]\nname = \"s\"\nurl = \"http://127.0.0.1:1\"\n\
                        [[services.routes]]\nname = \"r\"\npaths = [\"/\"]\n";
        let same_scope = format!(
            "{services}{}{}",
            redis_limit("consumer = \"a\"", "host = \"one\""),
            redis_limit("consumer = \"b\"", "host = \"two\"")
        );
        let err = parse(&same_scope, None).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "plugins[1].config.redis: plugins[0] has the same route and service scope"
            ),
            "{err}"
        );
        let other_scope = format!(
            "{services}{}{}",
            redis_limit("consumer = \"a\"", "host = \"one\""),
            redis_limit("route = \"r\"", "host = \"two\"")
        );
        assert!(
            parse(&other_scope, None).is_ok(),
            "{:?}",
            parse(&other_scope, None).err()
        );
    }
}
