//! The relay config both relay benchmarks use (`examples/bench`, and `examples/bench_relay.rs`,
//! which includes this file): signed webhook destinations on one local receiver and one route.

use taskfleet::config::{RelayConfig, RouteConfig};
use taskfleet::domain::{Assignee, EventKind};
use taskfleet::outbound::destination::Destination;

/// `destinations` signed webhooks `d0`, `d1`, … at `<base>/hook/<n>`, and one route sending
/// every `step` event of `assignee` to all of them.
pub fn fanout_config(
    base: &str,
    destinations: usize,
    assignee: &str,
) -> anyhow::Result<RelayConfig> {
    let mut relay = RelayConfig {
        allow: vec!["127.0.0.1/32".into()],
        ..RelayConfig::default()
    };
    let mut names = Vec::new();
    for n in 0..destinations {
        let name = format!("d{n}");
        relay.destinations.insert(
            name.clone(),
            Destination::Webhook {
                url: format!("{base}/hook/{n}"),
                // Signed, as a real webhook is: a fresh secret per destination and run.
                secret: Some(taskfleet::outbound::signature::Signer::generate_secret()),
                secret_env: None,
                events: vec![EventKind::Step],
                headers: Default::default(),
                headers_env: Default::default(),
            },
        );
        names.push(name);
    }
    relay.routes = vec![RouteConfig {
        assignees: vec![Assignee::parse(assignee)?],
        events: vec![EventKind::Step],
        destinations: names,
        ..RouteConfig::default()
    }];
    Ok(relay)
}
