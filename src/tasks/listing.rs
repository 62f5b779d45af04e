//! Listing tasks newest first at a cost that grows with the page, not with the tasks stored.
//!
//! Each listing walks, backwards in windows of stream sequences, the messages that stand for the
//! tasks it may return, then reads those tasks' latest records in one batch request and keeps
//! the ones that match:
//!
//! | status asked | walked | order |
//! |---|---|---|
//! | `pending` | queue messages (`TASKS`, which holds every queued or running task) | newest queued first |
//! | `running` | the process's running index (see `running.rs`); when it is not in use, queue messages as for `pending`, reading only the tasks with a `started` record (see [`TaskService::started_states`]) | newest queued first |
//! | `completed` | ledger events of that type | most recently finished first |
//! | `failed`, `cancelled` | their index entries (`index.<status>.<assignee>.<id>`), in the server's copy `LEDGER_INDEX` | most recently finished first |
//! | any | from the ledger's last message, every record (up to [`EVERY_RECORD_BUDGET`]); past that, or from a cursor, `created` and `scheduled` events and `started` events that stand for a creation; merged with the queued tasks no one recorded yet (see `every.rs`) | newest created (or queued) first |
//!
//! A priority or kind narrows the queue subjects a `pending`/`running` listing walks; otherwise
//! they, and text in the name, are checked on each task read, and such a listing walks at most
//! about [`SCAN_BUDGET`] messages per call (a short page with a cursor says "walk on").
//!
//! A walked message that is its task's latest record (a `completed` record; an index entry,
//! which carries its event's record and which a retry replaces with a retraction; the first
//! record met of a task on a walk over every record from the ledger's end, see [`Walked`]) is
//! shown as it is; the states of the others are read from the ledger (see [`final_state`]).
//!
//! A page ends with a cursor (a stream sequence): the next page walks on from there. Each window
//! is read with [`direct::range`], which asks the server for exactly the messages the window
//! holds (a batch asking for more would scan on past the window, to the end of the stream).
//! Rare statuses have index entries because a filter with a wildcard before its last token
//! (`events.<a>.*.failed`) costs the server every subject of every block it passes, and a rare
//! status is far apart. The entries are written to the ledger (in the atomic batch of the
//! task's final event) and walked in `LEDGER_INDEX`, where the server copies them: a few
//! thousand small messages instead of a few among millions (the copy trails the ledger by the
//! server's sourcing delay).

use super::history::Cursor;
use super::ledger::also_created;
use super::{ListFilter, TaskError, TaskService};
use crate::bus::{direct, subjects, BusError, NatsResultExt};
use crate::domain::{Assignee, EventKind, Priority, Task, TaskId, TaskKind, TaskStatus};
use async_nats::jetstream::message::StreamMessage;
use std::collections::{HashMap, HashSet};

/// One page of a listing.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// The tasks, newest first.
    pub tasks: Vec<Task>,
    /// Where the next page starts (`before` of the next call), if there may be one.
    pub next: Option<Cursor>,
}

/// A task a walk found, with the sequence and time of the message that stands for it.
pub(super) struct Found {
    /// The message's stream sequence (a cursor there walks on past the task).
    pub seq: u64,
    /// When the message was stored, in nanoseconds since the epoch.
    pub time: i128,
    /// The task's state.
    pub task: Task,
}

/// What one walk of a stream found, newest first, and where the next walk would start.
#[derive(Default)]
pub(super) struct WalkPage {
    /// The tasks found, at most the filter's limit.
    pub found: Vec<Found>,
    /// The sequence the next walk starts below, if the stream may hold more.
    pub next: Option<u64>,
    /// The stream's last sequence when the walk began.
    pub last: u64,
}

/// The first window of a ledger walk, in messages per task wanted (a task has a few records).
const WINDOW_PER_TASK: u64 = 4;
/// The most a window grows over the last one.
pub(super) const GROWTH: u64 = 4;
/// The fewest sequences a window after the first spans (a window is a round trip or two).
const MIN_WINDOW: u64 = 256;
/// About the most messages one call walks when its filter narrows only after reading (see
/// [`TaskService::list_page`]).
pub(super) const SCAN_BUDGET: u64 = 5_000;
/// About the most records a listing of every status walks before it walks creations only (see
/// [`Walked`]).
const EVERY_RECORD_BUDGET: u64 = 1_000;

/// What one listing walks: a stream and the subjects whose messages stand for tasks.
pub(super) struct Source {
    pub stream: &'static str,
    pub filters: Vec<String>,
}

impl Source {
    /// What `TaskService::reach` knows this source by.
    fn key(&self) -> String {
        format!("{} {}", self.stream, self.filters.join(" "))
    }
}

/// Sources whose reach `TaskService::reach` remembers before it starts over: how many stream
/// sequences back a source's last newest page over every record reached, and for how many
/// tasks, so that the next first window spans what a page needs in one read. One assignee's
/// records are a tenth of a ledger ten share, and a first window sized for the whole ledger
/// found a fifth of a page, then needed one or two more windows, two round trips each; and
/// where the workers just drained a backlog, the newest records are mostly completions of
/// tasks listed further back (a window of 400 found 48 tasks, `make bench-scale`, 2026-12-07).
pub(super) const REACH_CAP: usize = 1_024;
/// The most sequences apart a learned reach counts: a first window spans at most this many
/// times a page's worth of records, so a source that was sparse on its last walk and is dense
/// now reads at most that many times the records a page needs (once; the walk learns again).
const MAX_SPACING: u64 = 16;

impl TaskService {
    /// Tasks matching `filter`, newest first, from `filter.before` on.
    ///
    /// A filter that narrows only after reading (priority, kind, name; see
    /// [`ListFilter::narrows_after_read`]) walks at most about [`SCAN_BUDGET`] messages per call:
    /// when they are walked before the page fills, the page comes back short (even empty) with
    /// the cursor to walk on from, so a rare match among a million tasks costs several calls
    /// instead of one unbounded one.
    pub async fn list_page(&self, filter: &ListFilter) -> Result<Page, TaskError> {
        if filter.status.is_none() {
            return self.every_status_page(filter).await;
        }
        if filter.status == Some(TaskStatus::Running) {
            if let Some(page) = self.running_page(filter).await? {
                return Ok(page);
            }
        }
        let walked = self.walk_page(filter).await?;
        Ok(Page {
            tasks: walked.found.into_iter().map(|f| f.task).collect(),
            next: walked.next.map(Cursor::at),
        })
    }

    /// One walk of what `filter` lists (see the module's table), from `filter.before` on.
    pub(super) async fn walk_page(&self, filter: &ListFilter) -> Result<WalkPage, TaskError> {
        let assignee = one_assignee(filter);
        let mut source = source(filter, assignee.as_ref(), false);
        let (first, last, stored) = bounds(&self.bus.js, source.stream).await?;
        let mut end = filter
            .before_seq()
            .map_or(last, |b| b.saturating_sub(1))
            .min(last);
        let mut walk = Walked::new(filter.status.is_none() && end == last);
        if walk.every_record {
            source = self::source(filter, assignee.as_ref(), true);
        }
        let mut after_end = self.counts_after(&source, end, end == last).await?;
        let budget = filter.narrows_after_read().then_some(SCAN_BUDGET);
        let ledger = source.stream == subjects::EVENTS_STREAM;
        let span = last.saturating_sub(first) + 1;
        // What the walk of every record knows its source by (the source it learns on, below).
        let key = walk.every_record.then(|| source.key());
        let learned = key.as_ref().and_then(|k| self.reach.get(k));
        let mut window = match learned {
            Some(reach) => window_learned(reach, filter.limit),
            None => first_window(filter.limit, ledger, span, stored),
        };
        let mut page = WalkPage {
            last,
            ..WalkPage::default()
        };
        let mut left_over = false;
        while page.found.len() < filter.limit && end >= first && end > 0 {
            if let Some(b) = budget {
                window = window.min(b);
            }
            let start = end.saturating_sub(window - 1).max(first);
            let (end_of_window, found_before) = (end, page.found.len());
            let msgs = self
                .read_range(&source, (start, end), &mut after_end)
                .await?;
            let candidates = walk.take(msgs, filter);
            let found = self.matching(&candidates, filter, &walk.latest).await?;
            left_over = fill(&mut page, found, filter.limit);
            end = start.saturating_sub(1);
            let more = end >= first && end > 0;
            if budget.is_some_and(|b| walk.walked >= b) && page.found.len() < filter.limit {
                page.next = more.then_some(start);
                return Ok(page);
            }
            let full = page.found.len() == filter.limit;
            if walk.every_record && walk.walked >= EVERY_RECORD_BUDGET && more && !full {
                // Tasks with long logs: walk on over their creations only, reading states.
                walk.every_record = false;
                source = self::source(filter, assignee.as_ref(), false);
                after_end = self.counts_after(&source, end, false).await?;
            }
            walk.spanned += end_of_window - start + 1;
            let found = (page.found.len(), page.found.len() - found_before);
            window = next_window(window, walk.spanned, found, filter.limit);
        }
        // Still walking every record (from the stream's last message on), it walks the source
        // it started on: a full page says how far back the next one reaches.
        let reached = page.found.get(filter.limit.saturating_sub(1));
        if let (Some(key), Some(reached)) = (key.filter(|_| walk.every_record), reached) {
            let reach = (last.saturating_sub(reached.seq) + 1, filter.limit);
            self.reach.insert(key, reach);
        }
        // A full page is the last when the walk met the stream's first message and the page
        // took every task its windows found.
        let walked_all = end < first || end == 0;
        if page.found.len() < filter.limit || (walked_all && !left_over) {
            page.next = None;
        }
        Ok(page)
    }

    /// Every message of `source` in `[start, end]`; `after_end` holds, per filter, how many
    /// of its messages come after `end`, and is moved to the window's start.
    pub(super) async fn read_range(
        &self,
        source: &Source,
        window: (u64, u64),
        after_end: &mut [u64],
    ) -> Result<Vec<StreamMessage>, TaskError> {
        let mut out = Vec::new();
        let span = (window.1 - window.0 + 1) as usize;
        for (filter, after) in source.filters.iter().zip(after_end.iter_mut()) {
            let stream = source.stream;
            let before = *after;
            let (msgs, from_start) = self
                .read_source(stream, (filter, window.0, span), |client| async move {
                    direct::range(&client, stream, filter, window, before).await
                })
                .await?;
            *after = from_start;
            out.extend(msgs);
        }
        Ok(out)
    }

    /// Per filter of `source`, how many messages come after `end` (none after the stream's
    /// last message).
    pub(super) async fn counts_after(
        &self,
        source: &Source,
        end: u64,
        at_last: bool,
    ) -> Result<Vec<u64>, TaskError> {
        let mut out = Vec::new();
        for filter in &source.filters {
            out.push(match at_last {
                true => 0,
                false => {
                    let stream = source.stream;
                    self.read_source(stream, (filter, end + 1, 1), |client| async move {
                        direct::count_after(&client, stream, filter, end).await
                    })
                    .await?
                }
            });
        }
        Ok(out)
    }

    /// The tasks of `candidates` (newest first) whose latest state matches `filter`, with the
    /// message that found each.
    async fn matching(
        &self,
        candidates: &[StreamMessage],
        filter: &ListFilter,
        latest: &HashMap<TaskId, StreamMessage>,
    ) -> Result<Vec<Found>, TaskError> {
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let queued = candidates[0].subject.starts_with("tasks.");
        let tasks: Vec<Task> = match (queued, filter.status) {
            (true, Some(TaskStatus::Running)) => self.started_states(candidates).await?,
            (true, _) => self.queued_states(candidates, false).await?,
            (false, _) => self.logged_states(candidates, latest).await?,
        };
        let by_id: HashMap<TaskId, &StreamMessage> =
            candidates.iter().map(|m| (task_of(m), m)).collect();
        Ok(tasks
            .into_iter()
            .filter(|t| filter.accepts(t))
            .filter_map(|task| {
                let m = by_id.get(&task.id)?;
                let time = m.time.unix_timestamp_nanos();
                Some(Found {
                    seq: m.sequence,
                    time,
                    task,
                })
            })
            .collect())
    }

    /// The latest states of the tasks that ledger messages or index entries name, in their
    /// order. A `completed` record is its task's last (no action leads out of `completed`, and
    /// the sweeper removes the record with the task), and so is an index entry with a state
    /// (written in the batch of its task's final event, replaced by a retry's retraction, purged
    /// with its task): each is its own state; so is a record in `latest` (see [`Walked`]). The
    /// others (a retraction, an entry written before entries carried states) are read in one
    /// batch.
    async fn logged_states(
        &self,
        candidates: &[StreamMessage],
        latest: &HashMap<TaskId, StreamMessage>,
    ) -> Result<Vec<Task>, TaskError> {
        let own: Vec<Option<Task>> = candidates
            .iter()
            .map(|m| final_state(m).or_else(|| known_state(m, latest)))
            .collect();
        let keys: Vec<(Assignee, TaskId)> = candidates
            .iter()
            .zip(&own)
            .filter(|(_, own)| own.is_none())
            .filter_map(|(m, _)| indexed_task(&m.subject))
            .collect();
        let mut states = self.latest_states(&keys).await?;
        let state = |(m, own): (&StreamMessage, Option<Task>)| {
            own.or_else(|| {
                let (_, id) = indexed_task(&m.subject)?;
                states.remove(&id).map(|s| s.task)
            })
        };
        Ok(candidates.iter().zip(own).filter_map(state).collect())
    }
}

/// What a listing has walked so far. A listing of every status that starts at the ledger's
/// last message walks every record (not only creations) while it has walked fewer than
/// [`EVERY_RECORD_BUDGET`]: newest first, the first record it meets of a task is that task's latest,
/// which the page then shows without reading the ledger again. Past the budget (tasks with long
/// logs) it walks creations only, and reads the states of tasks it has not met.
struct Walked {
    /// Whether the walk is over every record, from the ledger's last message on.
    every_record: bool,
    /// The latest record of each task met on a walk over every record.
    latest: HashMap<TaskId, StreamMessage>,
    /// The tasks already on the page or passed over (a task is shown once).
    seen: HashSet<TaskId>,
    /// Messages walked.
    walked: u64,
    /// Stream sequences walked (the windows' spans).
    spanned: u64,
}

impl Walked {
    fn new(every_record: bool) -> Self {
        Walked {
            every_record,
            latest: HashMap::new(),
            seen: HashSet::new(),
            walked: 0,
            spanned: 0,
        }
    }

    /// The messages of one window (any order) that stand for tasks not met before, newest
    /// first; notes each task's latest record on a walk over every record.
    fn take(&mut self, mut msgs: Vec<StreamMessage>, filter: &ListFilter) -> Vec<StreamMessage> {
        self.walked += msgs.len() as u64;
        msgs.sort_by_key(|m| std::cmp::Reverse(m.sequence));
        if self.every_record {
            for m in &msgs {
                if let Some((_, id, _)) = subjects::parse_event(&m.subject) {
                    self.latest.entry(id).or_insert_with(|| m.clone());
                }
            }
        }
        msgs.into_iter()
            .filter(|m| stands_for_a_task(m, filter))
            .filter(|m| self.seen.insert(task_of(m)))
            .collect()
    }
}

/// The first window of a newest page of `limit` tasks over a source whose last such page of
/// `then` tasks reached `span` sequences back: as far per task, and an eighth more (the newest
/// records move on between two listings); at least [`MIN_WINDOW`], at most a window of records
/// [`MAX_SPACING`] apart.
fn window_learned((span, then): (u64, usize), limit: usize) -> u64 {
    let needed = span
        .saturating_mul(limit as u64)
        .div_ceil(then.max(1) as u64);
    needed
        .saturating_add(needed / 8)
        .min(window_for(limit, true, MAX_SPACING))
        .max(MIN_WINDOW)
}

/// The first window of a walk for `limit` tasks over a stream whose `span` of sequences holds
/// `stored` messages: [`WINDOW_PER_TASK`] messages per task in the ledger, and half as many
/// again as tasks wanted in the queue or the index (a message each), in sequences as far apart
/// as the stream's messages are on average (a work queue keeps a few over a long span).
pub(super) fn first_window(limit: usize, ledger: bool, span: u64, stored: u64) -> u64 {
    window_for(limit, ledger, span.checked_div(stored).unwrap_or(1))
}

/// The first window of a walk for `limit` tasks over messages `apart` sequences apart.
fn window_for(limit: usize, ledger: bool, apart: u64) -> u64 {
    let messages = match ledger {
        true => limit as u64 * WINDOW_PER_TASK,
        false => (limit as u64 * 3).div_ceil(2),
    };
    messages.saturating_mul(apart.max(1)).max(MIN_WINDOW)
}

/// The next window of a walk that has spanned `spanned` sequences and found `found` of the
/// `limit` tasks it wants, `last_found` of them in the last window: as many sequences as the
/// tasks still wanted took so far, and half as many again; at least [`MIN_WINDOW`], and at most
/// [`GROWTH`] times the last window, which is what a walk whose last window found nothing gets.
/// Sized by what the walk met rather than grown blindly, a page reads about the messages it
/// needs, not up to four times as many.
fn next_window(last: u64, spanned: u64, (found, last_found): (usize, usize), limit: usize) -> u64 {
    let most = last.saturating_mul(GROWTH);
    let wanted = limit.saturating_sub(found) as u64;
    match (found, last_found) {
        (0, _) | (_, 0) => most,
        _ => (spanned.div_ceil(found as u64) * wanted * 3 / 2)
            .clamp(MIN_WINDOW, most.max(MIN_WINDOW)),
    }
}

/// The state of the task a ledger message names from its latest record met on the walk, if
/// that record carries one.
fn known_state(m: &StreamMessage, latest: &HashMap<TaskId, StreamMessage>) -> Option<Task> {
    let (_, id, _) = subjects::parse_event(&m.subject)?;
    Some(super::ledger::decode_record(latest.get(&id)?)?.task)
}

/// Adds `found` (newest first) to `page` up to `limit` tasks; the cursor follows the last one
/// added. Returns whether some were left out (the page was full before them).
fn fill(page: &mut WalkPage, found: Vec<Found>, limit: usize) -> bool {
    for f in found {
        if page.found.len() == limit {
            return true;
        }
        page.next = Some(f.seq);
        page.found.push(f);
    }
    false
}

/// The state a walked message carries when it is its task's latest (see
/// [`TaskService::logged_states`]): a `completed` record's, or an index entry's (the copy holds
/// the newest message per entry subject, and a retry replaces the entry with one that carries
/// no state); `None` for any other message.
fn final_state(m: &StreamMessage) -> Option<Task> {
    if let Some((_, _, kind)) = subjects::parse_event(&m.subject) {
        let task = (kind == EventKind::Completed).then(|| super::ledger::decode_record(m))??;
        return Some(task.task);
    }
    subjects::parse_index(&m.subject)?;
    let mut task = super::ledger::decode_record(m)?.task;
    // The entry's own sequence is the copy's; the state's revision is the ledger sequence of
    // the event, which its batch stored just before the entry.
    task.revision = direct::source_sequence(m)?.checked_sub(1)?;
    task.status.is_terminal().then_some(task)
}

/// The one assignee `filter` lists: the one asked for, or its scope's only one.
pub(super) fn one_assignee(filter: &ListFilter) -> Option<Assignee> {
    filter.assignee.clone().or_else(|| match &filter.scope {
        Some(s) if s.len() == 1 => s.iter().next().cloned(),
        _ => None,
    })
}

/// What a listing by `filter` walks (for `assignee`, the filter's or its scope's only one);
/// `every_record`: a listing of every status walks all of the ledger's records, not only the
/// creations (see [`Walked`]).
pub(super) fn source(
    filter: &ListFilter,
    assignee: Option<&Assignee>,
    every_record: bool,
) -> Source {
    let a = assignee.map_or("*", Assignee::as_str);
    let events = |kinds: &[EventKind]| Source {
        stream: subjects::EVENTS_STREAM,
        filters: kinds
            .iter()
            .map(|&k| subjects::events_of_kind(assignee, k))
            .collect(),
    };
    match filter.status {
        Some(status @ (TaskStatus::Pending | TaskStatus::Running)) => {
            let mut filters = queue_filters(a, filter.priority, filter.kind);
            if status == TaskStatus::Running && filter.kind.is_some_and(TaskKind::is_worker_run) {
                // A worker-run task started over the API runs from a stand-in on the manual
                // subject (`TaskService::hold_for_api`); the kind is checked on its state.
                filters.extend(queue_filters(a, filter.priority, Some(TaskKind::Manual)));
            }
            Source {
                stream: subjects::TASKS_STREAM,
                filters,
            }
        }
        Some(TaskStatus::Completed) => events(&[EventKind::Completed]),
        // A delayed task's schedule message stays in `TASKS` until it fires.
        Some(TaskStatus::Scheduled) => Source {
            stream: subjects::TASKS_STREAM,
            filters: vec![format!("scheduled.{a}.*")],
        },
        Some(status @ (TaskStatus::Failed | TaskStatus::Cancelled)) => Source {
            stream: subjects::INDEX_STREAM,
            filters: vec![subjects::status_index_filter(status, assignee)],
        },
        None if every_record => Source {
            stream: subjects::EVENTS_STREAM,
            filters: vec![
                assignee.map_or(subjects::ALL_EVENTS.to_string(), subjects::assignee_events)
            ],
        },
        None => events(&[EventKind::Scheduled, EventKind::Created, EventKind::Started]),
    }
}

/// The queue subjects of assignee `a` (`*` for all) narrowed to a priority and a kind when
/// given (`tasks.<a>.<p>` holds manual tasks, `tasks.<a>.<p>.<kind>[.<share>]` the others).
fn queue_filters(a: &str, priority: Option<Priority>, kind: Option<TaskKind>) -> Vec<String> {
    let p = priority.map_or("*", Priority::token);
    match kind {
        None if priority.is_none() => vec![format!("tasks.{a}.>")],
        None => vec![format!("tasks.{a}.{p}"), format!("tasks.{a}.{p}.>")],
        Some(TaskKind::Manual) => vec![format!("tasks.{a}.{p}")],
        Some(k) => {
            let k = k.as_str();
            vec![format!("tasks.{a}.{p}.{k}"), format!("tasks.{a}.{p}.{k}.*")]
        }
    }
}

/// The task an event or an index entry names.
fn indexed_task(subject: &str) -> Option<(Assignee, TaskId)> {
    subjects::parse_event(subject)
        .map(|(a, id, _)| (a, id))
        .or_else(|| subjects::parse_index(subject))
        .or_else(|| subjects::parse_scheduled(subject))
}

/// Whether a walked message stands for a task this listing may show (with no status asked,
/// only a task's creation: `scheduled`, `created`, or a `started` event that is also its
/// creation; nothing outside the caller's scope).
fn stands_for_a_task(m: &StreamMessage, filter: &ListFilter) -> bool {
    let indexed =
        subjects::parse_index(&m.subject).or_else(|| subjects::parse_scheduled(&m.subject));
    if let Some((a, _)) = indexed {
        return filter.scope.as_ref().is_none_or(|s| s.contains(&a));
    }
    if let Some((a, _, kind)) = subjects::parse_event(&m.subject) {
        let in_scope = filter.scope.as_ref().is_none_or(|s| s.contains(&a));
        let creation = filter.status.is_some()
            || matches!(kind, EventKind::Scheduled | EventKind::Created)
            || (kind == EventKind::Started
                && super::ledger::decode_event(m).is_ok_and(|e| also_created(&e)));
        return in_scope && creation;
    }
    match subjects::parse_task(&m.subject) {
        Some((a, _, _)) => filter.scope.as_ref().is_none_or(|s| s.contains(&a)),
        None => false,
    }
}

/// The task a walked message stands for (queue messages by their id; events and index entries
/// by their subject).
fn task_of(m: &StreamMessage) -> TaskId {
    if let Some((_, id)) = indexed_task(&m.subject) {
        return id;
    }
    super::queue::queued_key(m.into())
        .map(|(_, id)| id)
        .unwrap_or_else(|| TaskId::parse("invalid").expect("a valid id"))
}

/// The first and last sequence of a stream and how many messages it holds, asked of the
/// server now.
pub(super) async fn bounds(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> Result<(u64, u64, u64), BusError> {
    let s = js.get_stream(stream).await.op("stream info")?;
    let state = &s.cached_info().state;
    Ok((state.first_sequence, state.last_sequence, state.messages))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_window_spans_the_messages_a_page_needs_as_far_apart_as_the_stream_keeps_them() {
        assert_eq!(first_window(100, true, 1_000_000, 1_000_000), 400);
        assert_eq!(first_window(100, false, 1_000_000, 1_000), 150_000);
        assert_eq!(first_window(10, true, 50, 50), MIN_WINDOW);
        // An empty stream: as if its messages were next to each other.
        assert_eq!(first_window(100, true, 10, 0), 400);
    }

    #[test]
    fn a_learned_first_window_reaches_as_far_per_task_as_the_last_page_did_and_an_eighth_more() {
        // The last page of 100 reached 492 sequences back: one of 100 spans 553 now, one of 50
        // half as many.
        assert_eq!(window_learned((492, 100), 100), 553);
        assert_eq!(window_learned((492, 100), 50), 276);
        // Never under the least window, never over a page of records 16 apart.
        assert_eq!(window_learned((100, 100), 100), MIN_WINDOW);
        assert_eq!(
            window_learned((1_000_000, 100), 100),
            100 * WINDOW_PER_TASK * 16
        );
        assert_eq!(window_learned((1_000_000, 100), 1), MIN_WINDOW);
    }

    #[test]
    fn a_walk_whose_last_window_found_nothing_grows_its_window_fourfold() {
        assert_eq!(next_window(400, 400, (0, 0), 100), 1600);
        assert_eq!(next_window(400, 2400, (96, 0), 100), 1600);
    }

    #[test]
    fn the_next_window_spans_what_the_tasks_still_wanted_took_so_far_and_half_again() {
        // 2,000 sequences gave 40 tasks (50 each); 60 more wanted: 3,000 and half again.
        assert_eq!(next_window(1600, 2000, (40, 30), 100), 4500);
    }

    #[test]
    fn a_walk_that_nearly_filled_its_page_asks_for_a_little_more_not_four_times_as_much() {
        assert_eq!(next_window(1600, 2000, (96, 80), 100), MIN_WINDOW);
        assert_eq!(next_window(400, 400, (1, 1), 100), 1600);
    }
}
