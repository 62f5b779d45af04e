//! The pulse spool: calls that could not reach the API are kept, in order, in a small local file
//! and sent on the next pulse call (or by a background retry within a minute). Each call carries
//! an idempotency key, so a call that did reach the API before the connection broke is applied
//! once. A `start` made offline gets a placeholder id (`spool-…`) that later calls may use; the
//! placeholder is mapped to the real id when the create is replayed.

use crate::client::ApiClient;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;

/// One call waiting to be sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct SpooledCall {
    /// HTTP method.
    pub(super) method: String,
    /// Path, possibly with a placeholder id.
    pub(super) path: String,
    /// JSON body.
    pub(super) body: Option<Value>,
    /// Sent as `Idempotency-Key`.
    pub(super) idempotency_key: String,
    /// For creates made offline: the placeholder id the created task stands in for.
    #[serde(default)]
    pub(super) placeholder: Option<String>,
}

/// Why a call did not go through.
#[derive(Debug)]
pub(super) enum CallError {
    /// The API could not be reached (spool it).
    Unreachable(String),
    /// The API refused it (status, message).
    Refused(u16, String),
}

/// Sends one call; `Ok` carries the JSON answer.
pub(super) async fn send(client: &ApiClient, call: &SpooledCall) -> Result<Value, CallError> {
    let method = Method::from_bytes(call.method.as_bytes()).unwrap_or(Method::POST);
    let mut req = client
        .request(method, &call.path)
        .header("Idempotency-Key", &call.idempotency_key)
        .timeout(std::time::Duration::from_secs(10));
    if let Some(b) = &call.body {
        req = req.json(b);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| CallError::Unreachable(crate::client::root_cause(&e)))?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        Ok(body)
    } else {
        let msg = body["error"]["message"]
            .as_str()
            .unwrap_or("request refused")
            .to_string();
        Err(CallError::Refused(status.as_u16(), msg))
    }
}

/// The spool file and the placeholder map beside it.
#[derive(Debug, Clone)]
pub(super) struct Spool {
    dir: PathBuf,
}

impl Spool {
    /// `$TASKFLEET_STATE_DIR`, else `~/.taskfleet`.
    pub(super) fn open() -> Self {
        let dir = std::env::var_os("TASKFLEET_STATE_DIR")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".taskfleet")))
            .unwrap_or_else(|| std::env::temp_dir().join("taskfleet"));
        Self { dir }
    }

    /// Where spooled calls live.
    pub(super) fn path(&self) -> PathBuf {
        self.dir.join("spool.jsonl")
    }

    fn lock(&self) -> std::io::Result<File> {
        std::fs::create_dir_all(&self.dir)?;
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("spool.lock"))?;
        f.lock()?;
        Ok(f)
    }

    /// Appends a call.
    pub(super) fn push(&self, call: &SpooledCall) -> std::io::Result<()> {
        let _lock = self.lock()?;
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path())?;
        writeln!(f, "{}", serde_json::to_string(call)?)
    }

    /// Whether calls are waiting.
    pub(super) fn is_empty(&self) -> bool {
        std::fs::metadata(self.path()).map_or(true, |m| m.len() == 0)
    }

    fn ids_path(&self) -> PathBuf {
        self.dir.join("spool-ids.json")
    }

    /// Placeholder → real task id, for ids handed out while offline.
    pub(super) fn ids(&self) -> BTreeMap<String, String> {
        std::fs::read_to_string(self.ids_path())
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default()
    }

    /// The real id of `id` if it is a replayed placeholder, else `id`.
    pub(super) fn resolve(&self, id: &str) -> String {
        self.ids()
            .get(id)
            .cloned()
            .unwrap_or_else(|| id.to_string())
    }

    /// Sends every waiting call in order. Stops at the first unreachable one (keeping it and the
    /// rest); drops calls the API refuses, with a note. Returns how many were sent.
    pub(super) async fn replay(&self, client: &ApiClient) -> Result<usize, String> {
        if self.is_empty() {
            return Ok(0);
        }
        let _lock = self.lock().map_err(|e| e.to_string())?;
        let calls: Vec<SpooledCall> = File::open(self.path())
            .map(|f| {
                BufReader::new(f)
                    .lines()
                    .map_while(Result::ok)
                    .filter_map(|l| serde_json::from_str(&l).ok())
                    .collect()
            })
            .unwrap_or_default();
        let mut ids = self.ids();
        let mut sent = 0;
        for (i, call) in calls.iter().enumerate() {
            let mut call = call.clone();
            for (placeholder, real) in &ids {
                call.path = call.path.replace(placeholder.as_str(), real);
            }
            match send(client, &call).await {
                Ok(answer) => {
                    sent += 1;
                    if let (Some(p), Some(id)) = (&call.placeholder, answer["id"].as_str()) {
                        ids.insert(p.clone(), id.to_string());
                    }
                }
                Err(CallError::Refused(status, msg)) => {
                    eprintln!("taskfleet pulse: a queued call was refused (HTTP {status}: {msg}); dropped it");
                }
                Err(CallError::Unreachable(e)) => {
                    self.save_ids(&ids);
                    self.rewrite(&calls[i..])?;
                    return Err(e);
                }
            }
        }
        self.save_ids(&ids);
        let _ = std::fs::remove_file(self.path());
        Ok(sent)
    }

    fn save_ids(&self, ids: &BTreeMap<String, String>) {
        if let Ok(text) = serde_json::to_string(ids) {
            let _ = std::fs::write(self.ids_path(), text);
        }
    }

    fn rewrite(&self, rest: &[SpooledCall]) -> Result<(), String> {
        let tmp = self.dir.join("spool.jsonl.tmp");
        let mut text = String::new();
        for c in rest {
            text.push_str(&serde_json::to_string(c).map_err(|e| e.to_string())?);
            text.push('\n');
        }
        std::fs::write(&tmp, text).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, self.path()).map_err(|e| e.to_string())
    }

    /// The last task this session started (a convenience pointer; the task itself lives in the
    /// fleet).
    pub(super) fn last_task(&self, session: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.join(format!("last-{}", file_safe(session))))
            .ok()
            .map(|s| self.resolve(s.trim()))
    }

    /// Remembers the last task this session started.
    pub(super) fn set_last_task(&self, session: &str, id: &str) {
        let _ = std::fs::create_dir_all(&self.dir);
        let _ = std::fs::write(self.dir.join(format!("last-{}", file_safe(session))), id);
    }
}

fn file_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
