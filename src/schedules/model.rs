//! What a schedule is: the definition a caller sends (API body or `[[schedules]]` entry), its
//! checks, and the record kept per name in the `taskfleet_schedules` bucket (definition plus
//! state).

use super::ScheduleError;
use crate::domain::cron::{CronError, CronSpec};
use crate::domain::{NewTask, TaskId, TaskStatus};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What to do with a tick while the previous tick's task is still pending or running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlap {
    /// Create the tick's task anyway (the default).
    #[default]
    Allow,
    /// Create no task for this tick (it is counted as skipped).
    Skip,
}

/// A schedule as a caller defines it: `POST /api/schedules`, `PUT /api/schedules/{name}` (where
/// `name` may be left out) and each `[[schedules]]` entry of the config file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// `[a-z0-9_-]{1,64}`.
    #[serde(default)]
    pub name: String,
    /// A 5-field cron expression, `@every 5m`, `@daily`, ….
    pub cron: String,
    /// An IANA time zone the cron fields are read in (default `UTC`).
    #[serde(default = "utc")]
    pub timezone: String,
    /// The create body of each tick's task (as `POST /api/tasks` takes it).
    pub task: Value,
    /// `allow` (default) or `skip`.
    #[serde(default)]
    pub overlap: Overlap,
    /// Created paused (no ticks until resumed).
    #[serde(default)]
    pub paused: bool,
}

fn utc() -> String {
    "UTC".into()
}

/// A [`ScheduleSpec`] whose every field checked out.
#[derive(Debug, Clone)]
pub struct Definition {
    /// The schedule's name.
    pub name: String,
    /// The parsed cron expression in its time zone.
    pub cron: CronSpec,
    /// Each tick's create body.
    pub task: NewTask,
    /// Overlap policy.
    pub overlap: Overlap,
    /// Paused.
    pub paused: bool,
}

/// Whether `name` matches `[a-z0-9_-]{1,64}`.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// The fields a [`ScheduleSpec`] may have.
const FIELDS: [&str; 6] = ["name", "cron", "timezone", "task", "overlap", "paused"];

fn field<T: serde::de::DeserializeOwned>(
    map: &serde_json::Map<String, Value>,
    name: &str,
    default: Option<T>,
) -> Result<T, ScheduleError> {
    let invalid = |message: String| ScheduleError::Invalid {
        field: name.to_string(),
        message,
    };
    match (map.get(name), default) {
        (Some(v), _) => serde_json::from_value(v.clone()).map_err(|e| invalid(e.to_string())),
        (None, Some(d)) => Ok(d),
        (None, None) => Err(invalid("is required".into())),
    }
}

impl ScheduleSpec {
    /// Reads a request body, naming the field of the first problem (an unknown field, a
    /// missing one, a value of the wrong type).
    pub fn from_json(body: Value) -> Result<Self, ScheduleError> {
        let Value::Object(map) = body else {
            return Err(ScheduleError::Invalid {
                field: "body".into(),
                message: "must be a JSON object".into(),
            });
        };
        if let Some(unknown) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(ScheduleError::Invalid {
                field: unknown.clone(),
                message: format!("unknown field; expected one of {}", FIELDS.join(", ")),
            });
        }
        Ok(Self {
            name: field(&map, "name", Some(String::new()))?,
            cron: field(&map, "cron", None)?,
            timezone: field(&map, "timezone", Some(utc()))?,
            task: field(&map, "task", None)?,
            overlap: field(&map, "overlap", Some(Overlap::Allow))?,
            paused: field(&map, "paused", Some(false))?,
        })
    }

    /// Checks every field, naming the first bad one (`name`, `cron`, `timezone`, `task…`).
    pub fn check(&self) -> Result<Definition, ScheduleError> {
        let invalid = |field: &str, message: String| ScheduleError::Invalid {
            field: field.to_string(),
            message,
        };
        if !valid_name(&self.name) {
            let got = format!("must match [a-z0-9_-]{{1,64}}, got {:?}", self.name);
            return Err(invalid("name", got));
        }
        let cron = CronSpec::parse(&self.cron, &self.timezone).map_err(|e| {
            let field = match e {
                CronError::BadTimeZone(_) => "timezone",
                _ => "cron",
            };
            invalid(field, e.to_string())
        })?;
        // A field the task does not know is refused, as a create refuses it.
        let mut unknown: Option<String> = None;
        let note = |path: serde_ignored::Path<'_>| {
            unknown.get_or_insert_with(|| path.to_string());
        };
        let mut task: NewTask = serde_ignored::deserialize(self.task.clone(), note)
            .map_err(|e| invalid("task", e.to_string()))?;
        if let Some(field) = unknown {
            return Err(invalid(&format!("task.{field}"), "unknown field".into()));
        }
        task.id = None;
        task.validate().map_err(|m| invalid("task", m))?;
        for (i, entry) in task.notify.iter().enumerate() {
            crate::outbound::destination::parse_notify(entry)
                .map_err(|e| invalid(&format!("task.notify[{i}]"), e.to_string()))?;
        }
        Ok(Definition {
            name: self.name.clone(),
            cron,
            task,
            overlap: self.overlap,
            paused: self.paused,
        })
    }
}

/// One schedule as stored (bucket `taskfleet_schedules`, key = name) and shown by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// The name.
    pub name: String,
    /// The cron expression.
    pub cron: String,
    /// Its IANA time zone.
    pub timezone: String,
    /// Each tick's create body.
    pub task: NewTask,
    /// `allow` or `skip`.
    pub overlap: Overlap,
    /// No ticks while set.
    pub paused: bool,
    /// Bumped by every change of the definition (and by resume); ticks armed for an older
    /// generation are dropped when they fire.
    pub generation: u64,
    /// When the schedule was first stored.
    pub created_time: DateTime<Utc>,
    /// When its definition last changed.
    pub updated_time: DateTime<Utc>,
    /// The tick armed now (none while paused or when the expression never fires again).
    pub next_fire_time: Option<DateTime<Utc>>,
    /// The last tick handled (created, skipped or missed).
    pub last_tick: Option<DateTime<Utc>>,
    /// The task of the last tick that created one.
    pub last_task_id: Option<TaskId>,
    /// Ticks that created a task.
    pub created: u64,
    /// Ticks skipped (`overlap: skip` while the previous task was pending or running).
    pub skipped: u64,
    /// When the last skipped tick was due.
    pub last_skipped: Option<DateTime<Utc>>,
    /// Ticks missed (handled more than `scheduling.catch_up_s` late).
    pub missed: u64,
    /// When the last missed tick was due.
    pub last_missed: Option<DateTime<Utc>>,
}

impl Schedule {
    /// A new record of `def`, generation 1, nothing fired yet.
    pub fn new(def: &Definition, now: DateTime<Utc>) -> Self {
        Self {
            name: def.name.clone(),
            cron: def.cron.expr().to_string(),
            timezone: def.cron.timezone().to_string(),
            task: def.task.clone(),
            overlap: def.overlap,
            paused: def.paused,
            generation: 1,
            created_time: now,
            updated_time: now,
            next_fire_time: None,
            last_tick: None,
            last_task_id: None,
            created: 0,
            skipped: 0,
            last_skipped: None,
            missed: 0,
            last_missed: None,
        }
    }

    /// Whether the record's definition is `def` (same expression, zone, task, overlap, paused).
    pub fn same_definition(&self, def: &Definition) -> bool {
        self.cron == def.cron.expr()
            && self.timezone == def.cron.timezone()
            && self.overlap == def.overlap
            && self.paused == def.paused
            && serde_json::to_value(&self.task).ok() == serde_json::to_value(&def.task).ok()
    }

    /// Takes `def` as the new definition: a new generation, state kept.
    pub fn redefine(&mut self, def: &Definition, now: DateTime<Utc>) {
        self.cron = def.cron.expr().to_string();
        self.timezone = def.cron.timezone().to_string();
        self.task = def.task.clone();
        self.overlap = def.overlap;
        self.paused = def.paused;
        self.generation += 1;
        self.updated_time = now;
    }

    /// The parsed expression (stored ones parsed when they were written).
    pub fn spec(&self) -> Result<CronSpec, ScheduleError> {
        CronSpec::parse(&self.cron, &self.timezone).map_err(|e| ScheduleError::Invalid {
            field: "cron".into(),
            message: e.to_string(),
        })
    }
}

/// A schedule as the API answers it: the record plus the status of its last task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScheduleView {
    /// The record.
    #[serde(flatten)]
    pub schedule: Schedule,
    /// The status of `last_task_id`'s task (none when it is gone or there is none).
    pub last_task_status: Option<TaskStatus>,
}

/// The body of a tick message (`schedules.<name>.next`, fired into `schedules.<name>.tick`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tick {
    /// The schedule's name.
    pub schedule: String,
    /// When the tick is due.
    pub tick: DateTime<Utc>,
    /// The schedule's generation when the tick was armed.
    pub generation: u64,
}

/// What one tick did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It created (or found, on a repeat) this task.
    Created(TaskId),
    /// `overlap: skip` and the previous task was still pending or running.
    Skipped,
    /// It was handled more than `catch_up_s` after it was due.
    Missed,
}

impl Outcome {
    /// `created`, `skipped`, `missed` (the metric label).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Created(_) => "created",
            Self::Skipped => "skipped",
            Self::Missed => "missed",
        }
    }
}

impl Schedule {
    /// Records `passed` ticks, the last at `last`, as missed (a late tick stood in for them).
    pub fn record_passed(&mut self, passed: u64, last: Option<DateTime<Utc>>) {
        if passed > 0 {
            self.missed += passed;
            self.last_missed = last.or(self.last_missed);
        }
    }

    /// Records `outcome` for `tick` and arms `next`.
    pub fn record(&mut self, tick: DateTime<Utc>, outcome: &Outcome, next: Option<DateTime<Utc>>) {
        self.last_tick = Some(tick);
        self.next_fire_time = next;
        match outcome {
            Outcome::Created(id) => {
                self.created += 1;
                self.last_task_id = Some(id.clone());
            }
            Outcome::Skipped => {
                self.skipped += 1;
                self.last_skipped = Some(tick);
            }
            Outcome::Missed => {
                self.missed += 1;
                self.last_missed = Some(tick);
            }
        }
    }
}
