//! Pulling in strict priority order without prefetching.
//!
//! Each free slot asks the P0 consumer for one message (no wait), then P1, then P2, so the oldest
//! P0 always goes first and nothing is pulled ahead of a free slot. When every priority is empty
//! the worker sleeps on a doorbell: a core-NATS subscription to the assignee's queue subjects (any
//! publish rings it) plus `wake.<assignee>` (hand-backs), with `idle_poll` as a fallback for
//! redeliveries. An idle worker with a free slot per priority also leaves a one-message request
//! waiting at each priority's consumer, so the server pushes the next task to it directly.

use super::pull::Puller;
use super::WorkerError;
use crate::bus::{subjects, NatsResultExt};
use crate::domain::{Assignee, Priority};
use crate::tasks::TaskService;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::Message;
use futures::{FutureExt, StreamExt};
use std::time::Duration;

/// The three durable consumers of one assignee and the doorbell.
pub(super) struct Queue {
    /// Checks the delivered messages when the reader connection drops.
    tasks: TaskService,
    assignee: Assignee,
    /// Consumer names, P0 first.
    consumers: Vec<(Priority, String)>,
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
    /// The doorbell rang since the last pull pass, and for which priorities.
    rang: bool,
    rang_for: [bool; 3],
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
        let mut consumers = Vec::new();
        for priority in Priority::ALL {
            let name = subjects::worker_consumer(assignee, priority);
            let config = pull::Config {
                durable_name: Some(name.clone()),
                description: Some(format!("taskfleet workers of {assignee}, {priority}")),
                filter_subject: subjects::worker_filter(assignee, priority),
                ack_policy: AckPolicy::Explicit,
                ack_wait,
                max_deliver: -1,
                max_ack_pending: 10_000,
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            };
            let _: PullConsumer = bus
                .topology
                .tasks
                .create_consumer(config)
                .await
                .op("create worker consumer")?;
            consumers.push((priority, name));
        }
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
        Ok(Self {
            tasks: tasks.clone(),
            assignee: assignee.clone(),
            consumers,
            puller,
            doorbell,
            idle_poll,
            weights,
            served: [0; 3],
            maybe: [true; 3],
            all_checked: tokio::time::Instant::now(),
            rang: false,
            rang_for: [false; 3],
            idle: false,
        })
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
        self.maybe = [true; 3];
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
                self.maybe = [true; 3];
                continue;
            }
            // Rings from before this check are covered by the check itself.
            while let Some(Some(ring)) = self.doorbell.next().now_or_never() {
                self.rung(&ring.subject);
            }
            if self.all_checked.elapsed() >= RECHECK_ALL {
                self.maybe = [true; 3];
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
                for (maybe, was_empty) in self.maybe.iter_mut().zip(empty) {
                    *maybe |= was_empty;
                }
                retry
            } else {
                retry = Duration::ZERO;
                self.arm(usable).await?;
                self.idle_poll
            };
            self.idle_wait(wait, retry.is_zero()).await?;
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
            if !self.maybe[i] || self.puller.is_armed(&self.consumers[i].1) {
                continue;
            }
            let asked = wanted - got.len();
            let batch = self.puller.pull(&self.consumers[i].1, asked, None).await?;
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

    /// The doorbell (core NATS) can ring before JetStream has stored the message, so a pull
    /// right after a ring may find nothing. Waits briefly on the highest priority that rang (the
    /// message is normally stored within a millisecond; a ring for a message another replica
    /// took costs [`RING_WAIT`]); the caller then looks again after 1, 2, 4, 8, 16 ms instead
    /// of sleeping until the next poll.
    async fn after_empty_ring(
        &mut self,
        rang_for: [bool; 3],
        empty: [bool; 3],
    ) -> Result<Option<Vec<Message>>, WorkerError> {
        let announced = pull_order(self.weights, self.served)
            .into_iter()
            .find(|&i| rang_for[i] && empty[i]);
        let Some(i) = announced else {
            return Ok(None);
        };
        self.wait_for_rung(i).await
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
        let unarmed: Vec<String> = (self.consumers.iter().map(|(_, c)| c.clone()))
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
                    self.maybe = [true; 3];
                }
            },
            // A message, or a request that ended: a task may have come just as it expired
            // (its ring was ignored while armed), so every priority is worth a look.
            answered = self.puller.wait_stashed() => {
                answered?;
                self.maybe = [true; 3];
            }
            _ = tokio::time::sleep(wait) => {
                if poll {
                    self.maybe = [true; 3];
                }
            }
        }
        Ok(())
    }

    /// Up to `free` messages armed requests delivered, highest priority first.
    fn take_stashed(&mut self, free: usize) -> Vec<Message> {
        let order: Vec<&str> = self.consumers.iter().map(|(_, c)| c.as_str()).collect();
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
        rang_for: [bool; 3],
    ) -> Result<Option<Vec<Message>>, WorkerError> {
        let lone = rang_for.iter().filter(|&&r| r).count() == 1;
        if !self.idle || !lone || self.weights.is_some() {
            return Ok(None);
        }
        let first = (0..3).find(|&i| rang_for[i] || self.maybe[i]);
        let Some(i) = first.filter(|&i| rang_for[i]) else {
            return Ok(None);
        };
        if self.puller.is_armed(&self.consumers[i].1) {
            return Ok(None);
        }
        let got = self.wait_for_rung(i).await?;
        if got.is_some() {
            self.idle = false;
        }
        Ok(got)
    }

    /// One message of priority `i`, waiting [`RING_WAIT`] at the server for the one whose ring
    /// came. One only: it waits at the server, where a later message for a request given up on
    /// would go to nobody until its ack wait ran out.
    async fn wait_for_rung(&mut self, i: usize) -> Result<Option<Vec<Message>>, WorkerError> {
        let got = self
            .puller
            .pull(&self.consumers[i].1, 1, Some(RING_WAIT))
            .await?;
        if got.is_empty() {
            return Ok(None);
        }
        self.served[i] += 1;
        self.maybe[i] = true;
        Ok(Some(got))
    }

    /// A doorbell ring: a task queued at one priority, or a wake-up (hand-back) for any. An
    /// armed priority needs no ring: its waiting request gets the message.
    fn rung(&mut self, subject: &str) {
        // Only the priority token matters; thousands of rings may be waiting, so no full parse.
        let token = subject
            .split('.')
            .nth(2)
            .and_then(|t| Priority::parse(t).ok());
        let rang: Vec<usize> = match token {
            Some(priority) => vec![priority_index(priority)],
            None => vec![0, 1, 2],
        };
        for i in rang {
            if !self.puller.is_armed(&self.consumers[i].1) {
                self.rang = true;
                self.maybe[i] = true;
                self.rang_for[i] = true;
            }
        }
    }
}

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
