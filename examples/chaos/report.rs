//! What a scenario found: the three figures every scenario prints (lost, duplicates, recovery
//! time), the tasks in flight at the faults, other figures, and the faults themselves.

use serde_json::{json, Value};
use std::time::Duration;

/// The result of one scenario.
#[derive(Debug, Default)]
pub struct Outcome {
    /// `1`…`6` (with a letter for parts).
    pub id: String,
    /// What it does, in a few words.
    pub title: String,
    /// Tasks (or events) that should exist and do not, or never finished.
    pub lost: usize,
    /// At-least-once repeats (a command run again, an event delivered again).
    pub duplicates: usize,
    /// What was in flight at the fault(s), in words (`8 + 7 at the two kills`).
    pub in_flight: String,
    /// Named recovery times.
    pub recovery: Vec<(String, Duration)>,
    /// Other figures, in order.
    pub figures: Vec<(String, String)>,
    /// Faults found: each one a lost task, a 5xx, a stuck queue, a duplicate out of bounds…
    pub faults: Vec<String>,
    /// How long the scenario took.
    pub secs: f64,
}

impl Outcome {
    /// An empty outcome for scenario `id`.
    pub fn new(id: &str, title: &str) -> Self {
        Self {
            id: id.into(),
            title: title.into(),
            ..Self::default()
        }
    }

    /// Adds a figure.
    pub fn figure(&mut self, name: &str, value: impl ToString) {
        self.figures.push((name.into(), value.to_string()));
    }

    /// Adds a recovery time.
    pub fn recovered(&mut self, what: &str, took: Duration) {
        self.recovery.push((what.into(), took));
    }

    /// Records a fault (and prints it at once).
    pub fn fault(&mut self, what: String) {
        eprintln!("    FAULT: {what}");
        self.faults.push(what);
    }

    /// Passed: nothing lost and no fault.
    pub fn passed(&self) -> bool {
        self.lost == 0 && self.faults.is_empty()
    }

    /// The block printed for this scenario.
    pub fn print(&self) {
        let verdict = if self.passed() { "PASSED" } else { "FAILED" };
        println!(
            "== [{}] {}: {verdict} in {:.1} s",
            self.id, self.title, self.secs
        );
        println!("   lost:          {}", self.lost);
        let within = if self.in_flight.is_empty() {
            String::new()
        } else {
            format!(" (in flight at the fault: {})", self.in_flight)
        };
        println!("   duplicates:    {}{within}", self.duplicates);
        if self.recovery.is_empty() {
            println!("   recovery time: —");
        }
        for (what, took) in &self.recovery {
            println!("   recovery time: {:.2} s  {what}", took.as_secs_f64());
        }
        for (name, value) in &self.figures {
            println!("   {name}: {value}");
        }
        for f in &self.faults {
            println!("   FAULT: {f}");
        }
    }

    /// The outcome as JSON (the suite's last stdout line holds all of them).
    pub fn json(&self) -> Value {
        let recovery: Vec<Value> = self
            .recovery
            .iter()
            .map(|(w, d)| json!({"what": w, "secs": d.as_secs_f64()}))
            .collect();
        let figures: serde_json::Map<String, Value> = self
            .figures
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        json!({
            "id": self.id, "title": self.title, "passed": self.passed(), "lost": self.lost,
            "duplicates": self.duplicates, "in_flight": self.in_flight, "recovery": recovery,
            "figures": figures, "faults": self.faults, "secs": self.secs,
        })
    }
}
