//! Turning component bytes into something requests can instantiate: compile, link-check.

use super::precompiled::PrecompiledCache;
use super::state::RequestState;
use anyhow::Context;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::SystemTime;
use wasmtime::Engine;
use wasmtime::component::InstancePre;
use wasmtime::component::{Component, Linker};
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyIndices};

/// The guest's `keygate:gateway/reusable-policy` and `block-policy` exports, as the host calls
/// them (a component exporting only the 0.1.1 `policy` gets the portable path). Each interface
/// is looked up on its own: a 0.1.3 component exports `block-policy` alone.
pub mod policy_bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "keygate:gateway/fast-path",
        exports: { default: async },
        with: {
            "keygate:gateway/key-cache": crate::capabilities::key_cache::bindings::keygate::gateway::key_cache,
            "keygate:gateway/counters": crate::capabilities::key_cache::bindings::keygate::gateway::counters,
        },
    });
}

use policy_api::{Decision, FailureContext, Reply, RequestHead};
pub use policy_bindings::exports::keygate::gateway::block_policy as policy_api;
use policy_bindings::exports::keygate::gateway::reusable_policy as reusable_api;
pub use policy_bindings::exports::keygate::gateway::reusable_policy::Reuse;

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

/// Where a component's native code came from: whether a restart or a swap back to a known
/// component really skipped Cranelift shows here (status and metrics), not only in timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadedFrom {
    Compiled,
    PrecompiledCache,
}

impl LoadedFrom {
    pub fn label(self) -> &'static str {
        match self {
            Self::Compiled => "compiled",
            Self::PrecompiledCache => "precompiled_cache",
        }
    }
}

/// A compiled, link-checked component, ready to instantiate per request.
pub struct CompiledGuest {
    pub pre: InstancePre<RequestState>,
    proxy: ProxyIndices,
    /// Present when the component exports `keygate:gateway/block-policy` (the fast path).
    policy: Option<PolicyIndices>,
    pub source: GuestSource,
    pub sha256: String,
    pub loaded_at: SystemTime,
    pub loaded_from: LoadedFrom,
}

impl GuestSource {
    /// The component named by the config, or the embedded one.
    pub fn from_config(path: Option<&Path>) -> Self {
        path.map_or(Self::Embedded, |path| Self::File(path.to_path_buf()))
    }

    pub fn read(&self) -> anyhow::Result<Vec<u8>> {
        match self {
            Self::Embedded => Ok(EMBEDDED_GUEST.to_vec()),
            Self::File(path) => {
                std::fs::read(path).with_context(|| format!("reading component {}", path.display()))
            }
        }
    }
}

/// SHA-256 hex of component bytes: how status reports and the cache name a component.
pub fn wasm_sha256(bytes: &[u8]) -> String {
    crate::http_util::hex(&Sha256::digest(bytes))
}

impl CompiledGuest {
    /// Compile (or load from the precompiled cache) and link-check: a component that imports
    /// something the host does not provide, or does not export `wasi:http/incoming-handler`,
    /// fails here, never on a request.
    pub fn compile(
        engine: &Engine,
        linker: &Linker<RequestState>,
        bytes: &[u8],
        source: GuestSource,
        cache: Option<&PrecompiledCache>,
    ) -> anyhow::Result<Self> {
        let sha256 = wasm_sha256(bytes);
        if !looks_like_component(bytes) {
            anyhow::bail!("{source} is not a valid WebAssembly component (bad header)");
        }
        let (component, loaded_from) = match cache {
            Some(cache) => cache
                .component(engine, bytes, &sha256)
                .map(|(component, hit)| {
                    tracing::debug!(%source, hit, "precompiled cache");
                    let loaded_from = if hit {
                        LoadedFrom::PrecompiledCache
                    } else {
                        LoadedFrom::Compiled
                    };
                    (component, loaded_from)
                }),
            None => Component::from_binary(engine, bytes)
                .map(|component| (component, LoadedFrom::Compiled))
                .map_err(anyhow::Error::from),
        }
        .with_context(|| format!("{source} is not a valid WebAssembly component"))?;
        crate::allocator::return_freed_memory();
        let pre = linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("{source} cannot be linked against keygate's host"))?;
        let proxy = ProxyIndices::new(&pre)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("{source} does not export wasi:http/incoming-handler"))?;
        let policy = policy_api::GuestIndices::new(&pre)
            .ok()
            .map(|decide| PolicyIndices {
                decide,
                reusable: reusable_api::GuestIndices::new(&pre).ok(),
            });
        Ok(Self {
            pre,
            proxy,
            policy,
            source,
            sha256,
            loaded_at: SystemTime::now(),
            loaded_from,
        })
    }
}

/// Where a component's policy functions are, found once when it is compiled.
struct PolicyIndices {
    decide: policy_api::GuestIndices,
    reusable: Option<reusable_api::GuestIndices>,
}

/// A live instance of a guest: its `wasi:http` handler, and its policy when it has one.
pub struct GuestInstance {
    pub proxy: Proxy,
    pub policy: Option<Policy>,
}

/// An instance's policy: `block-policy`, and `reusable-policy` when it exports it.
pub struct Policy {
    decide: policy_api::Guest,
    reusable: Option<reusable_api::Guest>,
}

impl Policy {
    /// The guest's decision, and whether it may be reused (never, for a component without
    /// `reusable-policy`).
    pub async fn decide(
        &self,
        store: &mut wasmtime::Store<RequestState>,
        head: &RequestHead,
    ) -> wasmtime::Result<(Decision, Option<Reuse>)> {
        match &self.reusable {
            Some(reusable) => reusable.call_decide(store, head).await,
            None => Ok((self.decide.call_decide(store, head).await?, None)),
        }
    }

    pub async fn upstream_failed(
        &self,
        store: &mut wasmtime::Store<RequestState>,
        context: &FailureContext,
    ) -> wasmtime::Result<Reply> {
        self.decide.call_upstream_failed(store, context).await
    }
}

impl CompiledGuest {
    /// Whether the component can decide requests for the host to forward.
    pub fn has_policy(&self) -> bool {
        self.policy.is_some()
    }

    /// Instantiate in `store`, looking up the exports once.
    pub async fn instantiate(
        &self,
        store: &mut wasmtime::Store<RequestState>,
    ) -> wasmtime::Result<GuestInstance> {
        let instance = self.pre.instantiate_async(&mut *store).await?;
        let proxy = self.proxy.load(&mut *store, &instance)?;
        let policy = match &self.policy {
            Some(indices) => Some(Policy {
                decide: indices.decide.load(&mut *store, &instance)?,
                reusable: match &indices.reusable {
                    Some(reusable) => Some(reusable.load(&mut *store, &instance)?),
                    None => None,
                },
            }),
            None => None,
        };
        Ok(GuestInstance { proxy, policy })
    }
}

/// Components start with `\0asm` and a layer-1 version field; anything else (a core module,
/// a precompiled `.cwasm`, a text file) is refused before it reaches the compiler.
fn looks_like_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[6..8] == [1, 0]
}
