//! A fired tick: create its task once (or skip it, or record it missed), record that, and arm
//! the next tick. Also re-arming a schedule whose tick is gone (start-up and every audit).

use super::model::{Outcome, Overlap, Schedule, Tick};
use super::{store, ScheduleError, ScheduleService, MAX_TRIES};
use crate::domain::cron::tick_task_id;
use crate::metrics::ScheduleLabels;
use crate::tasks::TaskError;
use chrono::{DateTime, Utc};

/// Most ticks a late tick is checked against (a 1 s schedule down for a day has 86,400).
const MAX_PASSED: u64 = 100_000;

/// A tick handled late stands for every tick due since: the latest of them (at or before
/// `now`) is the one handled, the ones in between were missed. A fleet that was down creates
/// one task for the outage (the latest tick, if younger than `catch_up_s`), never a burst.
/// Returns the tick to handle, how many earlier ticks it passed over, and the last of those.
fn latest_due(
    spec: &crate::domain::CronSpec,
    tick: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (DateTime<Utc>, u64, Option<DateTime<Utc>>) {
    let (mut due, mut passed, mut last_passed) = (tick, 0, None);
    while let Some(n) = spec.next_after(due).filter(|n| *n <= now) {
        if passed == MAX_PASSED {
            let span = (now - due).to_std().unwrap_or_default();
            let latest = spec.last_at_or_before(now, span).unwrap_or(due);
            return (latest, passed, Some(due));
        }
        last_passed = Some(due);
        due = n;
        passed += 1;
    }
    (due, passed, last_passed)
}

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
            let spec = s.spec()?;
            let (due, passed, last_passed) = latest_due(&spec, tick.tick, now);
            let outcome = self.outcome(&s, due, now).await?;
            let next = spec.next_after(due.max(now));
            let mut updated = s.clone();
            updated.record_passed(passed, last_passed);
            updated.record(due, &outcome, next);
            if store::update(self.bus(), &updated, rev).await?.is_some() {
                self.count_passed(&s.name, passed);
                self.count(&s.name, &outcome, due, now);
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

    /// Counts ticks a late tick stood in for as missed.
    fn count_passed(&self, name: &str, passed: u64) {
        if passed > 0 {
            let labels = ScheduleLabels {
                schedule: name.to_string(),
                outcome: Outcome::Missed.label().to_string(),
            };
            let metrics = self.tasks.metrics();
            metrics.schedule_ticks.get_or_create(&labels).inc_by(passed);
            tracing::info!(
                schedule = name,
                passed,
                "schedule ticks missed while no API handled them"
            );
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::CronSpec;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn a_late_tick_stands_for_the_latest_due_tick_and_counts_the_ones_between_as_passed() {
        let every_minute = CronSpec::parse("* * * * *", "UTC").unwrap();
        let (due, passed, last) = latest_due(
            &every_minute,
            at("2026-12-02T10:00:00Z"),
            at("2026-12-02T10:05:30Z"),
        );
        assert_eq!(due, at("2026-12-02T10:05:00Z"));
        assert_eq!(passed, 5);
        assert_eq!(last, Some(at("2026-12-02T10:04:00Z")));
    }

    #[test]
    fn a_tick_on_time_passes_over_nothing() {
        let daily = CronSpec::parse("0 9 * * *", "Europe/Berlin").unwrap();
        let tick = at("2026-12-02T08:00:00Z");
        assert_eq!(
            latest_due(&daily, tick, at("2026-12-02T08:00:01Z")),
            (tick, 0, None)
        );
    }
}
