//! The tests' keygate.toml, built from the parts scenarios vary, so each test states only what
//! it is about.

use super::servers::{AuthApi, Origin};
use std::fmt::{self, Display, Write};

/// A gateway configuration: `[server]` on an ephemeral loopback port, then whole tables
/// (`[key_auth]`, `[guest]`, …), consumers, and services with their routes, in that order.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    server: Vec<String>,
    tables: Vec<String>,
    consumers: Vec<String>,
    services: Vec<Service>,
}

/// One `[[services]]` table: its own keys, then its routes (and any other sub-tables).
#[derive(Debug, Clone)]
struct Service {
    keys: Vec<String>,
    tables: String,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl GatewayConfig {
    pub fn new() -> Self {
        Self {
            server: vec!["listen = \"127.0.0.1:0\"".into()],
            tables: Vec::new(),
            consumers: Vec::new(),
            services: Vec::new(),
        }
    }

    /// One service `api` on `origin` (`http://ORIGIN/v1`, route `api-route` on `/api`,
    /// strip_path), the auth API with its usual TTLs, and the static consumer `static-user`
    /// (custom id `static-custom`, key `static-key`).
    pub fn basic(origin: &Origin, auth: &AuthApi) -> Self {
        Self::new()
            .auth_api(auth)
            .consumer("static-user", Some("static-custom"), &["static-key"])
            .service("api", format_args!("http://{}/v1", origin.addr))
            .route("name = \"api-route\"\npaths = [\"/api\"]")
    }

    /// A line of `[server]`, e.g. `max_connections = 4`.
    pub fn server(mut self, line: impl Display) -> Self {
        self.server.push(line.to_string());
        self
    }

    /// The admin listener on an ephemeral loopback port.
    pub fn admin(self) -> Self {
        self.server("admin_listen = \"127.0.0.1:0\"")
    }

    /// Whole top-level tables, e.g. `[key_auth]\nhide_credentials = true`.
    pub fn tables(mut self, toml: impl Display) -> Self {
        self.tables.push(toml.to_string());
        self
    }

    /// `[auth_api]` asking `auth` (`GET /validate?apikey=KEY`), timeout 2 s, valid verdicts
    /// kept 5 min and invalid ones 30 s.
    pub fn auth_api(self, auth: &AuthApi) -> Self {
        self.tables(format_args!(
            "[auth_api]\nurl = \"http://{}/validate?apikey={{key}}\"\ntimeout = \"2s\"\n\
             cache_ttl = \"5m\"\nnegative_ttl = \"30s\"",
            auth.addr
        ))
    }

    /// A consumer with static keys (none for a key-less one such as `anonymous`'s target).
    pub fn consumer(mut self, username: &str, custom_id: Option<&str>, keys: &[&str]) -> Self {
        let mut toml = format!("[[consumers]]\nusername = {}\n", quoted(username));
        if let Some(custom_id) = custom_id {
            let _ = writeln!(toml, "custom_id = {}", quoted(custom_id));
        }
        if !keys.is_empty() {
            let keys: Vec<String> = keys.iter().map(|key| quoted(key)).collect();
            let _ = writeln!(toml, "keys = [{}]", keys.join(", "));
        }
        self.consumers.push(toml);
        self
    }

    /// A service; the settings and routes added next are its own.
    pub fn service(mut self, name: &str, url: impl Display) -> Self {
        self.services.push(Service {
            keys: vec![
                format!("name = {}", quoted(name)),
                format!("url = {}", quoted(&url.to_string())),
            ],
            tables: String::new(),
        });
        self
    }

    /// A setting of the last service, e.g. `read_timeout = "200ms"`.
    pub fn service_setting(mut self, line: impl Display) -> Self {
        self.last_service().keys.push(line.to_string());
        self
    }

    /// A route of the last service, as the body of its `[[services.routes]]` table.
    pub fn route(mut self, body: impl Display) -> Self {
        let _ = write!(
            self.last_service().tables,
            "\n[[services.routes]]\n{body}\n"
        );
        self
    }

    /// Whole tables of the last service's routes (`[[services.routes]]` …), as written.
    pub fn service_tables(mut self, toml: impl Display) -> Self {
        let _ = write!(self.last_service().tables, "\n{toml}\n");
        self
    }

    fn last_service(&mut self) -> &mut Service {
        self.services
            .last_mut()
            .expect("settings and routes belong to a service: call service() first")
    }
}

impl Display for GatewayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "[server]")?;
        for line in &self.server {
            writeln!(f, "{line}")?;
        }
        for part in self.tables.iter().chain(&self.consumers) {
            write!(f, "\n{part}\n")?;
        }
        for service in &self.services {
            write!(
                f,
                "\n[[services]]\n{}\n{}",
                service.keys.join("\n"),
                service.tables
            )?;
        }
        Ok(())
    }
}

/// A TOML basic string.
fn quoted(text: &str) -> String {
    toml::Value::from(text).to_string()
}
