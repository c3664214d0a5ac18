//! TLS to `https://` origins and an `https://` auth API: one rustls client configuration per
//! distinct trust setting of a config (the system's roots, a `ca_file`, or `tls_verify =
//! false`), made when the config is loaded, and a keep-alive pool per configuration on each
//! request thread, next to the plain pools. Plain `http://` calls never touch any of it.
//!
//! The server name checked (and sent as SNI, unless it is an IP address, as rustls does) is
//! the host of the URL the request goes to: the service's, or an upstream target's.

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use keygate_policy::Config;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// A pooled client for `https://` calls; its requests go out only over TLS.
pub type HttpsClient<B> = Client<HttpsConnector<HttpConnector>, B>;

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{field}: cannot read {path}: {source}")]
    ReadCaFile {
        field: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{field}: {path} is not a PEM certificate bundle: {reason}")]
    BadCaFile {
        field: String,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "{field}: https with the system's root certificates, but this system has none \
         ({reason}); install them (e.g. the ca-certificates package) or set ca_file"
    )]
    NoSystemRoots { field: String, reason: String },
    #[error("{field}: no TLS client configuration: {reason}")]
    Config { field: String, reason: String },
}

/// What a TLS client trusts. Two services with the same trust share one configuration, and
/// so one connection pool per thread.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Trust {
    System,
    /// The bundle's path, and its bytes as read at load (a reload that changes the file
    /// changes the trust).
    File(PathBuf, Arc<[u8]>),
    AnyCertificate,
}

/// The TLS client configurations of one config: a service's by its name, the auth API's.
#[derive(Default)]
pub struct TlsClients {
    services: Vec<(Box<str>, Arc<ClientConfig>)>,
    auth_api: Option<Arc<ClientConfig>>,
    /// Every configuration made, by trust: what the next load may keep.
    by_trust: HashMap<Trust, Arc<ClientConfig>>,
}

impl TlsClients {
    /// Check what `config`'s https services and auth API need, without keeping anything:
    /// what `keygate check` and a reload refuse a config for.
    pub fn check(config: &Config) -> Result<(), TlsSetupError> {
        for (_, field, trust) in trusts(config) {
            if trust? == Trust::System {
                system_roots(&field)?;
            }
        }
        Ok(())
    }

    /// The configurations of `config`, keeping `previous`'s where the trust is the same (so
    /// are their pooled connections). `tls_verify = false` is logged here, once per load.
    pub fn for_config(config: &Config, previous: &TlsClients) -> Result<Self, TlsSetupError> {
        let mut made = Self::default();
        for (user, field, trust) in trusts(config) {
            let trust = trust?;
            if trust == Trust::AnyCertificate {
                let whose = match user {
                    TlsUser::Service(name) => format!("service {name:?}"),
                    TlsUser::AuthApi => "the auth API".to_string(),
                };
                tracing::warn!(
                    "{whose}: tls_verify = false: any certificate is accepted, so whoever is \
                     on the path can read and change its calls"
                );
            }
            let client = match made.by_trust.get(&trust).or(previous.by_trust.get(&trust)) {
                Some(kept) => Arc::clone(kept),
                None => Arc::new(client_config(&field, &trust)?),
            };
            made.by_trust.insert(trust, Arc::clone(&client));
            match user {
                TlsUser::Service(name) => made.services.push((name.into(), client)),
                TlsUser::AuthApi => made.auth_api = Some(client),
            }
        }
        Ok(made)
    }

    /// [`Self::for_config`] for a config that was checked when it was read: a failure now
    /// (a `ca_file` removed since) is logged, and that config's https calls fail their
    /// handshakes rather than go anywhere unchecked.
    pub fn for_checked_config(config: &Config, previous: &TlsClients) -> Self {
        match Self::for_config(config, previous) {
            Ok(clients) => clients,
            Err(err) => {
                tracing::error!("{err}; https calls of this configuration will fail");
                let refusing = Arc::new(refusing_config());
                Self {
                    services: config
                        .services
                        .iter()
                        .filter(|service| service.url.https)
                        .map(|service| (service.name.as_str().into(), Arc::clone(&refusing)))
                        .collect(),
                    auth_api: config
                        .auth_api
                        .as_ref()
                        .filter(|api| api.origin().is_ok_and(|origin| origin.https))
                        .map(|_| refusing),
                    by_trust: HashMap::new(),
                }
            }
        }
    }

    /// The configuration of the https service `name`.
    pub fn service(&self, name: &str) -> Option<&Arc<ClientConfig>> {
        self.services
            .iter()
            .find(|(service, _)| **service == *name)
            .map(|(_, client)| client)
    }

    /// The configuration of an https auth API.
    pub fn auth_api(&self) -> Option<&Arc<ClientConfig>> {
        self.auth_api.as_ref()
    }
}

/// Who a TLS configuration is for.
#[derive(Clone, Copy)]
enum TlsUser<'a> {
    Service(&'a str),
    AuthApi,
}

/// Each https service's and the auth API's trust, with the field that names its URL.
fn trusts(config: &Config) -> Vec<(TlsUser<'_>, String, Result<Trust, TlsSetupError>)> {
    let services = config
        .services
        .iter()
        .enumerate()
        .filter(|(_, service)| service.url.https)
        .map(|(i, service)| {
            let trust = trust_of(
                &format!("services[{i}].ca_file"),
                service.tls_verify,
                service.ca_file.as_deref(),
            );
            (
                TlsUser::Service(&service.name),
                format!("services[{i}].url"),
                trust,
            )
        });
    let auth_api = config
        .auth_api
        .as_ref()
        .filter(|api| api.origin().is_ok_and(|origin| origin.https))
        .map(|api| {
            let trust = trust_of("auth_api.ca_file", api.tls_verify, api.ca_file.as_deref());
            (TlsUser::AuthApi, "auth_api.url".to_string(), trust)
        });
    services.chain(auth_api).collect()
}

fn trust_of(field: &str, verify: bool, ca_file: Option<&Path>) -> Result<Trust, TlsSetupError> {
    if !verify {
        return Ok(Trust::AnyCertificate);
    }
    let Some(path) = ca_file else {
        return Ok(Trust::System);
    };
    let pem = std::fs::read(path).map_err(|source| TlsSetupError::ReadCaFile {
        field: field.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    file_roots(field, path, &pem)?;
    Ok(Trust::File(path.to_path_buf(), pem.into()))
}

/// The system's roots, read once per process (rustls-native-certs: `SSL_CERT_FILE`,
/// `SSL_CERT_DIR`, else the platform's store).
fn system_roots(field: &str) -> Result<Arc<RootCertStore>, TlsSetupError> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    let roots = ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            let reason = match found.errors.first() {
                Some(err) => err.to_string(),
                None => "no certificate found".to_string(),
            };
            return Err(reason);
        }
        Ok(Arc::new(roots))
    });
    roots
        .clone()
        .map_err(|reason| TlsSetupError::NoSystemRoots {
            field: field.to_string(),
            reason,
        })
}

fn file_roots(field: &str, path: &Path, pem: &[u8]) -> Result<RootCertStore, TlsSetupError> {
    let bad = |reason: String| TlsSetupError::BadCaFile {
        field: field.to_string(),
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| bad(err.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE section in it".into()));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|err| bad(format!("a certificate in it is not usable: {err}")))?;
    }
    Ok(roots)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(field: &str, trust: &Trust) -> Result<ClientConfig, TlsSetupError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|err| TlsSetupError::Config {
            field: field.to_string(),
            reason: err.to_string(),
        })?;
    let mut config = match trust {
        Trust::System => builder
            .with_root_certificates(system_roots(field)?)
            .with_no_client_auth(),
        Trust::File(path, pem) => builder
            .with_root_certificates(file_roots(field, path, pem)?)
            .with_no_client_auth(),
        Trust::AnyCertificate => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(
                provider().signature_verification_algorithms,
            )))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A configuration no server can satisfy (it trusts nothing).
fn refusing_config() -> ClientConfig {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring's provider supports the default protocol versions")
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// `tls_verify = false`: any certificate for any name, as Kong's `tls_verify = false`. The
/// handshake's signatures are still checked (the peer holds the key of what it presented).
#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// One request thread's https clients, one per TLS configuration: like the plain pools, a
/// pooled connection stays on the thread that opened it.
pub struct ThreadHttpsClients<B> {
    clients: Vec<(Weak<ClientConfig>, HttpsClient<B>)>,
}

impl<B> Default for ThreadHttpsClients<B> {
    fn default() -> Self {
        Self {
            clients: Vec::new(),
        }
    }
}

impl<B> ThreadHttpsClients<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// This thread's client for `tls` (made on first use; clients of configurations no
    /// longer in use are dropped then, with their connections).
    pub fn client(&mut self, tls: &Arc<ClientConfig>, connect_timeout: Duration) -> HttpsClient<B> {
        let wanted = Arc::downgrade(tls);
        if let Some((_, client)) = self.clients.iter().find(|(of, _)| of.ptr_eq(&wanted)) {
            return client.clone();
        }
        self.clients.retain(|(of, _)| of.strong_count() > 0);
        let mut http = crate::capabilities::outgoing_http::http_connector(connect_timeout);
        // The https connector hands it `https://` URIs to connect to.
        http.enforce_http(false);
        let mut connector = HttpsConnector::from((http, Arc::clone(tls)));
        connector.enforce_https();
        let client = crate::capabilities::outgoing_http::client_builder().build(connector);
        self.clients.push((wanted, client.clone()));
        client
    }
}

/// The TLS error a failed call ends with, if the handshake is what failed. The connector
/// wraps it in I/O errors, which report the error they wrap through `get_ref`, not `source`.
pub fn tls_failure(err: &hyper_util::client::legacy::Error) -> Option<&rustls::Error> {
    use std::error::Error as _;
    let mut cause = err.source();
    while let Some(current) = cause {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(io) = current.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
        {
            cause = Some(inner);
            continue;
        }
        cause = current.source();
    }
    None
}

/// How often a failing origin's TLS reason is logged: a bad certificate fails every request.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Log that a TLS handshake of gateway `gateway` with `to` (e.g. `service "api"`) failed, at
/// most once per [`LOG_EVERY`] per both; the next line says how many were not logged
/// meanwhile. Only failures take the lock.
pub fn log_failure(gateway: u64, to: &str, reason: &rustls::Error) {
    type Logged = HashMap<(u64, Box<str>), (Instant, u64)>;
    static LOGGED: Mutex<Option<Logged>> = Mutex::new(None);
    let mut logged = LOGGED.lock().unwrap_or_else(|p| p.into_inner());
    let logged = logged.get_or_insert_with(HashMap::new);
    let now = Instant::now();
    let skipped = match logged.get_mut(&(gateway, Box::from(to))) {
        Some((last, skipped)) if now.duration_since(*last) < LOG_EVERY => {
            *skipped += 1;
            return;
        }
        Some((last, skipped)) => {
            *last = now;
            std::mem::take(skipped)
        }
        None => {
            // Bounded: the names come from the config, but configs are reloaded.
            if logged.len() >= 1024 {
                logged.clear();
            }
            logged.insert((gateway, to.into()), (now, 0));
            0
        }
    };
    if skipped == 0 {
        tracing::warn!("TLS handshake with {to} failed: {reason}");
    } else {
        tracing::warn!(
            "TLS handshake with {to} failed: {reason} (and {skipped} more since the last such line)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(services: &[(&str, &str)]) -> Config {
        let mut toml = String::from("[server]\nlisten = \"127.0.0.1:0\"\n");
        for (name, url) in services {
            toml.push_str(&format!(
                "[[services]]\nname = \"{name}\"\nurl = \"{url}\"\ntls_verify = false\n"
            ));
        }
        Config::from_toml(&toml).unwrap()
    }

    #[test]
    fn services_with_the_same_trust_share_a_configuration_which_a_reload_keeps() {
        let first = config(&[("a", "https://a.example"), ("b", "https://b.example:8443")]);
        let clients = TlsClients::for_config(&first, &TlsClients::default()).unwrap();
        let (a, b) = (clients.service("a").unwrap(), clients.service("b").unwrap());
        assert!(Arc::ptr_eq(a, b), "one pool for one trust");
        assert_eq!(a.alpn_protocols, [b"http/1.1".to_vec()]);
        let second = config(&[("c", "https://c.example"), ("plain", "http://p.example")]);
        let reloaded = TlsClients::for_config(&second, &clients).unwrap();
        assert!(
            Arc::ptr_eq(reloaded.service("c").unwrap(), a),
            "kept across a reload"
        );
        assert!(reloaded.service("plain").is_none() && reloaded.service("a").is_none());
        assert!(reloaded.auth_api().is_none());
    }
}
