//! Pull requests over one long-lived inbox: `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`
//! with `{"batch": n, "no_wait": true}` (or a short `expires`), answered on
//! `<inbox>.<request number>`. async-nats's `fetch` subscribes and unsubscribes an inbox for
//! every request; a worker pulls after every task, so that doubled the server's work per pull.
//!
//! A request ends when it has its `n` messages or the server sends a status (404 no messages,
//! 408 timeout or requests pending, 409 …) on its own reply subject. Delivered messages carry
//! their stream subject, not the reply subject, so they cannot be told apart by request: one
//! that arrives late for a request given up on (its node died, say) is simply taken by the next
//! pull, never dropped.

use super::WorkerError;
use crate::bus::NatsResultExt;
use async_nats::jetstream::{self, Message};
use futures::StreamExt;
use std::time::Duration;

/// How long a pull may go without an answer before it counts as lost (a node died under it).
const PULL_TIMEOUT: Duration = Duration::from_secs(5);

/// The pull requests of one worker process.
pub(super) struct Puller {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: String,
    inbox: String,
    answers: async_nats::Subscriber,
    request: u64,
}

impl Puller {
    /// Subscribes the inbox the answers of every pull on `stream` come to.
    pub(super) async fn open(js: &jetstream::Context, stream: &str) -> Result<Self, WorkerError> {
        let client = js.client();
        let inbox = client.new_inbox();
        let answers = client
            .subscribe(format!("{inbox}.*"))
            .await
            .op("subscribe pull inbox")?;
        Ok(Self {
            client,
            js: js.clone(),
            stream: stream.to_string(),
            inbox,
            answers,
            request: 0,
        })
    }

    /// Up to `max` messages of `consumer` that are there now (a no-wait pull), or, with `wait`,
    /// the first ones to arrive within it.
    pub(super) async fn pull(
        &mut self,
        consumer: &str,
        max: usize,
        wait: Option<Duration>,
    ) -> Result<Vec<Message>, WorkerError> {
        self.request += 1;
        let reply = format!("{}.{}", self.inbox, self.request);
        let body = match wait {
            Some(w) => serde_json::json!({ "batch": max, "expires": w.as_nanos() as u64 }),
            None => serde_json::json!({ "batch": max, "no_wait": true }),
        };
        let subject = format!("$JS.API.CONSUMER.MSG.NEXT.{}.{consumer}", self.stream);
        self.client
            .publish_with_reply(subject, reply.clone(), body.to_string().into())
            .await
            .op("pull task")?;
        let limit = PULL_TIMEOUT + wait.unwrap_or_default();
        match tokio::time::timeout(limit, self.collect(&reply, max)).await {
            Ok(got) => got,
            Err(_) => Err(pull_error("no answer to the pull request")),
        }
    }

    async fn collect(&mut self, reply: &str, max: usize) -> Result<Vec<Message>, WorkerError> {
        let mut out = Vec::with_capacity(max);
        while out.len() < max {
            let Some(msg) = self.answers.next().await else {
                return Err(pull_error("the pull inbox closed"));
            };
            match msg.status {
                None => out.push(Message {
                    message: msg,
                    context: self.js.clone(),
                }),
                // Idle heartbeat: the request is still open.
                Some(s) if s.as_u16() == 100 => {}
                // 404 no messages, 408 timeout / requests pending, 409 …: this request ended
                // (a status for an earlier request is stale).
                Some(_) if msg.subject.as_str() == reply => break,
                Some(_) => {}
            }
        }
        Ok(out)
    }
}

/// A failed pull.
pub(super) fn pull_error(why: &str) -> WorkerError {
    WorkerError::Bus(crate::bus::BusError::Op {
        op: "pull task",
        source: why.to_string().into(),
    })
}
