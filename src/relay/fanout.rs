//! Fan-out: every task event, read once through the relay's durable consumer, becomes one
//! delivery job per destination (the task's `notify` plus matching routes). Heartbeats, progress
//! and output are throttled per (task, destination), keeping the latest; transitions always go
//! through. The same loop watches running tasks for stalls.

use super::config::RouteConfig;
use super::deliver::Delivery;
use super::job::{DeliveryJob, EventJson, Parcel, TaskJson};
use super::lane::Lane;
use super::store::Queued;
use crate::bus::append::refused_for_good;
use crate::bus::{subjects, BusError, NatsResultExt};
use crate::domain::{EventKind, StallRule, Task, TaskEvent, TaskId, TaskStatus};
use crate::outbound::destination::{named_key, parse_notify, Destination, NotifyEntry};
use crate::tasks::ledger::shown_events;
use crate::tasks::{ListFilter, TaskService};
use crate::text::message::Templates;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::AckKind;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// How many events the fan-out takes at once (their jobs are queued together).
const WINDOW_EVENTS: usize = 64;

/// How many jobs are sent before their answers are awaited (async-nats lets a connection wait
/// on at most 5,000 answers at once, and an atomic batch holds at most 1,000; a window for 100
/// destinations holds 6,400 jobs).
const JOBS_AT_ONCE: usize = 500;

/// How the fan-out decides.
#[derive(Debug)]
pub(super) struct FanOut {
    pub(super) tasks: TaskService,
    pub(super) delivery: Arc<Delivery>,
    pub(super) named: BTreeMap<String, Destination>,
    pub(super) routes: Vec<RouteConfig>,
    pub(super) templates: Templates,
    pub(super) throttle: Duration,
    pub(super) stall_after: Duration,
    /// Throttled jobs waiting for their window, by (task, destination key), with the trace
    /// their event belongs to.
    held: HashMap<(TaskId, String), (DeliveryJob, Instant, opentelemetry::Context)>,
    /// When a throttled kind last went out, by (task, destination key).
    last_sent: HashMap<(TaskId, String), Instant>,
    /// The destination of `{"session_id": …}` notify entries (`relay.push_destination`).
    pub(super) push_destination: Option<String>,
    /// Running tasks: when their last event came, and whether a stall was reported.
    running: HashMap<TaskId, Quiet>,
}

/// One destination an event goes to.
#[derive(Debug, Clone)]
struct Target {
    /// Queue key (one ordered queue per key).
    key: String,
    /// The configured name, for named destinations.
    name: Option<String>,
    /// The chat session to deliver to instead of the destination's own.
    session_id: Option<String>,
    dest: Destination,
}

/// A destination a task's `notify` names that the relay does not have.
#[derive(Debug, Clone)]
struct Unknown {
    /// The name.
    name: String,
    /// The chat session named with it, if any.
    session_id: Option<String>,
}

/// What the stall check knows of a running task.
#[derive(Debug, Clone)]
struct Quiet {
    /// When its last event came.
    since: Instant,
    /// Whether this silence was reported.
    reported: bool,
}

fn throttled(kind: EventKind) -> bool {
    matches!(
        kind,
        EventKind::Heartbeat | EventKind::Progress | EventKind::Output
    )
}

impl FanOut {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        tasks: TaskService,
        delivery: Arc<Delivery>,
        named: BTreeMap<String, Destination>,
        routes: Vec<RouteConfig>,
        templates: Templates,
        throttle: Duration,
        stall_after: Duration,
    ) -> Self {
        Self {
            tasks,
            delivery,
            named,
            routes,
            templates,
            throttle,
            stall_after,
            held: HashMap::new(),
            last_sent: HashMap::new(),
            running: HashMap::new(),
            push_destination: None,
        }
    }

    /// Reads events until `shutdown`.
    pub(super) async fn run(&mut self, shutdown: CancellationToken) -> Result<(), BusError> {
        // Opening waits on JetStream, which may be unreachable: shutdown must not wait for it.
        let (mut lane, mut resets) = tokio::select! {
            m = self.open_events() => m?,
            _ = shutdown.cancelled() => return Ok(()),
        };
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let ended = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                _ = tick.tick() => {
                    self.flush_due().await;
                    self.check_stalls().await;
                }
                _ = resets.changed() => self.reader_lost(lane.received().get()).await,
                next = lane.next(&shutdown) => match next {
                    Ok(Some(first)) => self.take_window(&mut lane, first, &shutdown).await,
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                },
            }
        };
        // Hand the cursor to whoever pulls next (another replica, this relay after a restart).
        let events = &self.tasks.bus().topology.events;
        let unpin = events.unpin_consumer(subjects::RELAY_EVENTS_CONSUMER, subjects::RELAY_GROUP);
        let _ = tokio::time::timeout(Duration::from_secs(1), unpin).await;
        ended
    }

    /// Fans out `first` and the events that are here behind it, in order: their jobs are
    /// grouped by destination into bundles ([`Parcel::bundles`]) and queued together (see
    /// [`queue_jobs`]), then every one of the events is acknowledged. A failure is retried here
    /// (not with a nak, which would let later events overtake). A window holding an event handed
    /// out before (the relay stopped between queueing its jobs and the ack) queues bundles that
    /// check each job's record first: the window, and with it each bundle's id, may differ
    /// from the first time, so de-duplication on the id cannot tell.
    async fn take_window(
        &mut self,
        lane: &mut Lane,
        first: async_nats::jetstream::Message,
        shutdown: &CancellationToken,
    ) {
        let mut window = vec![first];
        while window.len() < WINDOW_EVENTS {
            match lane.ready() {
                Some(m) => window.push(m),
                None => break,
            }
        }
        let mut jobs = Vec::new();
        for msg in &window {
            self.take(msg, &mut jobs, shutdown).await;
        }
        let again = window
            .iter()
            .any(|m| m.info().is_ok_and(|i| i.delivered > 1));
        let parcels = Parcel::bundles(jobs, again, crate::telemetry::trace_context);
        while let Err(e) = queue_jobs(&self.delivery, &parcels).await {
            tracing::warn!(error.message = %e, "could not queue deliveries; retrying in 1 s");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                // Unacknowledged: whoever reads the events next fans them out again.
                _ = shutdown.cancelled() => return,
            }
        }
        for msg in window {
            let _ = msg.ack().await;
        }
    }

    /// Fans out one ledger message into `jobs`, in a span that continues the trace its headers
    /// carry (the deliveries' jobs carry it on). A message that cannot be read is ended at once
    /// (it stays in the ledger); a task that cannot be read is tried again until it can.
    async fn take(
        &mut self,
        msg: &async_nats::jetstream::Message,
        jobs: &mut Vec<(DeliveryJob, tracing::Span)>,
        shutdown: &CancellationToken,
    ) {
        let span = tracing::info_span!(target: "taskfleet::trace", "relay.fanout",
            subject = %msg.subject);
        crate::telemetry::continue_trace(&span, msg.headers.as_ref());
        let events = match shown_events(&msg.payload) {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(error.message = %e, "undecodable event; skipping");
                let _ = msg.ack_with(AckKind::Term).await;
                return;
            }
        };
        let mut mine = Vec::new();
        while let Err(e) = self
            .handle_all(&events, &mut mine)
            .instrument(span.clone())
            .await
        {
            mine.clear();
            tracing::warn!(error.message = %e, "fan-out failed; retrying the event in 1 s");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.cancelled() => return,
            }
        }
        // Each job carries on the trace of its event.
        jobs.extend(mine.into_iter().map(|job| (job, span.clone())));
    }

    /// The relay's cursor on the ledger, read over the bus's reader connection (a message
    /// async-nats cannot parse drops that connection, see [`Bus::reader`](crate::bus::Bus::reader)),
    /// taken over from whoever held it, and what wakes when the connection drops.
    async fn open_events(&mut self) -> Result<(Lane, tokio::sync::watch::Receiver<u64>), BusError> {
        self.seed_running().await;
        let reader = self.tasks.bus().reader().await?;
        let mut resets = reader.resets();
        resets.borrow_and_update();
        let consumer: PullConsumer = reader
            .jetstream()
            .get_consumer_from_stream(subjects::RELAY_EVENTS_CONSUMER, subjects::EVENTS_STREAM)
            .await
            .map_err(|source| BusError::Op {
                op: "open relay consumer",
                source: Box::new(source),
            })?;
        let window = consumer.cached_info().config.max_ack_pending.max(1) as usize;
        let ack_wait = consumer.cached_info().config.ack_wait;
        let events = &self.tasks.bus().topology.events;
        events
            .unpin_consumer(subjects::RELAY_EVENTS_CONSUMER, subjects::RELAY_GROUP)
            .await
            .op("take the relay consumer over")?;
        Ok((
            Lane::open(consumer, (events, resets.clone()), ack_wait, window).await?,
            resets,
        ))
    }

    /// After the reader connection dropped: an event whose headers no client can parse (a
    /// fleet user wrote to the ledger around taskfleet) is among the ones delivered and not
    /// acknowledged. Its delivery is ended with the reason, so the relay goes on with the next
    /// event; it stays in the ledger, logged here with its sequence. The events lost with the
    /// connection (past `received`, the last one the lane got) are handed out again at once.
    async fn reader_lost(&self, received: Option<u64>) {
        let (stream, consumer) = (subjects::EVENTS_STREAM, subjects::RELAY_EVENTS_CONSUMER);
        let ended = async {
            let bus = self.tasks.bus();
            let clients = (&bus.reader().await?.client, &bus.client);
            let filter = subjects::ALL_EVENTS;
            let ended =
                crate::bus::raw::term_unreadable(clients, (stream, consumer), filter, received);
            ended.await
        };
        match ended.await {
            Ok(ended) => {
                if !ended.is_empty() && received.is_none() {
                    // Its pin may have come only in the unreadable message's headers (see
                    // `Delivery::reader_lost`): the relay takes the cursor anew.
                    let events = &self.tasks.bus().topology.events;
                    let _ = events.unpin_consumer(consumer, subjects::RELAY_GROUP).await;
                }
                for (m, problem) in ended {
                    tracing::warn!(seq = m.seq, problem, "skipping an event no client can read");
                }
            }
            Err(e) => tracing::warn!(error.message = %e,
                "event reader connection lost; cannot check the delivered event"),
        }
    }

    /// Running tasks at start-up count as just heard from (the relay cannot know better).
    async fn seed_running(&mut self) {
        let filter = ListFilter {
            status: Some(TaskStatus::Running),
            limit: 100_000,
            ..Default::default()
        };
        if let Ok(tasks) = self.tasks.list(&filter).await {
            for t in tasks {
                self.running.insert(
                    t.id,
                    Quiet {
                        since: Instant::now(),
                        reported: false,
                    },
                );
            }
        }
    }

    /// Fans out what one ledger message shows, in order, into `jobs`. Migration records (a state
    /// carried over by `taskfleet migrate`) go to nobody.
    async fn handle_all(
        &mut self,
        events: &[(TaskEvent, Option<Task>)],
        jobs: &mut Vec<DeliveryJob>,
    ) -> Result<(), BusError> {
        for (event, task) in events {
            if !crate::tasks::is_migration(event) {
                self.handle(event, task.as_ref(), jobs).await?;
            }
        }
        Ok(())
    }

    /// Adds the event's jobs to `jobs`, one per destination (a throttled one is held instead).
    /// `task` is the state the event recorded (read now for an event that carries none, written
    /// before task storage v2).
    async fn handle(
        &mut self,
        event: &TaskEvent,
        task: Option<&Task>,
        jobs: &mut Vec<DeliveryJob>,
    ) -> Result<(), BusError> {
        self.track(event);
        let task = match task {
            Some(t) => std::borrow::Cow::Borrowed(t),
            None => match self.tasks.get(&event.task_id).await {
                Ok(t) => std::borrow::Cow::Owned(t),
                Err(crate::tasks::TaskError::NotFound(_)) => return Ok(()),
                Err(crate::tasks::TaskError::Bus(e)) => return Err(e),
                Err(e) => {
                    tracing::warn!(error.message = %e, "cannot read the task; skipping its event");
                    return Ok(());
                }
            },
        };
        let (targets, unknown) = self.targets(&task, event);
        // Heartbeats, progress and output of a task notifying a name the relay lacks leave no
        // dead record each: its transitions show it.
        let unknown = if throttled(event.kind) {
            Vec::new()
        } else {
            unknown
        };
        if !targets.is_empty() || !unknown.is_empty() {
            // The same message, task snapshot and event JSON for every destination, made once.
            let text = self.templates.render(&task, event).unwrap_or_default();
            let shared = (
                text,
                TaskJson::of(&public_view(&task)),
                EventJson::of(event),
            );
            for target in targets {
                if let Some(job) = self.job(&task, event, &shared, target) {
                    jobs.push(job);
                }
            }
            for u in unknown {
                self.bury_unknown(event, &shared, u).await;
            }
        }
        if event.kind.is_transition() && event.new_status.is_some_and(TaskStatus::is_terminal) {
            self.last_sent.retain(|(t, _), _| *t != event.task_id);
        }
        Ok(())
    }

    /// The job of `event` for `target`, with the event's message and task snapshot (`shared`),
    /// unless the destination does not want it, it has no text for it, or it is throttled (then
    /// it is held, keeping the latest).
    fn job(
        &mut self,
        task: &Task,
        event: &TaskEvent,
        shared: &(String, TaskJson, EventJson),
        target: Target,
    ) -> Option<DeliveryJob> {
        let text = &shared.0;
        let Target {
            key,
            name,
            session_id,
            dest,
        } = target;
        if !dest.wants(event.kind) {
            return None;
        }
        if text.is_empty() && !matches!(dest, Destination::Webhook { .. }) {
            return None;
        }
        let destination = if name.is_some() { None } else { Some(dest) };
        let job = job_of(event, shared, (key.clone(), name, session_id), destination);
        let slot = (task.id.clone(), key);
        if throttled(event.kind) {
            let now = Instant::now();
            match self.last_sent.get(&slot) {
                Some(&last) if now.duration_since(last) < self.throttle => {
                    let trace = tracing::Span::current().context();
                    self.held.insert(slot, (job, last + self.throttle, trace));
                    return None;
                }
                _ => {
                    self.last_sent.insert(slot, now);
                }
            }
        } else {
            // A transition supersedes a held heartbeat of the same task.
            self.held.remove(&slot);
        }
        Some(job)
    }

    /// Records the delivery of `event` to `unknown`, a name the task's `notify` gives that the
    /// relay has no destination for, as dead with the reason (nothing is queued for it), so the
    /// deliveries list and the dashboard show where its events did not go.
    async fn bury_unknown(
        &self,
        event: &TaskEvent,
        shared: &(String, TaskJson, EventJson),
        unknown: Unknown,
    ) {
        let Unknown { name, session_id } = unknown;
        let key = named_key(&name, session_id.as_deref());
        let job = job_of(event, shared, (key, Some(name.clone()), session_id), None);
        self.delivery.store.dead_unknown(&job, &name).await;
    }

    /// The task's `notify` destinations plus every route that matches, each once, and the names
    /// its `notify` gives that the relay has no destination for. A named destination aimed at a
    /// session is a target of its own (one queue per session).
    fn targets(&self, task: &Task, event: &TaskEvent) -> (Vec<Target>, Vec<Unknown>) {
        let mut out: Vec<Target> = Vec::new();
        let mut missing: Vec<Unknown> = Vec::new();
        let mut add = |name: Option<&str>, session_id: Option<&str>, dest: Destination| {
            let key = match name {
                Some(n) => named_key(n, session_id),
                None => dest.key(None),
            };
            if !out.iter().any(|t| t.key == key) {
                out.push(Target {
                    key,
                    name: name.map(str::to_string),
                    session_id: session_id.map(str::to_string),
                    dest,
                });
            }
        };
        let mut unknown = |n: &str, session_id: Option<&str>| {
            tracing::warn!(task_id = %task.id, destination = n, "unknown destination in notify");
            missing.push(Unknown {
                name: n.to_string(),
                session_id: session_id.map(str::to_string),
            });
        };
        for entry in &task.notify {
            match parse_notify(entry) {
                Ok(NotifyEntry::Inline(d)) => add(None, None, d),
                Ok(NotifyEntry::Named(n)) => match self.named.get(&n) {
                    Some(d) => add(Some(&n), None, d.clone()),
                    None => unknown(&n, None),
                },
                Ok(NotifyEntry::Session { name, session_id }) => {
                    let Some(name) = name.or_else(|| self.push_destination.clone()) else {
                        tracing::warn!(task_id = %task.id, "notify names a session but no relay.push_destination is set");
                        continue;
                    };
                    match self.named.get(&name) {
                        Some(d) => add(Some(&name), Some(&session_id), d.clone()),
                        None => unknown(&name, Some(&session_id)),
                    }
                }
                Err(e) => {
                    tracing::warn!(task_id = %task.id, error.message = %e, "bad notify entry")
                }
            }
        }
        for r in &self.routes {
            let matches = (r.assignees.is_empty() || r.assignees.contains(&task.assigned_to))
                && (r.priorities.is_empty() || r.priorities.contains(&task.priority))
                && (r.events.is_empty() || r.events.contains(&event.kind));
            if matches {
                for n in &r.destinations {
                    if let Some(d) = self.named.get(n) {
                        add(Some(n), None, d.clone());
                    }
                }
            }
        }
        (out, missing)
    }

    fn track(&mut self, event: &TaskEvent) {
        match event.kind {
            EventKind::Completed | EventKind::Failed | EventKind::Cancelled => {
                self.running.remove(&event.task_id);
            }
            EventKind::Scheduled | EventKind::Created | EventKind::Stalled => {}
            _ => {
                self.running.insert(
                    event.task_id.clone(),
                    Quiet {
                        since: Instant::now(),
                        reported: false,
                    },
                );
            }
        }
    }

    async fn flush_due(&mut self) {
        let now = Instant::now();
        let due: Vec<_> = self
            .held
            .iter()
            .filter(|(_, (_, at, _))| *at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for slot in due {
            if let Some((job, _, trace)) = self.held.remove(&slot) {
                self.last_sent.insert(slot, now);
                let span = tracing::info_span!(target: "taskfleet::trace", "relay.fanout",
                    held = true);
                let _ = span.set_parent(trace);
                let queued = publish(&self.delivery, Parcel::One(Box::new(job))).instrument(span);
                if let Err(e) = queued.await {
                    tracing::warn!(error.message = %e, "could not queue a throttled delivery");
                }
            }
        }
    }

    /// Reports each running task that went quiet for `stall_after`, once until its next event.
    async fn check_stalls(&mut self) {
        let now = Instant::now();
        let rule = StallRule::new(self.stall_after);
        let quiet: Vec<TaskId> = self
            .running
            .iter()
            .filter(|(_, q)| !q.reported && rule.is_quiet_too_long(now.duration_since(q.since)))
            .map(|(id, _)| id.clone())
            .collect();
        for id in quiet {
            let Some(entry) = self.running.get_mut(&id) else {
                continue;
            };
            entry.reported = true;
            let since = entry.since;
            let Ok(task) = self.tasks.get(&id).await else {
                continue;
            };
            if task.status != TaskStatus::Running {
                self.running.remove(&id);
                continue;
            }
            let minutes = (now.duration_since(since).as_secs() / 60).max(1);
            let mut e = TaskEvent::new(&task.id, &task.assigned_to, EventKind::Stalled, "relay");
            // Replicas reporting the same silence: the first append wins, the others find the
            // task changed (see `record_stalled`).
            e.attempt = task.attempt;
            e.message = Some(format!("no update for {minutes} min"));
            e.data = serde_json::json!({ "minutes": minutes });
            self.tasks.record_stalled(&task, e).await;
        }
    }
}

/// The job of `event` for the destination queued under `key` (configured as `name`, aimed at
/// `session_id`; `destination` itself for a per-task one), with the event's message, task
/// snapshot and JSON (`shared`).
fn job_of(
    event: &TaskEvent,
    (text, snapshot, event_json): &(String, TaskJson, EventJson),
    (key, name, session_id): (String, Option<String>, Option<String>),
    destination: Option<Destination>,
) -> DeliveryJob {
    DeliveryJob {
        id: format!("{}.{key}", event.id),
        key,
        name,
        destination,
        event: Some(event_json.clone()),
        task: Some(snapshot.clone()),
        text: text.clone(),
        session_id,
        created_time: crate::domain::now(),
    }
}

/// The task as deliveries show it: without `notify` (it may hold other destinations' secrets)
/// and without the lease token.
fn public_view(task: &Task) -> Task {
    let mut t = task.clone();
    t.notify = Vec::new();
    t.lease = None;
    t
}

/// Queues `parcel` on its destination's subject (de-duplicated on its id) and waits until it
/// is stored. A bundle the stream refuses for good (too large) is queued again one job at a
/// time, and a job it refuses becomes a dead delivery.
pub(super) async fn publish(delivery: &Arc<Delivery>, parcel: Parcel) -> Result<(), BusError> {
    let queued = delivery.store.send(&parcel).await?;
    let Some(why) = stored(delivery, &parcel, queued).await? else {
        return Ok(());
    };
    if matches!(&parcel, Parcel::Bundle(b) if b.jobs.len() > 1) {
        tracing::info!(
            destination = parcel.key(),
            reason = why,
            "a bundle the delivery queue refused; queueing its jobs one at a time"
        );
        for part in parcel.apart() {
            let queued = delivery.store.send(&part).await?;
            if let Some(why) = stored(delivery, &part, queued).await? {
                bury(delivery, part, &why).await;
            }
        }
    } else {
        bury(delivery, parcel, &why).await;
    }
    Ok(())
}

/// Records the jobs of `parcel`, which the queue refused for good (`why`), as dead deliveries.
async fn bury(delivery: &Arc<Delivery>, parcel: Parcel, why: &str) {
    for job in parcel.into_bundle().jobs {
        delivery.store.dead_letter(&job, why).await;
    }
}

/// Queues `jobs` in order and starts their destinations' loops: together, up to
/// [`JOBS_AT_ONCE`] at once (a chain where each job is stored only after the one before it, or
/// an atomic batch on a replicated stream, see
/// [`DeliveryStore::queue_together`](super::store::DeliveryStore::queue_together)), and one at
/// a time (each stored before the next is sent) where that failed, so a job is never stored
/// after a later one. A job the stream refuses for good becomes a dead delivery (a bundle is
/// queued apart first); any other failure is returned (queueing them again is safe: jobs are
/// de-duplicated on their ids).
async fn queue_jobs(
    delivery: &Arc<Delivery>,
    jobs: &[(Parcel, tracing::Span)],
) -> Result<(), BusError> {
    for chunk in jobs.chunks(JOBS_AT_ONCE) {
        let together = match chunk {
            [] => continue,
            [_] => false,
            _ => match delivery.store.queue_together(chunk).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::debug!(error.message = %e, "queueing the jobs one at a time");
                    false
                }
            },
        };
        for (parcel, span) in chunk {
            if together {
                delivery.ensure(parcel.key());
            } else {
                publish(delivery, parcel.clone())
                    .instrument(span.clone())
                    .await?;
            }
        }
    }
    Ok(())
}

/// Waits until `parcel`, sent, is stored, and starts its destination's loop; why the stream
/// refused it for good, if it did. Any other failure is returned (the event is retried, and
/// the parcels stored already are dropped as duplicates).
async fn stored(
    delivery: &Arc<Delivery>,
    parcel: &Parcel,
    queued: Queued,
) -> Result<Option<String>, BusError> {
    match queued {
        Queued::Sent(ack) => match ack.await {
            Ok(_) => {
                delivery.ensure(parcel.key());
                Ok(None)
            }
            Err(e) if refused_for_good(&e) => Ok(Some(e.to_string())),
            Err(e) => Err(e).op("queue delivery ack"),
        },
        Queued::Refused(why) => Ok(Some(why)),
    }
}
