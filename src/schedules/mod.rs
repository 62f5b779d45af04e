//! Cron schedules: definitions and state in the KV bucket `taskfleet_schedules`, each active
//! schedule's next tick held by the broker (a message schedule on `schedules.<name>.next`), and
//! the API replicas' shared consumer of fired ticks, which creates each tick's task once.
//!
//! - what a schedule is, its checks and its record in `model.rs`;
//! - the bucket (compare-and-set writes) and the armed tick in `store.rs`;
//! - create, change, pause, resume, delete, trigger and the config's `[[schedules]]` here;
//! - a fired tick (create, skip or miss; arm the next) and re-arming in `fire.rs`;
//! - the scheduler loop every API process runs in `runner.rs`.
//!
//! Tick times come from [`crate::domain::cron`]; see docs/design.md "Cron schedules".

mod fire;
mod model;
mod runner;
mod store;

pub use model::{
    valid_name, Definition, Outcome, Overlap, Schedule, ScheduleSpec, ScheduleView, Tick,
};
pub use store::tick_text;

use crate::bus::{Bus, BusError};
use crate::tasks::{Created, TaskError, TaskService};
use chrono::{DateTime, Utc};

/// Why a schedule operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// A field of the definition is not acceptable; `field` names it.
    #[error("{field}: {message}")]
    Invalid {
        /// The field, e.g. `cron`, `timezone`, `task`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// No schedule with this name.
    #[error("schedule {0} not found")]
    NotFound(String),
    /// `POST` of a name that exists.
    #[error("schedule {0} exists already (change it with PUT /api/schedules/{0})")]
    Exists(String),
    /// Too many concurrent writers; the caller may retry.
    #[error("schedule {0} is being changed by many callers at once; try again")]
    Contended(String),
    /// Creating a tick's task failed.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// NATS failed.
    #[error(transparent)]
    Bus(#[from] BusError),
}

impl ScheduleError {
    /// Whether trying again later may succeed (NATS trouble, contention).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Bus(_) | Self::Contended(_) | Self::Task(TaskError::Bus(_))
        )
    }
}

/// Compare-and-set attempts before a write gives up as contended.
const MAX_TRIES: usize = 8;

/// Schedule operations over the fleet's NATS topology. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ScheduleService {
    tasks: TaskService,
    catch_up: chrono::TimeDelta,
}

/// How a definition is stored: as a new name, over an existing one, or either (the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Create,
    Replace,
    Upsert,
}

impl ScheduleService {
    /// A service creating tasks through `tasks`; a tick handled more than `catch_up_s` after
    /// it was due is recorded as missed instead.
    pub fn new(tasks: TaskService, catch_up_s: u64) -> Self {
        let catch_up = chrono::TimeDelta::seconds(i64::try_from(catch_up_s).unwrap_or(i64::MAX));
        Self { tasks, catch_up }
    }

    fn bus(&self) -> &Bus {
        self.tasks.bus()
    }

    /// Stores a new schedule and arms its first tick; `Exists` when the name is taken.
    pub async fn create(&self, spec: &ScheduleSpec) -> Result<ScheduleView, ScheduleError> {
        let def = spec.check()?;
        let s = self.define(&def, Mode::Create).await?;
        self.view(s).await
    }

    /// Replaces the definition of `name` (a new generation; counters kept) and re-arms it.
    /// A body naming another schedule is refused.
    pub async fn replace(
        &self,
        name: &str,
        spec: &ScheduleSpec,
    ) -> Result<ScheduleView, ScheduleError> {
        if !spec.name.is_empty() && spec.name != name {
            return Err(ScheduleError::Invalid {
                field: "name".into(),
                message: format!("the body names {:?}, the path {name:?}", spec.name),
            });
        }
        let def = ScheduleSpec {
            name: name.to_string(),
            ..spec.clone()
        }
        .check()?;
        let s = self.define(&def, Mode::Replace).await?;
        self.view(s).await
    }

    /// Stores each `[[schedules]]` entry of the config, idempotently: an unchanged definition
    /// is left as it is (only its tick is made sure of), a changed one replaced.
    pub async fn apply_config(&self, specs: &[ScheduleSpec]) -> Result<(), ScheduleError> {
        for spec in specs {
            let def = spec.check()?;
            self.define(&def, Mode::Upsert).await?;
            tracing::info!(schedule = %def.name, "schedule from the config applied");
        }
        Ok(())
    }

    /// Stores `def` as `mode` says, then arms (or, paused, disarms) its tick.
    async fn define(&self, def: &Definition, mode: Mode) -> Result<Schedule, ScheduleError> {
        for _ in 0..MAX_TRIES {
            let now = Utc::now();
            let next = |s: &mut Schedule| {
                s.next_fire_time = (!s.paused).then(|| def.cron.next_after(now)).flatten();
            };
            match store::load(self.bus(), &def.name).await? {
                None if mode == Mode::Replace => {
                    return Err(ScheduleError::NotFound(def.name.clone()))
                }
                None => {
                    let mut s = Schedule::new(def, now);
                    next(&mut s);
                    match store::create(self.bus(), &s).await {
                        Ok(_) => return self.after_write(s).await,
                        Err(ScheduleError::Exists(_)) if mode == Mode::Upsert => continue,
                        Err(e) => return Err(e),
                    }
                }
                Some(_) if mode == Mode::Create => {
                    return Err(ScheduleError::Exists(def.name.clone()))
                }
                Some((s, _)) if s.same_definition(def) => {
                    self.rearm(&s.name).await?;
                    return Ok(s);
                }
                Some((mut s, rev)) => {
                    s.redefine(def, now);
                    next(&mut s);
                    if store::update(self.bus(), &s, rev).await?.is_some() {
                        return self.after_write(s).await;
                    }
                }
            }
        }
        Err(ScheduleError::Contended(def.name.clone()))
    }

    /// After `s` was stored: arms its next tick (or removes it when paused or none), then makes
    /// sure a concurrent change that armed its own tick first was not replaced by this one.
    async fn after_write(&self, s: Schedule) -> Result<Schedule, ScheduleError> {
        self.arm_as_stored(&s).await?;
        if let Some((current, _)) = store::load(self.bus(), &s.name).await? {
            if current.generation != s.generation {
                self.arm_as_stored(&current).await?;
            }
        }
        Ok(s)
    }

    async fn arm_as_stored(&self, s: &Schedule) -> Result<(), ScheduleError> {
        match s.next_fire_time.filter(|_| !s.paused) {
            Some(tick) => store::arm(self.bus(), s, tick).await,
            None => store::disarm(self.bus(), &s.name).await,
        }
    }

    /// Changes `name`'s record with `change` (which says whether it changed anything), by
    /// compare-and-set; `None` when there was nothing to change.
    async fn modify(
        &self,
        name: &str,
        change: impl Fn(&mut Schedule, DateTime<Utc>) -> Result<bool, ScheduleError>,
    ) -> Result<(Schedule, bool), ScheduleError> {
        for _ in 0..MAX_TRIES {
            let Some((mut s, rev)) = store::load(self.bus(), name).await? else {
                return Err(ScheduleError::NotFound(name.to_string()));
            };
            if !change(&mut s, Utc::now())? {
                return Ok((s, false));
            }
            if store::update(self.bus(), &s, rev).await?.is_some() {
                return Ok((s, true));
            }
        }
        Err(ScheduleError::Contended(name.to_string()))
    }

    /// Pauses `name`: no ticks until resumed (its armed tick is removed).
    pub async fn pause(&self, name: &str) -> Result<ScheduleView, ScheduleError> {
        let (s, _) = self
            .modify(name, |s, now| {
                if s.paused {
                    return Ok(false);
                }
                s.paused = true;
                s.next_fire_time = None;
                s.updated_time = now;
                Ok(true)
            })
            .await?;
        store::disarm(self.bus(), name).await?;
        self.view(s).await
    }

    /// Resumes `name` (a new generation): its next tick after now is armed.
    pub async fn resume(&self, name: &str) -> Result<ScheduleView, ScheduleError> {
        let (s, changed) = self
            .modify(name, |s, now| {
                if !s.paused {
                    return Ok(false);
                }
                s.paused = false;
                s.generation += 1;
                s.updated_time = now;
                s.next_fire_time = s.spec()?.next_after(now);
                Ok(true)
            })
            .await?;
        let s = if changed {
            self.after_write(s).await?
        } else {
            self.rearm(name).await?;
            s
        };
        self.view(s).await
    }

    /// Deletes `name` and its armed tick; answers the schedule as it was.
    pub async fn delete(&self, name: &str) -> Result<ScheduleView, ScheduleError> {
        let Some((s, _)) = store::load(self.bus(), name).await? else {
            return Err(ScheduleError::NotFound(name.to_string()));
        };
        store::delete(self.bus(), name).await?;
        store::disarm(self.bus(), name).await?;
        self.view(s).await
    }

    /// Creates `name`'s task now, with an id derived from the schedule and this second (a
    /// second trigger within the same second finds that task: `created` false). It becomes the
    /// schedule's last task (what `overlap: skip` looks at); the ticks do not move.
    pub async fn trigger(&self, name: &str, operator: &str) -> Result<Created, ScheduleError> {
        let Some((s, _)) = store::load(self.bus(), name).await? else {
            return Err(ScheduleError::NotFound(name.to_string()));
        };
        // Apart from the ticks' ids: a trigger in a tick's second is a task of its own.
        let id = crate::domain::cron::tick_task_id(&format!("{name}-manual"), Utc::now());
        let created = self.tasks.create_with_id(id, s.task, operator).await?;
        for _ in 0..MAX_TRIES {
            let Some((mut s, rev)) = store::load(self.bus(), name).await? else {
                break;
            };
            s.last_task_id = Some(created.task.id.clone());
            if store::update(self.bus(), &s, rev).await?.is_some() {
                break;
            }
        }
        Ok(created)
    }

    /// One schedule, with its last task's status.
    pub async fn get(&self, name: &str) -> Result<ScheduleView, ScheduleError> {
        match store::load(self.bus(), name).await? {
            Some((s, _)) => self.view(s).await,
            None => Err(ScheduleError::NotFound(name.to_string())),
        }
    }

    /// Every schedule, by name.
    pub async fn list(&self) -> Result<Vec<ScheduleView>, ScheduleError> {
        let mut out = Vec::new();
        for s in store::list(self.bus()).await? {
            out.push(self.view(s).await?);
        }
        Ok(out)
    }

    async fn view(&self, schedule: Schedule) -> Result<ScheduleView, ScheduleError> {
        let last_task_status = match &schedule.last_task_id {
            None => None,
            Some(id) => match self.tasks.get(id).await {
                Ok(t) => Some(t.status),
                Err(TaskError::NotFound(_)) => None,
                Err(e) => return Err(e.into()),
            },
        };
        Ok(ScheduleView {
            schedule,
            last_task_status,
        })
    }
}
