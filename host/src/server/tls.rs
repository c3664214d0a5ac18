//! The TLS listener's certificate and the rustls configuration that presents it.
//!
//! The certificate and key sit behind an [`ArcSwap`] that rustls asks on every handshake, so a
//! reload replaces them for new connections without touching open ones (a TLS session keeps
//! the key it was made with). They are read and checked in full before the swap: a broken
//! file refuses the reload and the old certificate keeps serving.

use anyhow::Context;
use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::Path;
use std::sync::Arc;

/// ALPN protocols offered, preferred first: clients that speak HTTP/2 get it.
pub const ALPN_H2: &[u8] = b"h2";
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// The certificate the TLS listener presents now; replaced whole by a reload.
pub struct Certificates {
    current: ArcSwap<CertifiedKey>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl Certificates {
    /// The certificate of `[server]`, when it has a TLS listener.
    pub fn for_settings(settings: &keygate_policy::Server) -> anyhow::Result<Option<Arc<Self>>> {
        Ok(load_settings(settings)?.map(|key| {
            Arc::new(Self {
                current: ArcSwap::new(key),
            })
        }))
    }

    /// Read the certificate and key `settings` name, ready for [`Certificates::install`];
    /// `None` when `settings` has no TLS listener (the running one keeps its certificate:
    /// removing `tls_listen` takes a restart like any listener change).
    pub fn prepare(settings: &keygate_policy::Server) -> anyhow::Result<Option<Arc<CertifiedKey>>> {
        load_settings(settings)
    }

    /// New handshakes present `key` from now on.
    pub fn install(&self, key: Arc<CertifiedKey>) {
        self.current.store(key);
    }

    /// The rustls configuration of the TLS listener: this certificate (asked for at each
    /// handshake, so a reload needs no new configuration), ALPN `h2` then `http/1.1`, TLS 1.2
    /// and 1.3. A client without ALPN gets HTTP/1.1.
    pub fn server_config(self: &Arc<Self>) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions of the ring provider")?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
        Ok(Arc::new(config))
    }
}

/// Refuse a `[server]` whose TLS files cannot serve (`keygate check`, start, reload).
pub fn check(settings: &keygate_policy::Server) -> anyhow::Result<()> {
    load_settings(settings).map(drop)
}

fn load_settings(settings: &keygate_policy::Server) -> anyhow::Result<Option<Arc<CertifiedKey>>> {
    if settings.tls_listen.is_none() {
        return Ok(None);
    }
    let (Some(cert), Some(key)) = (&settings.tls_cert, &settings.tls_key) else {
        // The policy crate's validation says which one is missing.
        anyhow::bail!("server.tls_cert and server.tls_key are required with server.tls_listen");
    };
    load(cert, key).map(|key| Some(Arc::new(key)))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A PEM certificate chain (leaf first) and the PEM private key of its leaf.
fn load(cert_path: &Path, key_path: &Path) -> anyhow::Result<CertifiedKey> {
    let cert_pem = std::fs::read(cert_path)
        .with_context(|| format!("server.tls_cert: reading {}", cert_path.display()))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| {
            anyhow::anyhow!(
                "server.tls_cert: {} is not valid PEM: {err}",
                cert_path.display()
            )
        })?;
    if chain.is_empty() {
        anyhow::bail!(
            "server.tls_cert: {} holds no CERTIFICATE block",
            cert_path.display()
        );
    }
    let key_pem = std::fs::read(key_path)
        .with_context(|| format!("server.tls_key: reading {}", key_path.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|err| match err {
        rustls::pki_types::pem::Error::NoItemsFound => anyhow::anyhow!(
            "server.tls_key: {} holds no private key (PKCS#8, PKCS#1 or SEC1 PEM block)",
            key_path.display()
        ),
        err => anyhow::anyhow!(
            "server.tls_key: {} is not valid PEM: {err}",
            key_path.display()
        ),
    })?;
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|err| match err {
        rustls::Error::InconsistentKeys(_) => anyhow::anyhow!(
            "server.tls_key: {} is not the key of the certificate in {}",
            key_path.display(),
            cert_path.display()
        ),
        err => anyhow::anyhow!(
            "server.tls_cert / server.tls_key: {} with {} cannot serve: {err}",
            cert_path.display(),
            key_path.display()
        ),
    })?;
    // `from_der` compared the leaf's public key with the key's (ring's keys all have one), so
    // the leaf also parsed: a certificate that would fail every handshake is refused here.
    Ok(certified)
}
