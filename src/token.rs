//! Task-scoped tokens: what a worker puts in a running task's environment
//! (`TASKFLEET_TASK_TOKEN`) so the program can report on that task, and nothing else.
//!
//! Format: `tft.<task_id>.<attempt>.<base64url HMAC-SHA256(secret, "<task_id>.<attempt>")>`.
//! A token is valid only for the attempt it was minted for.

use crate::domain::TaskId;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const PREFIX: &str = "tft.";

fn mac(secret: &[u8], task: &str, attempt: u32) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    m.update(format!("{task}.{attempt}").as_bytes());
    m
}

/// Mints the token for `attempt` of `task`.
pub fn mint(secret: &[u8], task: &TaskId, attempt: u32) -> String {
    let sig = mac(secret, task.as_str(), attempt).finalize().into_bytes();
    format!("{PREFIX}{task}.{attempt}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// Whether `presented` looks like a task token (so it is not checked as an API key).
pub fn is_task_token(presented: &str) -> bool {
    presented.starts_with(PREFIX)
}

/// The task and attempt a genuine token was minted for.
pub fn verify(secret: &[u8], presented: &str) -> Option<(TaskId, u32)> {
    let rest = presented.strip_prefix(PREFIX)?;
    let mut parts = rest.rsplitn(3, '.');
    let sig = URL_SAFE_NO_PAD.decode(parts.next()?).ok()?;
    let attempt: u32 = parts.next()?.parse().ok()?;
    let task = TaskId::parse(parts.next()?).ok()?;
    mac(secret, task.as_str(), attempt)
        .verify_slice(&sig)
        .ok()
        .map(|_| (task, attempt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_verifies_only_with_its_secret_and_unaltered() {
        let id = TaskId::parse("01JDTASK").unwrap();
        let t = mint(b"secret-one", &id, 2);
        assert!(is_task_token(&t));
        assert_eq!(verify(b"secret-one", &t), Some((id.clone(), 2)));
        assert_eq!(verify(b"secret-two", &t), None);
        let other = t.replacen(".2.", ".3.", 1);
        assert_eq!(verify(b"secret-one", &other), None);
        assert_eq!(verify(b"secret-one", "tft.garbage"), None);
    }
}
