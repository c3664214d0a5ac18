//! Which instance of a plugin applies to a request: Kong's `lookup_cfg`
//! (`kong/runloop/plugins_iterator.lua`), where the most specific scope wins:
//! route+service+consumer > route+consumer > service+consumer > route+service > consumer >
//! route > service > global. Note that a consumer-only instance beats a route-only one.
//!
//! It runs per request in the guest, so the names in plugin scopes are numbered once when the
//! list is built, and a lookup is at most a handful of hash probes on small integer keys,
//! without allocating.

use super::{Plugin, PluginKind, Plugins};
use std::collections::HashMap;

/// Kong's order, most specific first: which of (route, service, consumer) a level requires.
const LEVELS: [(bool, bool, bool); 8] = [
    (true, true, true),
    (true, false, true),
    (false, true, true),
    (true, true, false),
    (false, false, true),
    (true, false, false),
    (false, true, false),
    (false, false, false),
];

/// "This scope field is not set" in an index key.
const UNSET: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    kind: PluginKind,
    route: u32,
    service: u32,
    consumer: u32,
}

/// Enabled instances by exact scope.
#[derive(Debug, Clone, Default)]
pub(super) struct Index {
    routes: HashMap<Box<str>, u32>,
    services: HashMap<Box<str>, u32>,
    consumers: HashMap<Box<str>, u32>,
    instances: HashMap<Key, usize>,
    /// Per kind, a bit per level of [`LEVELS`] that holds an instance, so absent levels (and
    /// plugins not configured at all) cost nothing.
    levels: [u8; PluginKind::ALL.len()],
}

impl Index {
    pub(super) fn new(list: &[Plugin]) -> Self {
        let mut index = Self::default();
        for (position, plugin) in list.iter().enumerate() {
            if !plugin.enabled {
                continue;
            }
            let route = number(&mut index.routes, plugin.route.as_deref());
            let service = number(&mut index.services, plugin.service.as_deref());
            let consumer = number(&mut index.consumers, plugin.consumer.as_deref());
            let kind = plugin.kind();
            let shape = (route != UNSET, service != UNSET, consumer != UNSET);
            let level = LEVELS
                .iter()
                .position(|&level| level == shape)
                .expect("every scope shape is a level");
            index.levels[kind.slot()] |= 1 << level;
            // Validation refuses two instances at one scope; an unvalidated list (a guest
            // config from elsewhere) keeps the first, as written.
            index
                .instances
                .entry(Key {
                    kind,
                    route,
                    service,
                    consumer,
                })
                .or_insert(position);
        }
        index
    }
}

fn number(names: &mut HashMap<Box<str>, u32>, name: Option<&str>) -> u32 {
    let Some(name) = name else {
        return UNSET;
    };
    let next = u32::try_from(names.len()).expect("fewer than 2^32 - 1 names");
    *names.entry(name.into()).or_insert(next)
}

/// Who a request is from, as authentication found it: a `[[consumers]]` entry, the auth API's
/// answer, or `key_auth.anonymous`. A plugin's `consumer` matches either name; the id is
/// tried first, as Kong resolves a reference by id before username.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumerIdentity<'a> {
    pub id: Option<&'a str>,
    pub username: Option<&'a str>,
}

/// A request's place among the plugin scopes, resolved once per request and reused for every
/// plugin. Names no instance is scoped to resolve to nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestScope {
    route: Option<u32>,
    service: Option<u32>,
    /// The consumer's id, then its username.
    consumer: [Option<u32>; 2],
}

/// The instance that applies, and its position in the list (the same in the host's and the
/// guest's config).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Applicable<'a> {
    pub position: usize,
    pub plugin: &'a Plugin,
}

impl Plugins {
    /// Resolve the matched route (by name; unnamed routes carry no route-scoped plugins), its
    /// service and the authenticated consumer, if any.
    pub fn scope(
        &self,
        route: Option<&str>,
        service: Option<&str>,
        consumer: Option<ConsumerIdentity<'_>>,
    ) -> RequestScope {
        let index = &self.index;
        if index.instances.is_empty() {
            return RequestScope::default();
        }
        let find = |names: &HashMap<Box<str>, u32>, name: Option<&str>| {
            name.and_then(|name| names.get(name).copied())
        };
        let consumer = consumer.unwrap_or_default();
        RequestScope {
            route: find(&index.routes, route),
            service: find(&index.services, service),
            consumer: [
                find(&index.consumers, consumer.id),
                find(&index.consumers, consumer.username),
            ],
        }
    }

    /// The enabled `kind` instance with the most specific scope that covers the request.
    pub fn applicable(&self, kind: PluginKind, scope: &RequestScope) -> Option<Applicable<'_>> {
        let index = &self.index;
        let levels = index.levels[kind.slot()];
        if levels == 0 {
            return None;
        }
        let required = |needed: bool, value: Option<u32>| match (needed, value) {
            (false, _) => Some(UNSET),
            (true, value) => value,
        };
        for (level, &(by_route, by_service, by_consumer)) in LEVELS.iter().enumerate() {
            if levels & (1 << level) == 0 {
                continue;
            }
            let (Some(route), Some(service)) = (
                required(by_route, scope.route),
                required(by_service, scope.service),
            ) else {
                continue;
            };
            let consumers = if by_consumer {
                scope.consumer
            } else {
                [Some(UNSET), None]
            };
            for consumer in consumers.into_iter().flatten() {
                let key = Key {
                    kind,
                    route,
                    service,
                    consumer,
                };
                if let Some(&position) = index.instances.get(&key) {
                    return Some(Applicable {
                        position,
                        plugin: &self.list[position],
                    });
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::{PluginConfig, RateLimiting};

    const RL: PluginKind = PluginKind::RateLimiting;

    /// A rate-limiting instance whose `minute` tells which one it is.
    fn at(scope: &str, id: f64) -> Plugin {
        let mut plugin = Plugin {
            service: None,
            route: None,
            consumer: None,
            enabled: true,
            config: PluginConfig::RateLimiting(RateLimiting {
                minute: Some(id),
                ..RateLimiting::default()
            }),
        };
        for part in scope.split(' ').filter(|part| !part.is_empty()) {
            let (what, name) = part.split_once('=').unwrap();
            let slot = match what {
                "route" => &mut plugin.route,
                "service" => &mut plugin.service,
                "consumer" => &mut plugin.consumer,
                _ => unreachable!(),
            };
            *slot = Some(name.to_string());
        }
        plugin
    }

    fn disabled(plugin: Plugin) -> Plugin {
        Plugin {
            enabled: false,
            ..plugin
        }
    }

    const ALICE: ConsumerIdentity<'static> = ConsumerIdentity {
        id: Some("alice-id"),
        username: Some("alice"),
    };

    /// The `minute` of the instance that applies to route r1 of service s1, from `consumer`.
    fn applied(plugins: &[Plugin], consumer: Option<ConsumerIdentity<'_>>) -> Option<f64> {
        applied_to(plugins, Some("r1"), Some("s1"), consumer)
    }

    fn applied_to(
        plugins: &[Plugin],
        route: Option<&str>,
        service: Option<&str>,
        consumer: Option<ConsumerIdentity<'_>>,
    ) -> Option<f64> {
        let plugins = Plugins::new(plugins.to_vec());
        let scope = plugins.scope(route, service, consumer);
        let found = plugins.applicable(RL, &scope)?;
        assert!(std::ptr::eq(found.plugin, &plugins[found.position]));
        found.plugin.rate_limiting().unwrap().minute
    }

    #[test]
    fn nothing_configured_applies_nothing() {
        assert_eq!(applied(&[], Some(ALICE)), None);
        assert_eq!(applied(&[at("route=other", 1.0)], Some(ALICE)), None);
    }

    #[test]
    fn route_beats_service_beats_global() {
        let global = at("", 1.0);
        let service = at("service=s1", 2.0);
        let route = at("route=r1", 3.0);
        assert_eq!(applied(std::slice::from_ref(&global), None), Some(1.0));
        assert_eq!(applied(&[global.clone(), service.clone()], None), Some(2.0));
        assert_eq!(
            applied(&[route.clone(), global.clone(), service.clone()], None),
            Some(3.0)
        );
        // Another route or service of the gateway keeps the less specific instance.
        let plugins = [global, service, route];
        assert_eq!(
            applied_to(&plugins, Some("r2"), Some("s1"), None),
            Some(2.0)
        );
        assert_eq!(
            applied_to(&plugins, Some("r3"), Some("s2"), None),
            Some(1.0)
        );
        assert_eq!(
            applied_to(&plugins, None, Some("s2"), None),
            Some(1.0),
            "unnamed route"
        );
    }

    #[test]
    fn consumer_beats_route_as_in_kong() {
        let plugins = [at("route=r1", 1.0), at("consumer=alice", 2.0)];
        assert_eq!(applied(&plugins, Some(ALICE)), Some(2.0));
        assert_eq!(
            applied(&plugins, None),
            Some(1.0),
            "anyone else gets the route's"
        );
    }

    #[test]
    fn consumer_and_route_beats_consumer_and_route_alone() {
        let plugins = [
            at("route=r1", 1.0),
            at("consumer=alice", 2.0),
            at("route=r1 consumer=alice", 3.0),
        ];
        assert_eq!(applied(&plugins, Some(ALICE)), Some(3.0));
        assert_eq!(
            applied_to(&plugins, Some("r2"), Some("s1"), Some(ALICE)),
            Some(2.0)
        );
    }

    /// Kong's whole order: take the most specific instance away, the next one applies.
    #[test]
    fn every_level_in_kongs_order() {
        let order = [
            "route=r1 service=s1 consumer=alice",
            "route=r1 consumer=alice",
            "service=s1 consumer=alice",
            "route=r1 service=s1",
            "consumer=alice",
            "route=r1",
            "service=s1",
            "",
        ];
        // Written least specific first, so file order cannot be what decides.
        let mut plugins: Vec<Plugin> = order
            .iter()
            .enumerate()
            .rev()
            .map(|(rank, scope)| at(scope, rank as f64 + 1.0))
            .collect();
        for (rank, scope) in order.iter().enumerate() {
            assert_eq!(
                applied(&plugins, Some(ALICE)),
                Some(rank as f64 + 1.0),
                "{scope}"
            );
            plugins.pop();
        }
        assert_eq!(applied(&plugins, Some(ALICE)), None);
    }

    #[test]
    fn disabled_instances_are_skipped_not_obeyed() {
        let plugins = [at("", 1.0), disabled(at("route=r1", 2.0))];
        assert_eq!(applied(&plugins, None), Some(1.0));
        assert_eq!(applied(&[disabled(at("", 1.0))], None), None);
        let plugins = [disabled(at("consumer=alice", 2.0)), at("route=r1", 3.0)];
        assert_eq!(applied(&plugins, Some(ALICE)), Some(3.0));
    }

    #[test]
    fn a_consumer_is_named_by_id_or_username_id_first() {
        let by_username = [at("consumer=alice", 1.0)];
        let by_id = [at("consumer=alice-id", 2.0)];
        assert_eq!(applied(&by_username, Some(ALICE)), Some(1.0));
        assert_eq!(applied(&by_id, Some(ALICE)), Some(2.0));
        let id_only = ConsumerIdentity {
            id: Some("alice-id"),
            username: None,
        };
        assert_eq!(applied(&by_username, Some(id_only)), None);
        let both = [at("consumer=alice", 1.0), at("consumer=alice-id", 2.0)];
        assert_eq!(applied(&both, Some(ALICE)), Some(2.0));
        let bob = ConsumerIdentity {
            id: Some("bob-id"),
            username: Some("bob"),
        };
        assert_eq!(applied(&both, Some(bob)), None);
    }

    #[test]
    fn the_same_scope_twice_keeps_the_first_written() {
        assert_eq!(
            applied(&[at("route=r1", 1.0), at("route=r1", 2.0)], None),
            Some(1.0)
        );
    }

    /// The index against Kong's rule written out directly, over every scope of a small world.
    #[test]
    fn the_index_agrees_with_a_direct_reading_of_kongs_order() {
        let routes = [None, Some("r1"), Some("r2")];
        let services = [None, Some("s1"), Some("s2")];
        let consumers = [None, Some("alice"), Some("bob")];
        let mut scopes = Vec::new();
        for route in routes {
            for service in services {
                for consumer in consumers {
                    scopes.push((route, service, consumer));
                }
            }
        }
        // A few different subsets of all 27 scopes, some instances disabled.
        for seed in 1..40u32 {
            let plugins: Vec<Plugin> = scopes
                .iter()
                .enumerate()
                .filter(|(i, _)| (seed.wrapping_mul(2654435761) >> (i % 29)) & 1 == 1)
                .map(|(i, (route, service, consumer))| Plugin {
                    route: route.map(Into::into),
                    service: service.map(Into::into),
                    consumer: consumer.map(Into::into),
                    enabled: !(i as u32 + seed).is_multiple_of(5),
                    ..at("", i as f64)
                })
                .collect();
            let index = Plugins::new(plugins.clone());
            for &(route, service, consumer) in &scopes {
                let identity = consumer.map(|name| ConsumerIdentity {
                    id: None,
                    username: Some(name),
                });
                let want = direct(&plugins, route, service, consumer);
                let scope = index.scope(route, service, identity);
                let got = index.applicable(RL, &scope).map(|found| found.position);
                assert_eq!(got, want, "seed {seed}: {route:?} {service:?} {consumer:?}");
            }
        }
    }

    /// Kong's order as a rank over each matching, enabled instance's scope shape.
    fn direct(
        plugins: &[Plugin],
        route: Option<&str>,
        service: Option<&str>,
        consumer: Option<&str>,
    ) -> Option<usize> {
        let matches = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|want| Some(want) == have)
        };
        let rank = |plugin: &Plugin| match (
            plugin.route.is_some(),
            plugin.service.is_some(),
            plugin.consumer.is_some(),
        ) {
            (true, true, true) => 0,
            (true, false, true) => 1,
            (false, true, true) => 2,
            (true, true, false) => 3,
            (false, false, true) => 4,
            (true, false, false) => 5,
            (false, true, false) => 6,
            (false, false, false) => 7,
        };
        plugins
            .iter()
            .enumerate()
            .filter(|(_, plugin)| {
                plugin.enabled
                    && matches(&plugin.route, route)
                    && matches(&plugin.service, service)
                    && matches(&plugin.consumer, consumer)
            })
            .min_by_key(|(position, plugin)| (rank(plugin), *position))
            .map(|(position, _)| position)
    }
}
