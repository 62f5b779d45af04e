//! A fired tick: create its task once (or skip it, or record it missed), record that, and arm
//! the next tick. Also re-arming a schedule whose tick is gone (start-up and every audit).

use super::model::{Outcome, Overlap, Schedule, Tick};
use super::{store, ScheduleError, ScheduleService, MAX_TRIES};
use crate::domain::cron::tick_task_id;
use crate::metrics::ScheduleLabels;
use crate::tasks::TaskError;
use chrono::{DateTime, Utc};

impl ScheduleService {
    /// Handles one fired tick. A tick of a deleted or paused schedule, of an older generation
    /// (the schedule changed since it was armed) or one handled already is dropped (`None`).
    /// Otherwise its task is created with the id derived from the schedule and the tick, so a
    /// redelivery, another replica or a restart finds that task instead of creating a second.
    pub async fn fire(&self, tick: &Tick) -> Result<Option<Outcome>, ScheduleError> {
        for _ in 0..MAX_TRIES {
            let Some((s, rev)) = store::load(self.bus(), &tick.schedule).await? else {
                return Ok(None);
            };
            let handled = s.last_tick.is_some_and(|last| last >= tick.tick);
            if s.paused || s.generation != tick.generation || handled {
                return Ok(None);
            }
            let now = Utc::now();
            let outcome = self.outcome(&s, tick.tick, now).await?;
            let next = s.spec()?.next_after(tick.tick.max(now));
            let mut updated = s.clone();
            updated.record(tick.tick, &outcome, next);
            if store::update(self.bus(), &updated, rev).await?.is_some() {
                self.count(&s.name, &outcome, tick.tick, now);
                self.after_write(updated).await?;
                return Ok(Some(outcome));
            }
        }
        Err(ScheduleError::Contended(tick.schedule.clone()))
    }

    /// What `tick` of `s` does at `now`: missed when too late, skipped while the previous
    /// task is still pending or running (`overlap: skip`), else its task is created.
    async fn outcome(
        &self,
        s: &Schedule,
        tick: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Outcome, ScheduleError> {
        if now - tick > self.catch_up {
            return Ok(Outcome::Missed);
        }
        if let (Overlap::Skip, Some(previous)) = (s.overlap, &s.last_task_id) {
            match self.tasks.get(previous).await {
                Ok(t) if !t.status.is_terminal() => return Ok(Outcome::Skipped),
                Ok(_) | Err(TaskError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let id = tick_task_id(&s.name, tick);
        let operator = format!("schedule:{}", s.name);
        let created = self
            .tasks
            .create_with_id(id, s.task.clone(), &operator)
            .await?;
        Ok(Outcome::Created(created.task.id))
    }

    fn count(&self, name: &str, outcome: &Outcome, tick: DateTime<Utc>, now: DateTime<Utc>) {
        let metrics = self.tasks.metrics();
        let labels = ScheduleLabels {
            schedule: name.to_string(),
            outcome: outcome.label().to_string(),
        };
        metrics.schedule_ticks.get_or_create(&labels).inc();
        let lag = (now - tick).num_milliseconds().max(0) as f64 / 1000.0;
        metrics.schedule_lag.observe(lag);
        tracing::info!(
            schedule = name,
            tick = %store::tick_text(tick),
            outcome = outcome.label(),
            lag_s = lag,
            "schedule tick"
        );
    }

    /// Makes sure `name` has its tick armed: when the broker holds none of the current
    /// generation (it fired while every API was down and was lost, or a concurrent change
    /// replaced it), a due tick is handled now (created once when less than `catch_up_s` old,
    /// else recorded missed, and the next one armed), a future one armed again.
    pub async fn rearm(&self, name: &str) -> Result<(), ScheduleError> {
        let Some((s, _)) = store::load(self.bus(), name).await? else {
            return Ok(());
        };
        if s.paused {
            return Ok(());
        }
        let armed = store::armed(self.bus(), name).await?;
        if armed.is_some_and(|t| t.generation == s.generation) {
            return Ok(());
        }
        let now = Utc::now();
        let due = match s.next_fire_time {
            Some(due) => due,
            None => match s.spec()?.next_after(now) {
                Some(t) => t,
                None => return Ok(()),
            },
        };
        if due <= now {
            let tick = Tick {
                schedule: s.name.clone(),
                tick: due,
                generation: s.generation,
            };
            self.fire(&tick).await?;
            return Ok(());
        }
        store::arm(self.bus(), &s, due).await
    }

    /// Re-arms every schedule that needs it (see [`rearm`](Self::rearm)); problems are logged.
    pub async fn audit(&self) {
        let all = match store::list(self.bus()).await {
            Ok(all) => all,
            Err(e) => {
                tracing::warn!(error.message = %e, "cannot list schedules to check their ticks");
                return;
            }
        };
        for s in all.iter().filter(|s| !s.paused) {
            if let Err(e) = self.rearm(&s.name).await {
                tracing::warn!(schedule = %s.name, error.message = %e, "cannot re-arm schedule");
            }
        }
    }
}
