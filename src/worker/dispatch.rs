//! Pulling in strict priority order without prefetching.
//!
//! Each free slot asks the P0 consumer for one message (no wait), then P1, then P2, so the oldest
//! P0 always goes first and nothing is pulled ahead of a free slot. When every priority is empty
//! the worker sleeps on a doorbell: a core-NATS subscription to the assignee's queue subjects (any
//! publish rings it) plus `wake.<assignee>` (hand-backs), with `idle_poll` as a fallback for
//! redeliveries. An idle worker with a free slot per priority also leaves a one-message request
//! waiting at each priority's consumer, so the server pushes the next task to it directly.
//!
//! Within a priority, tenants take turns (see `turns.rs`): each fair-share turn has its own
//! consumer, opened when a doorbell ring names it or a look at the stream's subjects (every
//! [`SWEEP`]) finds tasks queued on it, and a pull takes the turns with work round robin.

use super::pull::Puller;
use super::turns::{slot, Turns};
use super::WorkerError;
use crate::bus::{subjects, NatsResultExt};
use crate::domain::{Assignee, Priority, Share};
use crate::tasks::TaskService;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::Message;
use futures::{FutureExt, StreamExt, TryStreamExt};
use std::time::Duration;

/// The three durable consumers of one assignee and the doorbell.
pub(super) struct Queue {
    /// Checks the delivered messages when the reader connection drops.
    tasks: TaskService,
    assignee: Assignee,
    ack_wait: Duration,
    /// The consumers of each priority (P0 first) and their fair-share turns.
    turns: [Turns; 3],
    /// Fair-share turns a doorbell ring named before their consumer was opened.
    to_open: Vec<(usize, Share)>,
    /// When the stream's subjects were last looked at for turns with work.
    swept: tokio::time::Instant,
    puller: Puller,
    doorbell: futures::stream::SelectAll<async_nats::Subscriber>,
    idle_poll: Duration,
    weights: Option<[u32; 3]>,
    served: [u64; 3],
    /// Priorities that may have work: cleared by an empty pull, set again by a doorbell ring
    /// for that priority, a wake-up, an idle wait running out, or [`RECHECK_ALL`] after the
    /// last full check (redeliveries ring no bell). Saves pulling from priorities known empty.
    maybe: [bool; 3],
    all_checked: tokio::time::Instant,
    /// The doorbell rang since the last pull pass, and for which turn of which priorities.
    rang: bool,
    rang_for: [Option<usize>; 3],
    /// The last pass found nothing and the worker waited.
    idle: bool,
}

impl Queue {
    /// Creates (or joins) the assignee's consumers; every replica shares them.
    pub(super) async fn open(
        tasks: &TaskService,
        assignee: &Assignee,
        ack_wait: Duration,
        idle_poll: Duration,
        weights: Option<[u32; 3]>,
    ) -> Result<Self, WorkerError> {
        let bus = tasks.bus();
        let mut turns = Vec::new();
        for priority in Priority::ALL {
            turns.push(Turns::new(
                open_consumer(tasks, assignee, priority, None, ack_wait).await?,
            ));
        }
        let turns: [Turns; 3] = turns.try_into().ok().expect("one per priority");
        let puller = Puller::open(bus, subjects::TASKS_STREAM).await?;
        let mut doorbell = futures::stream::SelectAll::new();
        doorbell.push(
            bus.client
                .subscribe(subjects::assignee_tasks(assignee))
                .await
                .op("subscribe doorbell")?,
        );
        doorbell.push(
            bus.client
                .subscribe(subjects::wake(assignee))
                .await
                .op("subscribe wake")?,
        );
        let mut queue = Self {
            tasks: tasks.clone(),
            assignee: assignee.clone(),
            ack_wait,
            turns,
            to_open: Vec::new(),
            swept: tokio::time::Instant::now(),
            puller,
            doorbell,
            idle_poll,
            weights,
            served: [0; 3],
            maybe: [true; 3],
            all_checked: tokio::time::Instant::now(),
            rang: false,
            rang_for: [None; 3],
            idle: false,
        };
        queue.sweep().await?;
        Ok(queue)
    }

    /// Every priority, and every open turn of it, may have work.
    fn mark_all(&mut self) {
        self.maybe = [true; 3];
        for turns in &mut self.turns {
            turns.mark_all();
        }
    }

    /// Opens the consumer of `share` at priority `i` unless it is open; it may have work.
    async fn open_turn(&mut self, i: usize, share: Share) -> Result<(), WorkerError> {
        let at = slot(Some(share));
        if self.turns[i].name(at).is_none() {
            let priority = Priority::ALL[i];
            let name = open_consumer(
                &self.tasks,
                &self.assignee,
                priority,
                Some(share),
                self.ack_wait,
            )
            .await?;
            self.turns[i].open(at, name);
        }
        self.turns[i].mark(at);
        self.maybe[i] = true;
        Ok(())
    }

    /// Looks at the stream's subjects for fair-share turns with tasks queued (one request:
    /// subject counts) and opens their consumers: turns whose tasks rang no bell, say ones
    /// queued before this worker started or handed back.
    async fn sweep(&mut self) -> Result<(), WorkerError> {
        self.swept = tokio::time::Instant::now();
        let listed = tokio::time::timeout(SWEEP_ANSWER, self.queued_turns()).await;
        let found = listed.unwrap_or_else(|_| {
            Err(WorkerError::Bus(crate::bus::BusError::Op {
                op: "list queue subjects",
                source: format!("no answer within {SWEEP_ANSWER:?}").into(),
            }))
        })?;
        for (i, share) in found {
            self.open_turn(i, share).await?;
        }
        Ok(())
    }

    /// The fair-share turns with tasks queued, from the stream's subject counts.
    async fn queued_turns(&self) -> Result<Vec<(usize, Share)>, WorkerError> {
        let filter = subjects::shared_tasks(&self.assignee);
        let stream = &self.tasks.bus().topology.tasks;
        let mut subjects = (stream.info_with_subjects(filter).await).op("list queue subjects")?;
        let mut found = Vec::new();
        while let Some((subject, count)) = subjects.try_next().await.op("list queue subjects")? {
            if let Some(turn) = (count > 0).then(|| turn_of(&subject)).flatten() {
                found.push(turn);
            }
        }
        Ok(found)
    }

    /// Opens the turns doorbell rings named.
    async fn open_rung(&mut self) -> Result<(), WorkerError> {
        for (i, share) in std::mem::take(&mut self.to_open) {
            self.open_turn(i, share).await?;
            self.rang = true;
            self.rang_for[i] = Some(slot(Some(share)));
        }
        Ok(())
    }

    /// Up to `free` messages (one per free slot), highest priority first, waiting (without
    /// pulling ahead) while every priority is empty. A lower priority is only pulled from
    /// once every higher one gave fewer messages than asked (it is empty). Slots are kept free
    /// for the requests an idle worker left waiting at the server (see [`arm`](Self::arm)).
    pub(super) async fn next(&mut self, free: usize) -> Result<Vec<Message>, WorkerError> {
        loop {
            match self.next_or_lost(free).await {
                Err(WorkerError::ReaderLost) => self.reader_lost().await,
                other => return other,
            }
        }
    }

    /// After the reader connection dropped: the message that broke it (one async-nats cannot
    /// parse) is among those delivered and not acknowledged; it is moved to the dead letters so
    /// it never comes back, and every priority is looked at again. A worker's NATS user under
    /// `--secure` may not read the queue as JSON (that read takes any subject): it asks the API.
    /// With no API up, the message comes back after `ack_wait` and breaks only the reader
    /// connection again, until an API process moves it aside.
    async fn reader_lost(&mut self) {
        self.mark_all();
        match self.tasks.check_delivered_anywhere(&self.assignee).await {
            Ok(0) => tracing::info!("queue-reading connection lost; no unreadable message found"),
            Ok(moved) => {
                tracing::warn!(moved, "moved unreadable queue messages to the dead letters")
            }
            Err(e) => tracing::warn!(error.message = %e,
                "queue-reading connection lost; cannot check the delivered messages"),
        }
    }

    /// [`next`](Self::next), ending with [`WorkerError::ReaderLost`] when the reader connection
    /// drops.
    async fn next_or_lost(&mut self, free: usize) -> Result<Vec<Message>, WorkerError> {
        let mut retry = Duration::ZERO;
        loop {
            let stashed = self.take_stashed(free);
            if !stashed.is_empty() {
                self.idle = false;
                return Ok(stashed);
            }
            let usable = free.saturating_sub(self.puller.armed());
            if usable == 0 {
                self.puller.wait_stashed().await?;
                self.mark_all();
                continue;
            }
            // Rings from before this check are covered by the check itself.
            while let Some(Some(ring)) = self.doorbell.next().now_or_never() {
                self.rung(&ring.subject);
            }
            self.open_rung().await?;
            if self.swept.elapsed() >= SWEEP {
                // Pulling goes on without it: the next sweep is due in SWEEP.
                if let Err(e) = self.sweep().await {
                    tracing::info!(error.message = %e, "cannot look at the queue's subjects");
                }
            }
            if self.all_checked.elapsed() >= RECHECK_ALL {
                self.mark_all();
            }
            if self.maybe == [true; 3] {
                self.all_checked = tokio::time::Instant::now();
            }
            let rang = std::mem::take(&mut self.rang);
            let rang_for = std::mem::take(&mut self.rang_for);
            if let Some(got) = self.after_idle_ring(rang_for).await? {
                return Ok(got);
            }
            let (got, empty) = self.pass(usable).await?;
            if !got.is_empty() {
                self.idle = false;
                return Ok(got);
            }
            if let Some(got) = self.after_empty_ring(rang_for, empty).await? {
                return Ok(got);
            }
            retry = match (rang, retry.is_zero()) {
                (true, _) => Duration::from_millis(1),
                (false, true) => Duration::ZERO,
                (false, false) => retry * 2,
            };
            self.idle = true;
            let wait = if !retry.is_zero() && retry <= RING_RETRY_MAX {
                for i in (0..3).filter(|&i| empty[i]) {
                    self.maybe[i] = true;
                    self.turns[i].mark_all();
                }
                retry
            } else {
                retry = Duration::ZERO;
                self.arm(usable).await?;
                // Wakes for the next sweep: a delayed task fires into its turn with no ring.
                self.idle_poll.min(SWEEP)
            };
            let poll = retry.is_zero() && wait >= self.idle_poll;
            self.idle_wait(wait, poll).await?;
        }
    }

    /// One pass over the priorities not armed and not known empty: up to `wanted` messages
    /// (one with weights, so each pull follows the shares), and which priorities came back
    /// empty-handed.
    async fn pass(&mut self, wanted: usize) -> Result<(Vec<Message>, [bool; 3]), WorkerError> {
        let wanted = if self.weights.is_some() { 1 } else { wanted };
        let mut empty = [false; 3];
        let mut got = Vec::new();
        for i in pull_order(self.weights, self.served) {
            if !self.maybe[i] {
                continue;
            }
            let asked = wanted - got.len();
            let (batch, tried) = self.pull_turns(i, asked).await?;
            if !tried {
                // Every turn with work has a request waiting at the server.
                self.maybe[i] = self.turns[i].any();
                continue;
            }
            self.served[i] += batch.len() as u64;
            let short = batch.len() < asked;
            got.extend(batch);
            if short {
                self.maybe[i] = false;
                empty[i] = got.is_empty();
            }
            if got.len() == wanted {
                break;
            }
        }
        Ok((got, empty))
    }

    /// Up to `asked` messages of priority `i`, taken round robin from the turns that may have
    /// work and have no request waiting (an equal part from each, the rest from those that
    /// have more), and whether any turn was asked.
    async fn pull_turns(
        &mut self,
        i: usize,
        asked: usize,
    ) -> Result<(Vec<Message>, bool), WorkerError> {
        let (mut got, mut tried) = (Vec::new(), false);
        loop {
            let round: Vec<(usize, String)> = (self.turns[i].round().into_iter())
                .filter_map(|at| Some((at, self.turns[i].name(at)?.to_string())))
                .filter(|(_, name)| !self.puller.is_armed(name))
                .collect();
            if round.is_empty() || got.len() >= asked {
                return Ok((got, tried));
            }
            let each = (asked - got.len()).div_ceil(round.len());
            for (at, name) in round {
                let want = each.min(asked - got.len());
                if want == 0 {
                    break;
                }
                tried = true;
                let batch = self.puller.pull(&name, want, None).await?;
                if batch.len() < want {
                    self.turns[i].clear(at);
                }
                if !batch.is_empty() {
                    self.turns[i].served(at);
                }
                got.extend(batch);
            }
        }
    }

    /// The doorbell (core NATS) can ring before JetStream has stored the message, so a pull
    /// right after a ring may find nothing. Waits briefly on the highest priority that rang (the
    /// message is normally stored within a millisecond; a ring for a message another replica
    /// took costs [`RING_WAIT`]); the caller then looks again after 1, 2, 4, 8, 16 ms instead
    /// of sleeping until the next poll.
    async fn after_empty_ring(
        &mut self,
        rang_for: [Option<usize>; 3],
        empty: [bool; 3],
    ) -> Result<Option<Vec<Message>>, WorkerError> {
        let announced = pull_order(self.weights, self.served)
            .into_iter()
            .find(|&i| rang_for[i].is_some() && empty[i]);
        let Some(i) = announced else {
            return Ok(None);
        };
        self.wait_for_rung(i, rang_for[i].unwrap_or(0)).await
    }

    /// An idle worker with a free slot for each priority leaves a one-message request waiting
    /// at every priority's consumer for `idle_poll`: a task published meanwhile is pushed to it
    /// straight away, with no doorbell ring and pull round trip in between. Not with weights
    /// (each pull follows the shares) nor with fewer free slots than priorities (a request may
    /// not take a task no slot is free for).
    async fn arm(&mut self, usable: usize) -> Result<(), WorkerError> {
        if self.weights.is_some() {
            return Ok(());
        }
        let unarmed: Vec<String> = (self.turns.iter().map(|t| t.home().to_string()))
            .filter(|c| !self.puller.is_armed(c))
            .collect();
        if unarmed.is_empty() || usable < unarmed.len() {
            return Ok(());
        }
        for consumer in unarmed {
            self.puller.arm(&consumer, self.idle_poll).await?;
        }
        Ok(())
    }

    /// Waits `wait` for a doorbell ring or for an armed request to deliver or end; a full wait
    /// (`poll`) makes every priority worth a look again.
    async fn idle_wait(&mut self, wait: Duration, poll: bool) -> Result<(), WorkerError> {
        tokio::select! {
            ring = self.doorbell.next() => match ring {
                Some(ring) => self.rung(&ring.subject),
                None => {
                    tokio::time::sleep(self.idle_poll).await;
                    self.mark_all();
                }
            },
            // A message, or a request that ended: a task may have come just as it expired
            // (its ring was ignored while armed), so every priority is worth a look.
            answered = self.puller.wait_stashed() => {
                answered?;
                self.mark_all();
            }
            _ = tokio::time::sleep(wait) => {
                if poll {
                    self.mark_all();
                }
            }
        }
        Ok(())
    }

    /// Up to `free` messages armed requests delivered, highest priority first.
    fn take_stashed(&mut self, free: usize) -> Vec<Message> {
        let order: Vec<&str> = self.turns.iter().flat_map(Turns::names).collect();
        self.puller.take(free, &order)
    }

    /// Ends the pulls: requests left waiting at the server are dropped with the inbox, and a
    /// message that came for one but was not taken is handed back at once.
    pub(super) async fn close(self) {
        self.puller.close().await;
    }
}

impl Queue {
    /// The first pull after an idle worker's doorbell rang: one message, waiting a moment at
    /// the server on the highest priority that rang (every higher one is known empty). The ring
    /// comes when the task is published, often before JetStream has stored it; a pull that
    /// waits for it saves the round trip of a no-wait pull that finds nothing yet. `None` when
    /// the worker was not idle or the ring was not for a lone priority, or another replica took
    /// the task.
    async fn after_idle_ring(
        &mut self,
        rang_for: [Option<usize>; 3],
    ) -> Result<Option<Vec<Message>>, WorkerError> {
        let lone = rang_for.iter().flatten().count() == 1;
        if !self.idle || !lone || self.weights.is_some() {
            return Ok(None);
        }
        let first = (0..3).find(|&i| rang_for[i].is_some() || self.maybe[i]);
        let Some((i, at)) = first.and_then(|i| Some((i, rang_for[i]?))) else {
            return Ok(None);
        };
        if (self.turns[i].name(at)).is_none_or(|name| self.puller.is_armed(name)) {
            return Ok(None);
        }
        let got = self.wait_for_rung(i, at).await?;
        if got.is_some() {
            self.idle = false;
        }
        Ok(got)
    }

    /// One message of priority `i`, waiting [`RING_WAIT`] at the server for the one whose ring
    /// came. One only: it waits at the server, where a later message for a request given up on
    /// would go to nobody until its ack wait ran out.
    async fn wait_for_rung(
        &mut self,
        i: usize,
        at: usize,
    ) -> Result<Option<Vec<Message>>, WorkerError> {
        let Some(name) = self.turns[i].name(at).map(str::to_string) else {
            return Ok(None);
        };
        let got = self.puller.pull(&name, 1, Some(RING_WAIT)).await?;
        if got.is_empty() {
            return Ok(None);
        }
        self.served[i] += 1;
        self.maybe[i] = true;
        self.turns[i].mark(at);
        self.turns[i].served(at);
        Ok(Some(got))
    }

    /// A doorbell ring: a task queued at one priority, or a wake-up (hand-back) for any. An
    /// armed priority needs no ring: its waiting request gets the message.
    fn rung(&mut self, subject: &str) {
        let (priority, share) = ring_tokens(subject);
        let rang: Vec<usize> = match priority {
            Some(priority) => vec![priority_index(priority)],
            None => vec![0, 1, 2],
        };
        for i in rang {
            let at = slot(share);
            let Some(name) = self.turns[i].name(at) else {
                self.to_open.extend(share.map(|s| (i, s)));
                continue;
            };
            if !self.puller.is_armed(name) {
                self.rang = true;
                self.maybe[i] = true;
                self.rang_for[i] = Some(at);
                match priority {
                    Some(_) => self.turns[i].mark(at),
                    None => self.turns[i].mark_all(),
                }
            }
        }
    }
}

/// Creates (or joins) the durable consumer of `assignee`'s tasks at `priority` of no tenant,
/// or of one fair-share turn; every replica shares it. Returns its name.
async fn open_consumer(
    tasks: &TaskService,
    assignee: &Assignee,
    priority: Priority,
    share: Option<Share>,
    ack_wait: Duration,
) -> Result<String, WorkerError> {
    let name = subjects::worker_consumer(assignee, priority, share);
    let turn = share.map_or(String::new(), |s| format!(", turn {}", s.token()));
    let config = pull::Config {
        durable_name: Some(name.clone()),
        description: Some(format!("taskfleet workers of {assignee}, {priority}{turn}")),
        filter_subject: subjects::worker_filter(assignee, priority, share),
        ack_policy: AckPolicy::Explicit,
        ack_wait,
        max_deliver: -1,
        max_ack_pending: 10_000,
        deliver_policy: DeliverPolicy::All,
        ..Default::default()
    };
    let _: PullConsumer =
        (tasks.bus().topology.tasks.create_consumer(config).await).op("create worker consumer")?;
    Ok(name)
}

/// The priority (index) and fair-share turn of a queue subject of a tenant's task.
fn turn_of(subject: &str) -> Option<(usize, Share)> {
    match ring_tokens(subject) {
        (Some(priority), Some(share)) => Some((priority_index(priority), share)),
        _ => None,
    }
}

/// The priority and fair-share turn tokens of a queue subject (`tasks.<a>.<p>.<kind>.s<NN>`),
/// where present. Only these matter, and thousands of rings may be waiting: no full parse.
fn ring_tokens(subject: &str) -> (Option<Priority>, Option<Share>) {
    let mut tokens = subject.split('.').skip(2);
    let priority = tokens.next().and_then(|t| Priority::parse(t).ok());
    (priority, tokens.nth(1).and_then(Share::parse))
}

/// How often a worker, busy or idle, looks at the stream's subjects for fair-share turns with
/// work that rang no bell (see [`Queue::sweep`]): a delayed task fires into its queue subject
/// without a ring, and only the turn that last gave a task has a request waiting at the server.
const SWEEP: Duration = Duration::from_millis(500);

/// How long a pull waits for a message whose ring came before it was stored (see `next`).
const RING_WAIT: Duration = Duration::from_millis(5);

/// The longest pause between the quick re-checks after a ring that found nothing (see `next`).
const RING_RETRY_MAX: Duration = Duration::from_millis(16);

fn priority_index(p: Priority) -> usize {
    Priority::ALL
        .iter()
        .position(|&x| x == p)
        .expect("every priority is in ALL")
}

/// The order in which one pull tries the priorities (indexes into P0, P1, P2): strict P0 > P1 >
/// P2 without weights; with weights, the most under-served priority relative to its weight first
/// (P0 wins ties), so over many pulls with work everywhere each gets its share.
fn pull_order(weights: Option<[u32; 3]>, served: [u64; 3]) -> [usize; 3] {
    let mut order = [0, 1, 2];
    if let Some(w) = weights {
        order.sort_by_key(|&i| {
            if w[i] == 0 {
                u64::MAX
            } else {
                served[i] * 1_000 / u64::from(w[i])
            }
        });
    }
    order
}

/// How long a [`Queue::sweep`] waits for the stream's answer. It takes milliseconds; one asked
/// while the stream elects a leader is never answered, and waiting out the client's 10 s
/// request timeout stopped every worker's pulls that long (chaos scenario 6).
const SWEEP_ANSWER: Duration = Duration::from_secs(2);

/// Longest time a busy worker goes without pulling from every priority: a redelivered message
/// (a nak, an expired lease) rings no doorbell, so this bounds how long it can wait behind
/// lower-priority work.
const RECHECK_ALL: Duration = Duration::from_millis(250);

#[cfg(test)]
mod tests {
    use super::pull_order;

    #[test]
    fn without_weights_p0_always_goes_first() {
        assert_eq!(pull_order(None, [0, 0, 0]), [0, 1, 2]);
        assert_eq!(pull_order(None, [1000, 0, 0]), [0, 1, 2]);
    }

    #[test]
    fn with_weights_every_priority_gets_its_share_when_all_have_work() {
        let weights = Some([4, 2, 1]);
        let mut served = [0u64; 3];
        for _ in 0..700 {
            let first = pull_order(weights, served)[0];
            served[first] += 1;
        }
        assert_eq!(served, [400, 200, 100]);
    }

    #[test]
    fn a_zero_weight_priority_is_tried_last() {
        assert_eq!(pull_order(Some([1, 0, 1]), [5, 0, 5])[2], 1);
    }
}
