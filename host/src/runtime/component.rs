//! Turning component bytes into something requests can instantiate: compile, link-check.

use super::state::RequestState;
use anyhow::Context;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::time::SystemTime;
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// The component built into the binary: keygate's own policy.
pub const EMBEDDED_GUEST: &[u8] = include_bytes!(env!("KEYGATE_GUEST_WASM"));

/// Where a component came from, for status and error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestSource {
    Embedded,
    File(PathBuf),
}

impl std::fmt::Display for GuestSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Embedded => f.write_str("embedded component"),
            Self::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A compiled, link-checked component, ready to instantiate per request.
pub struct CompiledGuest {
    pub pre: ProxyPre<RequestState>,
    pub source: GuestSource,
    pub sha256: String,
    pub loaded_at: SystemTime,
}

impl CompiledGuest {
    /// Read the component named by the config (or the embedded one).
    pub fn load(
        engine: &Engine,
        linker: &Linker<RequestState>,
        path: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        let (bytes, source) = match path {
            Some(path) => (
                std::fs::read(path)
                    .with_context(|| format!("reading component {}", path.display()))?,
                GuestSource::File(path.to_path_buf()),
            ),
            None => (EMBEDDED_GUEST.to_vec(), GuestSource::Embedded),
        };
        Self::from_bytes(engine, linker, &bytes, source)
    }

    /// Compile and link-check: a component that imports something the host does not provide,
    /// or does not export `wasi:http/incoming-handler`, fails here, never on a request.
    pub fn from_bytes(
        engine: &Engine,
        linker: &Linker<RequestState>,
        bytes: &[u8],
        source: GuestSource,
    ) -> anyhow::Result<Self> {
        let component = Component::from_binary(engine, bytes)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("{source} is not a valid WebAssembly component"))?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("{source} cannot be linked against keygate's host"))?;
        let pre = ProxyPre::new(pre)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("{source} does not export wasi:http/incoming-handler"))?;
        Ok(Self {
            pre,
            source,
            sha256: crate::hex(&Sha256::digest(bytes)),
            loaded_at: SystemTime::now(),
        })
    }
}
