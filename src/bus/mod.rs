//! Everything that talks to NATS: the connection, the JetStream topology, and the wire format.
//!
//! Named by role (`bus`) so it never shadows the `async_nats` crate.

pub mod append;
mod codec;
pub mod direct;
mod error;
pub mod permissions;
pub mod raw;
pub mod subjects;
mod topology;

pub use codec::{decode, encode, message_headers, HEADER_TRACEPARENT, RECORDED_HEADER};
pub use error::{BusError, NatsResultExt};
pub use topology::{
    delivery_consumer_config, ledger_config, relay_consumer_config, Topology, TopologyConfig,
    LAYOUT, LAYOUT_KEY, MIGRATE_HINT,
};

use async_nats::jetstream;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, OnceCell};

/// How to reach NATS.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Server URL(s), comma separated.
    pub url: String,
    /// Name shown in the server's connection list.
    pub name: String,
    /// How long to keep trying the first connection.
    pub connect_timeout: Duration,
    /// Optional user name (per-container credentials).
    pub user: Option<String>,
    /// Optional password.
    pub password: Option<String>,
}

/// A live connection with its JetStream context and the fleet's streams and buckets.
#[derive(Clone, Debug)]
pub struct Bus {
    /// The core NATS client.
    pub client: async_nats::Client,
    /// JetStream context.
    pub js: jetstream::Context,
    /// Streams and buckets (shared: a handle holds each stream's info, so copying it for every
    /// clone of the bus cost the relay ~6 % of its CPU).
    pub topology: Arc<Topology>,
    /// How it connected, for [`reader`](Self::reader).
    opts: Arc<ConnectOptions>,
    /// The second connection for reading the task queue, made on first use.
    reader: Arc<OnceCell<Reader>>,
}

/// A second connection, used only to read messages that producers outside taskfleet may have
/// written (the task queue). A message whose headers no client can parse (see [`raw`]) makes
/// async-nats drop the connection that received it; on this one that disturbs nothing else (no
/// lease renewal, no event, no API request), and [`resets`](Self::resets) tells the reader to
/// move the message aside.
#[derive(Clone, Debug)]
pub struct Reader {
    /// The connection.
    pub client: async_nats::Client,
    resets: watch::Receiver<u64>,
}

/// How long a JetStream request over the [`Reader`] waits for its answer (see
/// [`Reader::jetstream`]).
const READER_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

impl Reader {
    /// Counts the times the connection was lost; `changed()` wakes on the next loss.
    pub fn resets(&self) -> watch::Receiver<u64> {
        self.resets.clone()
    }

    /// JetStream over this connection, its requests answered within 2 s or asked again: an
    /// answer is lost when a message drops the connection, and async-nats's pull streams read
    /// their consumer's state after every reconnection and pull nothing until they have it
    /// (with the client's 10 s request timeout, two drops in a row stalled them that long).
    pub fn jetstream(&self) -> jetstream::Context {
        jetstream::ContextBuilder::new()
            .timeout(READER_REQUEST_TIMEOUT)
            .build(self.client.clone())
    }
}

impl Bus {
    /// Connects and makes sure the topology exists (idempotent; safe when many processes start
    /// at once).
    pub async fn connect(opts: &ConnectOptions, topo: &TopologyConfig) -> Result<Self, BusError> {
        let client = connect_client(opts).await?;
        check_server_version(&client)?;
        let js = jetstream::new(client.clone());
        let topology = Topology::ensure(&js, topo).await?;
        Ok(Self {
            client,
            js,
            topology: Arc::new(topology),
            opts: Arc::new(opts.clone()),
            reader: Arc::default(),
        })
    }

    /// The queue-reading connection (see [`Reader`]), connected on first use and shared by
    /// every clone of this `Bus`. It may be made after the servers in the URL went away: it
    /// also tries every server the cluster advertised to the main connection.
    pub async fn reader(&self) -> Result<Reader, BusError> {
        let reader = self.reader.get_or_try_init(|| async {
            let (tx, resets) = watch::channel(0);
            let mut url = self.opts.url.clone();
            for advertised in self.client.server_info().connect_urls {
                url = format!("{url},{advertised}");
            }
            let opts = ConnectOptions {
                name: format!("{} (queue reads)", self.opts.name),
                url,
                ..(*self.opts).clone()
            };
            let client = connect_with(&opts, Some(tx)).await?;
            Ok::<_, BusError>(Reader { client, resets })
        });
        reader.await.cloned()
    }

    /// Whether the client is currently connected.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}

/// Connects a plain client, retrying the first connection until `connect_timeout` passes.
///
/// With `retry_on_initial_connect`, async-nats hands the client back at once and connects in
/// the background; so this waits until the client is connected, or gives up after
/// `connect_timeout` naming the URL and the last failure (instead of letting the first
/// JetStream requests time out one after another, ~50 s).
pub async fn connect_client(opts: &ConnectOptions) -> Result<async_nats::Client, BusError> {
    connect_with(opts, None).await
}

/// [`connect_client`], counting every lost connection in `resets` when given.
async fn connect_with(
    opts: &ConnectOptions,
    resets: Option<watch::Sender<u64>>,
) -> Result<async_nats::Client, BusError> {
    let last_error = Arc::new(Mutex::new(None::<String>));
    let seen = last_error.clone();
    let resets = resets.map(Arc::new);
    let mut o = async_nats::ConnectOptions::new()
        .name(&opts.name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .event_callback(move |event| {
            let seen = seen.clone();
            let resets = resets.clone();
            async move {
                match event {
                    async_nats::Event::ClientError(e) => {
                        *seen.lock().expect("last error lock") = Some(e.to_string());
                    }
                    async_nats::Event::Disconnected => {
                        if let Some(r) = resets {
                            r.send_modify(|n| *n += 1);
                        }
                    }
                    _ => {}
                }
            }
        });
    // Credentials from the options, else from a URL's `user:password@` (async-nats would not
    // send those itself).
    let (user, password) = match (&opts.user, &opts.password) {
        (Some(u), Some(p)) => (Some(u.clone()), Some(p.clone())),
        _ => url_credentials(&opts.url).unzip(),
    };
    if let (Some(u), Some(p)) = (&user, &password) {
        // Each user reads replies on its own prefix only (see `permissions::inbox_prefix`).
        o = o
            .user_and_password(u.clone(), p.clone())
            .custom_inbox_prefix(permissions::inbox_prefix(u));
    }
    // `nats://a:4222,nats://b:4222`: every node of a cluster, tried in turn and on reconnect.
    // Without `user:password@`: async-nats logs each server it tries at debug level, password
    // included.
    let servers: Vec<String> = redact_url(&opts.url)
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    let connected = async {
        let client = o.connect(servers).await?;
        while client.connection_state() != async_nats::connection::State::Connected {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok::<_, async_nats::ConnectError>(client)
    };
    match tokio::time::timeout(opts.connect_timeout, connected).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(BusError::Connect {
            url: redact_url(&opts.url),
            source: Box::new(e),
        }),
        Err(_) => Err(BusError::ConnectTimeout {
            url: redact_url(&opts.url),
            after: opts.connect_timeout,
            last_error: last_error
                .lock()
                .expect("last error lock")
                .clone()
                .unwrap_or_else(|| "no answer".into()),
        }),
    }
}

/// The oldest nats-server the ledger works on: compare-and-set on a wildcard subject (2.11)
/// and atomic batches with message ids (2.12.1).
pub const MIN_SERVER_VERSION: (u32, u32, u32) = (2, 12, 1);

/// Refuses a server older than [`MIN_SERVER_VERSION`], naming both versions.
fn check_server_version(client: &async_nats::Client) -> Result<(), BusError> {
    let found = client.server_info().version;
    let parsed: Vec<u32> = found
        .split(['.', '-'])
        .take(3)
        .filter_map(|p| p.parse().ok())
        .collect();
    let (a, b, c) = MIN_SERVER_VERSION;
    match parsed.as_slice() {
        [x, y, z] if (*x, *y, *z) < (a, b, c) => Err(BusError::Incompatible(format!(
            "nats-server {found} is too old: taskfleet needs {a}.{b}.{c} or newer \
             (scripts/ensure-nats.sh installs 2.15.1)"
        ))),
        _ => Ok(()),
    }
}

/// The first `user:password@` of a (comma separated) server URL, percent-decoded.
fn url_credentials(url: &str) -> Option<(String, String)> {
    url.split(',').find_map(|u| {
        let u = u.trim();
        let u = if u.contains("://") {
            u.to_string()
        } else {
            format!("nats://{u}")
        };
        let parsed = url::Url::parse(&u).ok()?;
        let password = parsed.password()?;
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .ok()
                .map(|v| v.into_owned())
        };
        Some((decode(parsed.username())?, decode(password)?))
    })
}

/// A URL with any `user:password@` part removed, for messages and logs.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(s), Some(at)) if at > s => format!("{}{}", &u[..s + 3], &u[at + 1..]),
            (None, Some(at)) => u[at + 1..].to_string(),
            _ => u.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_never_reach_messages() {
        assert_eq!(
            super::redact_url("nats://anna:s3cret@127.0.0.1:4222,nats://b:4223"),
            "nats://127.0.0.1:4222,nats://b:4223"
        );
        assert_eq!(super::redact_url("u:p@host:1"), "host:1");
    }

    #[test]
    fn a_urls_credentials_are_used_when_no_user_is_configured() {
        assert_eq!(
            super::url_credentials("nats://a:4222,nats://anna:s%40cret@b:4222"),
            Some(("anna".into(), "s@cret".into()))
        );
        assert_eq!(
            super::url_credentials("anna:pw@host:1"),
            Some(("anna".into(), "pw".into()))
        );
        assert_eq!(super::url_credentials("nats://host:4222"), None);
    }
}
