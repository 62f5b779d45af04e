//! Junk on every HTTP route: malformed and wrongly typed bodies, bodies at and over the 1 MiB
//! limit, bad path parameters, bad query parameters, header values that are not UTF-8, wrong
//! methods. Every answer must be a 4xx (or a 2xx where the junk happens to be acceptable), never
//! a 5xx and never no answer.

use super::fleet::Http;
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// The API's default body limit (`api.body_limit`).
const BODY_LIMIT: usize = 1024 * 1024;

/// One junk request.
struct Case {
    name: String,
    method: Method,
    path: String,
    body: Option<Vec<u8>>,
    headers: Vec<(&'static str, Vec<u8>)>,
}

impl Case {
    fn new(name: impl Into<String>, method: Method, path: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            method,
            path: path.into(),
            body: None,
            headers: Vec::new(),
        }
    }

    fn body(mut self, body: Vec<u8>) -> Self {
        self.body = Some(body);
        self
    }

    fn header(mut self, name: &'static str, value: &[u8]) -> Self {
        self.headers.push((name, value.to_vec()));
        self
    }
}

/// What the junk requests got: answers by status (0 = no answer) and the cases that got a 5xx
/// or no answer.
#[derive(Debug, Default)]
pub struct HttpJunk {
    /// Requests sent.
    pub sent: usize,
    /// Answers by status.
    pub statuses: BTreeMap<u16, usize>,
    /// `METHOD path [case] → status body` of every 5xx or missing answer.
    pub failures: Vec<String>,
    /// Requests that got no answer at first and were sent once more (with the second answer).
    pub retried: Vec<String>,
}

/// Sends every junk request; `task` is a real task of `assignee` for the body cases.
pub async fn run(http: &Http, assignee: &str, task: &str) -> HttpJunk {
    let http = http.unpooled();
    let mut cases = body_cases(task);
    cases.extend(typed_cases(assignee, task));
    cases.extend(path_cases());
    cases.extend(query_cases(task));
    cases.extend(header_cases(assignee, task));
    let mut out = HttpJunk::default();
    for c in cases {
        let (mut status, mut body) = send(&http, &c).await;
        if status == 0 {
            // Sent again once, so a lost connection is told apart from a request that hangs.
            let (again, b) = send(&http, &c).await;
            out.retried.push(format!(
                "{} {} [{}] → no answer within 10 s, then {again}",
                c.method,
                short(&c.path),
                c.name
            ));
            (status, body) = (again, b);
        }
        out.sent += 1;
        *out.statuses.entry(status).or_default() += 1;
        if status == 0 || status >= 500 {
            let body: String = body.to_string().chars().take(200).collect();
            out.failures.push(format!(
                "{} {} [{}] → {status} {body}",
                c.method,
                short(&c.path),
                c.name
            ));
        }
    }
    out
}

/// Sends one junk request: its status (0 for no answer within 10 s) and body.
async fn send(http: &Http, c: &Case) -> (u16, Value) {
    let keyed = c
        .headers
        .iter()
        .any(|(k, _)| *k == "x-bot-key" || *k == "authorization");
    let mut r = if keyed {
        http.bare(c.method.clone(), &c.path)
    } else {
        http.req(c.method.clone(), &c.path)
    };
    if let Some(b) = c.body.clone() {
        r = r.header("content-type", "application/json").body(b);
    }
    for (k, v) in &c.headers {
        r = r.header(
            *k,
            reqwest::header::HeaderValue::from_bytes(v).expect("header bytes"),
        );
    }
    let r = r.timeout(Duration::from_secs(10));
    http.call(r).await.unwrap_or((0, Value::Null))
}

/// A path cut to 90 characters for messages.
fn short(path: &str) -> String {
    if path.len() > 90 {
        format!("{}…", &path[..90])
    } else {
        path.to_string()
    }
}

/// Bodies that are junk for any route.
fn junk_bodies() -> Vec<(&'static str, Vec<u8>)> {
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let near = json!({"x": "a".repeat(BODY_LIMIT - 100)}).to_string();
    vec![
        ("malformed", b"{\"a\": ".to_vec()),
        ("array", b"[]".to_vec()),
        ("array-of-object", b"[{}]".to_vec()),
        ("string", b"\"x\"".to_vec()),
        ("number", b"7".to_vec()),
        ("not-utf8", b"{\"x\": \"\xff\xfe\"}".to_vec()),
        ("nested-5000", deep.into_bytes()),
        ("near-limit", near.into_bytes()),
        ("over-limit", vec![b'x'; BODY_LIMIT + 1]),
    ]
}

/// Every body-taking route with every junk body.
fn body_cases(task: &str) -> Vec<Case> {
    let t = format!("/api/tasks/{task}");
    let routes = [
        (Method::POST, "/api/tasks".to_string()),
        (Method::PUT, format!("{t}/start")),
        (Method::PUT, format!("{t}/complete")),
        (Method::PUT, format!("{t}/fail")),
        (Method::PUT, format!("{t}/cancel")),
        (Method::PUT, format!("{t}/retry")),
        (Method::PUT, format!("{t}/step")),
        (Method::POST, format!("{t}/next")),
        (Method::PUT, format!("{t}/heartbeat")),
        (Method::PUT, format!("{t}/progress")),
        (Method::POST, format!("{t}/input")),
        (Method::POST, "/api/push".to_string()),
        (Method::POST, "/api/tasks/cleanup".to_string()),
        (Method::POST, "/api/destinations/hook/replay".to_string()),
        (Method::POST, "/api/deliveries/nope/replay".to_string()),
    ];
    let mut out = Vec::new();
    for (m, path) in routes {
        for (name, body) in junk_bodies() {
            out.push(Case::new(name, m.clone(), path.clone()).body(body));
        }
    }
    out
}

/// Create bodies that are well-formed JSON with wrong types or values.
fn create_typed(a: &str) -> Vec<Value> {
    vec![
        json!({"task_name": 1, "assigned_to": a}),
        json!({"task_name": "x", "assigned_to": "Not Valid!"}),
        json!({"task_name": "x", "assigned_to": a, "priority": "P9"}),
        json!({"task_name": "x", "assigned_to": a, "priority": 1}),
        json!({"task_name": "x", "assigned_to": a, "kind": "exec", "payload": {"command": 5}}),
        json!({"task_name": "x", "assigned_to": a, "kind": "warp"}),
        json!({"task_name": "x", "assigned_to": a, "timeout_s": -1}),
        json!({"task_name": "x", "assigned_to": a, "max_attempts": 1e300}),
        json!({"task_name": "x", "assigned_to": a, "steps": "a"}),
        json!({"task_name": "x", "assigned_to": a, "notify": {}}),
        json!({"task_name": "x", "assigned_to": a, "payload": [1]}),
        json!({"task_name": " ", "assigned_to": a}),
        json!({"task_name": "x".repeat(600), "assigned_to": a}),
        json!({"task_name": "x", "assigned_to": a, "idempotency_key": ""}),
        json!({"task_name": "x", "assigned_to": a, "id": "../../etc"}),
        json!({"assigned_to": a}),
        json!({}),
    ]
}

/// Well-formed JSON with wrong types or values, per route.
fn typed_cases(a: &str, task: &str) -> Vec<Case> {
    let t = format!("/api/tasks/{task}");
    let mut out: Vec<Case> = create_typed(a)
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let body = b.to_string().into_bytes();
            Case::new(format!("create-typed-{i}"), Method::POST, "/api/tasks").body(body)
        })
        .collect();
    let actions = [
        ("complete", json!({"fencing_token": 5})),
        ("complete", json!({"fencing_token": "0.bogus", "result": 1})),
        ("fail", json!({"error": 5})),
        ("fail", json!({"error": ["a"]})),
        ("cancel", json!({"reason": 5})),
        ("step", json!({"info": 5})),
        ("heartbeat", json!({"info": {"a": 1}})),
        ("progress", json!({"percent": "x"})),
        ("progress", json!({"percent": -5})),
        ("progress", json!({"percent": 1e308})),
        ("input", json!({"data": 5})),
        ("input", json!({"data": "x", "eof": "yes"})),
    ];
    for (i, (verb, b)) in actions.iter().enumerate() {
        out.push(
            Case::new(
                format!("{verb}-typed-{i}"),
                Method::PUT,
                format!("{t}/{verb}"),
            )
            .body(b.to_string().into_bytes()),
        );
    }
    let others = [
        (
            "/api/push",
            json!({"sessionId": 5, "content": "x", "role": "user"}),
        ),
        ("/api/push", json!({"content": null})),
        ("/api/tasks/cleanup", json!({"older_than_s": "x"})),
        ("/api/tasks/cleanup", json!({"older_than_s": -1})),
        (
            "/api/destinations/hook/replay",
            json!({"since": "yesterday"}),
        ),
        ("/api/destinations/hook/replay", json!({"since": 5})),
    ];
    for (i, (path, b)) in others.iter().enumerate() {
        out.push(
            Case::new(format!("typed-{i}"), Method::POST, *path).body(b.to_string().into_bytes()),
        );
    }
    out
}

/// Bad `{id}` path parameters on every route that takes one.
fn path_cases() -> Vec<Case> {
    let ids = [
        "%FF%FE",
        "a%00b",
        &"x".repeat(300),
        "..",
        "%2E%2E",
        "%2F",
        "%E5%8F%91",
        "'%20OR%201=1--",
        "no_such_task",
        "-",
        "a.b",
        "%25",
    ];
    let routes: [(Method, &str); 18] = [
        (Method::GET, "/api/tasks/{}"),
        (Method::GET, "/api/tasks/{}/logs"),
        (Method::GET, "/api/tasks/{}/output"),
        (Method::GET, "/api/tasks/{}/events"),
        (Method::PUT, "/api/tasks/{}/start"),
        (Method::PUT, "/api/tasks/{}/complete"),
        (Method::PUT, "/api/tasks/{}/fail"),
        (Method::PUT, "/api/tasks/{}/cancel"),
        (Method::PUT, "/api/tasks/{}/retry"),
        (Method::PUT, "/api/tasks/{}/step"),
        (Method::PUT, "/api/tasks/{}/heartbeat"),
        (Method::PUT, "/api/tasks/{}/progress"),
        (Method::POST, "/api/tasks/{}/input"),
        (Method::GET, "/api/deliveries/{}"),
        (Method::POST, "/api/deliveries/{}/replay"),
        (Method::POST, "/api/destinations/{}/replay"),
        (Method::DELETE, "/api/tasks/{}"),
        (Method::PATCH, "/api/tasks/{}/start"),
    ];
    let mut out = Vec::new();
    for (m, route) in routes {
        for id in ids {
            let path = route.replace("{}", id);
            out.push(Case::new(format!("id {}", short(id)), m.clone(), path).body(b"{}".to_vec()));
        }
    }
    out
}

/// Bad query parameters on every listing.
fn query_cases(task: &str) -> Vec<Case> {
    let queries = [
        "limit=-1",
        "limit=abc",
        "limit=99999999999999999999999",
        "limit=0",
        "assigned_to=%FF%FE",
        "assigned_to=Not%20Valid",
        "status=weird",
        "before=abc",
        "before=-1",
        "before=99999999999999999999999",
        "limit=1&limit=2",
        "offset=-1",
        "offset=abc",
        "destination=%FF",
        "task_id=%00",
        "status=dead&destination=..",
    ];
    let routes = [
        "/api/tasks".to_string(),
        "/api/tasks/pending".to_string(),
        "/api/dead-letters".to_string(),
        "/api/deliveries".to_string(),
        format!("/api/tasks/{task}/output"),
    ];
    let mut out = Vec::new();
    for route in &routes {
        for q in queries {
            out.push(Case::new(
                format!("query {q}"),
                Method::GET,
                format!("{route}?{q}"),
            ));
        }
    }
    out
}

/// Header values that are not UTF-8, odd content types and wrong methods.
fn header_cases(a: &str, task: &str) -> Vec<Case> {
    let t = format!("/api/tasks/{task}");
    let body = json!({"task_name": "odd headers", "assigned_to": a})
        .to_string()
        .into_bytes();
    vec![
        Case::new("bot-key not utf-8", Method::GET, "/api/tasks").header("x-bot-key", b"\xff\xfe"),
        Case::new("bearer not utf-8", Method::GET, "/api/tasks")
            .header("authorization", b"Bearer \xff"),
        Case::new(
            "idempotency-key not utf-8",
            Method::PUT,
            format!("{t}/heartbeat"),
        )
        .header("idempotency-key", b"\xff\xfe")
        .body(b"{}".to_vec()),
        Case::new(
            "fencing token not utf-8",
            Method::PUT,
            format!("{t}/complete"),
        )
        .header("x-fencing-token", b"\xff\xfe")
        .body(b"{}".to_vec()),
        Case::new("content-type garbage", Method::POST, "/api/tasks")
            .header("content-type", b"\xff/\xfe")
            .body(body),
        Case::new("traceparent garbage", Method::GET, "/api/tasks")
            .header("traceparent", b"00-\xff-\xfe-01"),
        Case::new("delete collection", Method::DELETE, "/api/tasks"),
        Case::new("get an action", Method::GET, format!("{t}/start")),
        Case::new("post healthz", Method::POST, "/healthz"),
        Case::new("no such route", Method::GET, "/api/%FF%FE/nothing"),
    ]
}
