//! The trial a component and configuration pass before they take traffic: synthetic
//! requests, with throwaway state, that must be answered (and, on the fast path, decided)
//! the way a working gateway would.

use super::component::CompiledGuest;
use super::component::policy_api::{Decision, RequestHead};
use super::gateway::{Active, Gateway};
use crate::capabilities::counters::{CounterStores, Counters};
use crate::capabilities::key_cache::KeyCache;
use crate::capabilities::outgoing_http::AllowList;
use crate::metrics::Metrics;
use crate::proxy;
use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use keygate_policy::Config;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

impl Gateway {
    /// Run synthetic requests through `guest` + `config` before they take traffic: proves the
    /// component instantiates under the pool's limits and answers without trapping, and, on
    /// the fast path, that it decides a route with key auth (a static key's request must be
    /// forwarded under a plan the host accepts; a request without a key refused). It uses a
    /// throwaway key cache and counters and may not call out, so it changes nothing anywhere. The status
    /// reported is the no-route request's.
    pub async fn trial(
        &self,
        guest: Arc<CompiledGuest>,
        config: Arc<Config>,
    ) -> anyhow::Result<u16> {
        // Trial requests count in throwaway counters: a trial must not use anyone's quota.
        let scratch_counters = Arc::new(CounterStores::local_only(Arc::new(Counters::new(16))));
        let mut active = Active::new(
            guest,
            config,
            &self.outgoing,
            scratch_counters,
            Arc::default(),
            Arc::default(),
            self.listen_port,
        );
        active.outgoing = self.outgoing.with_allowed(AllowList::default());
        let scratch_cache = Arc::new(KeyCache::new(
            16,
            Duration::from_millis(100),
            Arc::new(Metrics::default()),
        ));
        let request = hyper::Request::get("/.well-known/keygate-trial")
            .header(http::header::HOST, "keygate-trial.invalid")
            .body(Full::new(Bytes::new()))
            .expect("static parts form a valid request");
        let client = SocketAddr::from(([127, 0, 0, 1], 0));
        if active.fast_path {
            self.trial_decisions(&active, &scratch_cache).await?;
        }
        let response = self
            .run_handler(&active, scratch_cache, request, client)
            .await
            .map_err(|failure| {
                anyhow::anyhow!("the trial request failed: {}", failure.describe())
            })?;
        let status = response.status().as_u16();
        tokio::time::timeout(Duration::from_secs(5), response.into_body().collect())
            .await
            .context("the trial response body did not finish within 5s")?
            .map_err(|err| anyhow::anyhow!("the trial response body failed: {err}"))?;
        Ok(status)
    }

    /// The fast path's part of the trial: decide a keyed route with and without a key.
    async fn trial_decisions(
        &self,
        active: &Active,
        scratch_cache: &Arc<KeyCache>,
    ) -> anyhow::Result<()> {
        let config = &active.config;
        let Some(route) =
            config.services.iter().flat_map(|s| &s.routes).find(|r| {
                r.auth && r.methods.is_empty() && r.hosts.is_empty() && r.headers.is_empty()
            })
        else {
            return Ok(());
        };
        let Some(path) = route.paths.first().and_then(|p| p.literal_prefix()) else {
            return Ok(());
        };
        let head = |headers: Vec<u8>| RequestHead {
            method: "GET".into(),
            scheme: "http".into(),
            authority: "keygate-trial.invalid".into(),
            path_with_query: path.to_string(),
            headers,
            client_ip: Some("127.0.0.1".into()),
            local_port: self.listen_port,
        };
        let unkeyed = self
            .decide(active, Arc::clone(scratch_cache), &head(Vec::new()))
            .await
            .map(|decided| decided.decision)
            .map_err(|f| anyhow::anyhow!("the trial decision failed: {}", f.describe()))?;
        if matches!(unkeyed, Decision::Forward(_)) && config.key_auth.anonymous.is_none() {
            anyhow::bail!(
                "the trial request without a key to route {:?} was forwarded",
                route.name
            );
        }
        let key_name = config.key_auth.key_names.first();
        let static_key = config
            .consumers
            .iter()
            .flat_map(|c| c.keys.first())
            .map(|key| key.key().to_string())
            .next();
        if let (Some(name), Some(key), true) = (key_name, static_key, config.key_auth.key_in_header)
        {
            let keyed = self
                .decide(
                    active,
                    Arc::clone(scratch_cache),
                    &head(format!("{}: {key}\r\n", name.to_ascii_lowercase()).into_bytes()),
                )
                .await
                .map(|decided| decided.decision)
                .map_err(|f| anyhow::anyhow!("the trial decision failed: {}", f.describe()))?;
            match keyed {
                Decision::Forward(plan) => {
                    proxy::plan::validate(plan, config).map_err(|err| {
                        anyhow::anyhow!("the trial forward plan is not acceptable: {err}")
                    })?;
                }
                Decision::UseHandler => {}
                Decision::Respond(reply) => anyhow::bail!(
                    "the trial request with a consumer's key to route {:?} was answered {} instead of forwarded",
                    route.name,
                    reply.status
                ),
            }
        }
        Ok(())
    }
}
