//! Text: messages for people: Live Task Pulse templates en/zh and fitting text into chat
//! platform limits.
//!
//! - [`message`]: human messages in the Live Task Pulse format (≤ 3 lines), English and Chinese
//!   built in, templates overridable per event kind.
//! - [`split`]: fitting text into chat platform limits (Telegram, Discord, Slack) without cutting
//!   a character or an emoji sequence in half.
//!
//! Both are pure (they use [`crate::domain`] only) and unit-tested in place.

pub mod message;
pub mod split;
