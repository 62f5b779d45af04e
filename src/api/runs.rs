//! What runs on workers, seen over HTTP: captured output (`/output`, the process tool's `log`),
//! stdin writes (`/input`, its `write`), and dead letters.

use super::auth::Principal;
use super::error::{ApiError, IdPath, JsonBody, Params};
use super::state::AppState;
use super::tasks::authorized_task;
use crate::bus::subjects;
use crate::domain::{Assignee, EventKind, Task, TaskStatus};
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// Query of `/output`.
#[derive(Debug, Deserialize)]
pub(super) struct OutputQuery {
    offset: Option<usize>,
    limit: Option<usize>,
}

/// Captured output lines of a task's current or last run.
#[derive(Debug, Serialize)]
pub(super) struct OutputPage {
    task_id: String,
    /// Index of the first returned line.
    offset: usize,
    /// The lines (stdout and stderr, in arrival order, without newlines).
    lines: Vec<String>,
    /// Lines captured so far.
    total_lines: usize,
    /// Bytes the worker dropped because output came faster than the per-interval cap.
    dropped_bytes: u64,
    /// Whether the task is still running (more may come).
    running: bool,
}

const DEFAULT_LINES: usize = 200;
const MAX_LINES: usize = 5000;

/// `GET /api/tasks/{id}/output?offset=&limit=`: line-based; without `offset`, the last `limit`.
pub(super) async fn output(
    State(state): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    Params(q): Params<OutputQuery>,
) -> Result<Json<OutputPage>, ApiError> {
    let task = authorized_task(&state, &who, &id).await?;
    let limit = q.limit.unwrap_or(DEFAULT_LINES);
    if limit == 0 || limit > MAX_LINES {
        return Err(ApiError::BadRequest(format!(
            "limit must be 1 to {MAX_LINES}"
        )));
    }
    let chunks = state
        .tasks
        .events(&task.id)
        .await?
        .into_iter()
        .filter(|e| e.kind == EventKind::Output && e.attempt == task.attempt)
        .map(|e| e.data);
    let (all, dropped) = assemble_lines(chunks);
    let offset = q
        .offset
        .unwrap_or(all.len().saturating_sub(limit))
        .min(all.len());
    let lines = all[offset..(offset + limit).min(all.len())]
        .iter()
        .map(|s| s.to_string())
        .collect();
    Ok(Json(OutputPage {
        task_id: task.id.to_string(),
        offset,
        lines,
        total_lines: all.len(),
        dropped_bytes: dropped,
        running: task.status == TaskStatus::Running,
    }))
}

/// Rebuilds output lines from `output` event chunks (`{stream, text, dropped_bytes}`), keeping
/// stdout and stderr lines apart. A chunk's `dropped_bytes` were cut *after* its text (output came
/// faster than the worker's cap): the line cut there is discarded, a
/// `[… N bytes of stdout dropped …]` line stands in its place, and the stream's next chunk is read
/// from its first whole line, so no line is shown that the command did not print.
fn assemble_lines(chunks: impl Iterator<Item = Value>) -> (Vec<String>, u64) {
    #[derive(Default)]
    struct StreamState {
        partial: String,
        resume_mid_line: bool,
    }
    let mut lines = Vec::new();
    let mut streams: std::collections::BTreeMap<String, StreamState> = Default::default();
    let mut dropped_total = 0;
    for c in chunks {
        let stream = c["stream"].as_str().unwrap_or("stdout").to_string();
        let mut text = c["text"].as_str().unwrap_or_default();
        let dropped = c["dropped_bytes"].as_u64().unwrap_or(0);
        let st = streams.entry(stream.clone()).or_default();
        if st.resume_mid_line {
            match text.split_once('\n') {
                Some((_, rest)) => {
                    text = rest;
                    st.resume_mid_line = false;
                }
                None => text = "",
            }
        }
        st.partial.push_str(text);
        while let Some(pos) = st.partial.find('\n') {
            let line: String = st.partial.drain(..=pos).collect();
            lines.push(line.trim_end_matches(['\n', '\r']).to_string());
        }
        if dropped > 0 {
            dropped_total += dropped;
            st.partial.clear();
            st.resume_mid_line = true;
            lines.push(format!("[… {dropped} bytes of {stream} dropped …]"));
        }
    }
    lines.extend(
        streams
            .into_values()
            .filter(|s| !s.partial.is_empty())
            .map(|s| s.partial),
    );
    (lines, dropped_total)
}

/// Body of `/input`.
#[derive(Debug, Deserialize, Serialize)]
pub(super) struct InputBody {
    #[serde(default)]
    data: String,
    #[serde(default)]
    eof: bool,
}

/// `POST /api/tasks/{id}/input`: `{"data": "y\n", "eof": false}` to the running process's stdin.
pub(super) async fn input(
    State(state): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    JsonBody(body): JsonBody<InputBody>,
) -> Result<Json<Value>, ApiError> {
    let task = authorized_task(&state, &who, &id).await?;
    if task.status != TaskStatus::Running {
        return Err(ApiError::Conflict {
            code: "not_running",
            message: format!(
                "task {} is {}, so it has no process to write to",
                task.id, task.status
            ),
        });
    }
    let subject = subjects::control(&task.assigned_to, &task.id, "input");
    let payload = serde_json::to_vec(&body).unwrap_or_default();
    let client = &state.tasks.bus().client;
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        client.request(subject, payload.into()),
    )
    .await;
    let reply = match reply {
        Ok(Ok(m)) => m,
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
            return Err(ApiError::Conflict {
                code: "not_running",
                message: "no worker holds this task's process".into(),
            })
        }
        Ok(Err(e)) => return Err(ApiError::Unavailable(e.into())),
        Err(_) => {
            return Err(ApiError::Unavailable(anyhow::anyhow!(
                "the worker did not answer"
            )))
        }
    };
    let answer: Value = serde_json::from_slice(&reply.payload).unwrap_or(Value::Null);
    match answer["error"].as_str() {
        Some(why) => Err(ApiError::Conflict {
            code: "not_running",
            message: why.to_string(),
        }),
        None => Ok(Json(answer)),
    }
}

/// Query of `/dead-letters`.
#[derive(Debug, Deserialize)]
pub(super) struct DeadQuery {
    assigned_to: Option<String>,
    limit: Option<usize>,
    /// A cursor from `X-Next-Cursor` (empty: from the start).
    after: Option<String>,
}

/// `GET /api/dead-letters?assigned_to=&limit=&after=`: tasks that used up their attempts, oldest
/// first. A full page that a dead letter follows carries the next page's cursor in
/// `X-Next-Cursor`; pass it as `after`.
pub(super) async fn dead_letters(
    State(state): State<AppState>,
    who: Principal,
    Params(q): Params<DeadQuery>,
) -> Result<(axum::http::HeaderMap, Json<Vec<Task>>), ApiError> {
    let assignee = q
        .assigned_to
        .filter(|s| !s.is_empty())
        .map(|s| Assignee::parse(&s).map_err(|e| ApiError::BadRequest(e.to_string())))
        .transpose()?;
    if let Some(a) = &assignee {
        who.check(a)?;
    }
    let after = match q.after.filter(|s| !s.is_empty()) {
        None => 0,
        Some(raw) => raw.parse::<u64>().map_err(|_| {
            ApiError::BadRequest(format!(
                "after must be a cursor from X-Next-Cursor, got {raw:?}"
            ))
        })?,
    };
    let limit = q
        .limit
        .unwrap_or(state.limits.default_page)
        .clamp(1, state.limits.max_page);
    let visible = who.visible();
    let (tasks, next) = state
        .tasks
        .dead_letters_page(assignee.as_ref(), after, limit)
        .await?;
    let mut headers = axum::http::HeaderMap::new();
    if let Some(next) = next {
        headers.insert("x-next-cursor", next.into());
    }
    let tasks = tasks
        .into_iter()
        .filter(|t| visible.as_ref().is_none_or(|v| v.contains(&t.assigned_to)))
        .collect();
    Ok((headers, Json(tasks)))
}

#[cfg(test)]
mod tests {
    use super::assemble_lines;
    use serde_json::json;

    #[test]
    fn lines_are_rebuilt_per_stream_and_drops_never_glue_partial_lines() {
        let chunks = vec![
            json!({"stream": "stdout", "text": "a\nb\n12", "dropped_bytes": 0}),
            json!({"stream": "stderr", "text": "warn\n", "dropped_bytes": 0}),
            json!({"stream": "stdout", "text": "74\nc\nlin", "dropped_bytes": 500}),
            json!({"stream": "stdout", "text": "e-77\nd\ne", "dropped_bytes": 0}),
        ];
        let (lines, dropped) = assemble_lines(chunks.into_iter());
        assert_eq!(
            lines,
            [
                "a",
                "b",
                "warn",
                "1274",
                "c",
                "[… 500 bytes of stdout dropped …]",
                "d",
                "e"
            ]
        );
        assert_eq!(dropped, 500);
    }
}
