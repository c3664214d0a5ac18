//! Where the guest's outgoing calls may go: the configured origins (plain or https, each https
//! one with its TLS settings) and the auth API, known by its origin and path.

use crate::proxy::balancer::Balancers;
use crate::tls_client::TlsClients;
use keygate_policy::Config;
use std::collections::HashMap;
use std::sync::Arc;

/// The hosts (each with its ports) the guest may call: looked up per call without building a
/// `host:port` string. The auth API is known by its origin and path, so its calls are counted
/// and capped by where they go, whatever the guest says they are.
#[derive(Default)]
pub struct AllowList {
    hosts: HashMap<String, Vec<u16>>,
    /// `https://` origins, with the TLS client configuration each is called with: an https
    /// origin is only ever called over TLS, an http one only in clear.
    https_hosts: HashMap<String, Vec<(u16, Arc<rustls::ClientConfig>)>>,
    auth_api: Option<AuthApiTarget>,
    /// Calls to a service whose host names an upstream go to one of its targets.
    pub balancers: Arc<Balancers>,
}

/// Where the auth API is: its calls' origin and path prefix.
struct AuthApiTarget {
    host: String,
    port: u16,
    path_prefix: String,
    https: bool,
}

impl AllowList {
    /// Every origin and the auth API: the only places the guest may call. The auth API is named
    /// as such, so its calls are counted and capped by where they go. An https origin is allowed
    /// only over TLS, with its own client configuration (one without is not allowed at all).
    pub fn for_config(config: &Config, tls: &TlsClients) -> Self {
        let services = config
            .services
            .iter()
            .filter(|service| !service.url.https)
            .map(|service| (service.url.host.clone(), service.url.port));
        let mut allowed: Self = services.collect();
        for service in config.services.iter().filter(|service| service.url.https) {
            if let Some(client) = tls.service(&service.name) {
                allowed.add_https(
                    service.url.host.clone(),
                    service.url.port,
                    Arc::clone(client),
                );
            }
        }
        if let Some(api) = &config.auth_api
            && let Ok(origin) = api.origin()
        {
            let client = if origin.https {
                match tls.auth_api() {
                    Some(client) => Some(Arc::clone(client)),
                    None => return allowed,
                }
            } else {
                None
            };
            allowed.add_auth_api(origin.host, origin.port, api.url_path_prefix(), client);
        }
        allowed
    }

    pub fn allows(&self, host: &str, port: u16) -> bool {
        self.hosts
            .get(host)
            .is_some_and(|ports| ports.contains(&port))
    }

    /// The TLS configuration of the https origin `host:port`, if the config names one.
    pub fn allows_https(&self, host: &str, port: u16) -> Option<&Arc<rustls::ClientConfig>> {
        self.https_hosts
            .get(host)?
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, tls)| tls)
    }

    /// Allow the https origin `host:port`, called with `tls`. The first configuration given
    /// for an origin is the one it is called with.
    pub fn add_https(&mut self, host: String, port: u16, tls: Arc<rustls::ClientConfig>) {
        let ports = self.https_hosts.entry(host).or_default();
        if !ports.iter().any(|(p, _)| *p == port) {
            ports.push((port, tls));
        }
    }

    /// Allow the auth API at `host:port`, whose calls' paths start with `path_prefix`;
    /// `tls` when it is https.
    pub fn add_auth_api(
        &mut self,
        host: String,
        port: u16,
        path_prefix: String,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) {
        let https = tls.is_some();
        match tls {
            Some(tls) => self.add_https(host.clone(), port, tls),
            None => {
                let ports = self.hosts.entry(host.clone()).or_default();
                if !ports.contains(&port) {
                    ports.push(port);
                }
            }
        }
        self.auth_api = Some(AuthApiTarget {
            host,
            port,
            path_prefix,
            https,
        });
    }

    /// What a probe of the auth API asks: its origin and path prefix, without a key.
    pub(super) fn auth_api_probe_uri(&self) -> Option<http::Uri> {
        let api = self.auth_api.as_ref()?;
        let path = if api.path_prefix.is_empty() {
            "/"
        } else {
            &api.path_prefix
        };
        let scheme = if api.https { "https" } else { "http" };
        format!("{scheme}://{}:{}{path}", api.host, api.port)
            .parse()
            .ok()
    }

    /// Whether a call to `host:port` + `path` goes to the auth API.
    pub fn is_auth_api(&self, host: &str, port: u16, path: &str) -> bool {
        self.auth_api.as_ref().is_some_and(|api| {
            api.host == host && api.port == port && path.starts_with(&api.path_prefix)
        })
    }
}

impl FromIterator<(String, u16)> for AllowList {
    fn from_iter<I: IntoIterator<Item = (String, u16)>>(targets: I) -> Self {
        let mut hosts: HashMap<String, Vec<u16>> = HashMap::new();
        for (host, port) in targets {
            let ports = hosts.entry(host).or_default();
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        Self {
            hosts,
            https_hosts: HashMap::new(),
            auth_api: None,
            balancers: Arc::default(),
        }
    }
}
