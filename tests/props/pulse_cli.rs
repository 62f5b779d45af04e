//! Pulse command lines (`taskfleet pulse …` and `taskfleet async-task …`), parsed by the CLI's
//! clap definition (`cli::Cli`): any arguments, UTF-8 or not, parse or are refused without a
//! panic, and the free text a bot hands a verb (a description, a step note, a result, an
//! error, a push) reaches the verb unchanged.
//!
//! What a verb then does with its arguments (`[ID] "<text>"`, `progress [ID] <percent>`) runs
//! inside async functions that call the API; the integration tests (tests/it/pulse_cli.rs)
//! cover those against a real fleet.

use crate::gen;
use clap::Parser;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use taskfleet::cli::Cli;

const VERBS: &[&str] = &[
    "start",
    "next",
    "step",
    "heartbeat",
    "progress",
    "done",
    "fail",
    "error",
    "push",
    "status",
    "cleanup",
    "__replay",
    "help",
];

const FLAGS: &[&str] = &[
    "--steps",
    "--assignee",
    "--session",
    "--api",
    "--key",
    "--json",
    "--data-dir",
    "--older-than-days",
    "--config",
    "--help",
    "--version",
    "-h",
    "--",
    "-",
];

/// One argument: a verb, a flag, a number, any text, or bytes that are not UTF-8.
fn arg() -> impl Strategy<Value = OsString> {
    prop_oneof![
        1 => select(VERBS).prop_map(OsString::from),
        1 => select(FLAGS).prop_map(OsString::from),
        1 => (-5i64..300).prop_map(|n| OsString::from(n.to_string())),
        2 => gen::text(20).prop_map(OsString::from),
        1 => vec(any::<u8>(), 0..12).prop_map(OsString::from_vec),
    ]
}

/// Parses `taskfleet <words…>`.
fn parse<I: IntoIterator<Item = OsString>>(words: I) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once(OsString::from("taskfleet")).chain(words))
}

/// Free text a bot passes: anything that does not look like a flag.
fn free_text() -> impl Strategy<Value = String> {
    gen::text(60).prop_filter("not a flag", |s| !s.starts_with('-'))
}

proptest! {
    #![proptest_config(crate::config(256))]

    #[test]
    fn any_pulse_or_async_task_command_line_parses_or_is_refused_without_panic(
        command in select(&["pulse", "async-task"][..]),
        args in vec(arg(), 0..6),
    ) {
        let words = std::iter::once(OsString::from(command)).chain(args);
        if let Err(e) = parse(words) {
            // A refusal renders as a message (help and version are "refusals" too).
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn the_text_a_bot_passes_to_a_verb_reaches_it_unchanged(
        command in select(&["pulse", "async-task"][..]),
        verb in select(&["next", "step", "heartbeat", "done", "fail", "error"][..]),
        // An id that starts with `-` (valid for producers that publish to NATS directly) is
        // taken for a flag unless it follows `--`: see the double-dash property below.
        id in prop::option::of(gen::task_id().prop_filter("not a flag", |i| !i.as_str().starts_with('-'))),
        text in free_text(),
    ) {
        let mut words = vec![command.to_string(), verb.to_string()];
        words.extend(id.as_ref().map(ToString::to_string));
        words.push(text.clone());
        let cli = parse(words.into_iter().map(OsString::from))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let parsed = format!("{cli:?}");
        prop_assert!(parsed.contains(&format!("{text:?}")), "{parsed}");
        if let Some(id) = id {
            prop_assert!(parsed.contains(&format!("{:?}", id.as_str())), "{parsed}");
        }
    }

    #[test]
    fn any_id_and_text_after_a_double_dash_reach_the_verb_unchanged(
        verb in select(&["next", "heartbeat", "done", "fail"][..]),
        id in gen::task_id(),
        text in gen::text(60),
    ) {
        let words = ["pulse", verb, "--", id.as_str(), text.as_str()].map(OsString::from);
        let cli = parse(words).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let parsed = format!("{cli:?}");
        prop_assert!(parsed.contains(&format!("[{:?}, {text:?}]", id.as_str())), "{parsed}");
    }

    #[test]
    fn any_description_or_push_after_a_double_dash_reaches_the_verb_unchanged(
        verb in select(&["push", "start"][..]),
        text in gen::text(60),
    ) {
        let words = ["async-task", verb, "--", text.as_str()].map(OsString::from);
        let cli = parse(words).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let parsed = format!("{cli:?}");
        prop_assert!(parsed.contains(&format!("{text:?}")), "{parsed}");
    }

    #[test]
    fn a_start_keeps_its_description_and_every_step_in_order(
        command in select(&["pulse", "async-task"][..]),
        description in free_text(),
        steps in vec(free_text(), 1..5),
    ) {
        let mut words = vec![command.to_string(), "start".into(), description.clone(), "--steps".into()];
        words.extend(steps.iter().cloned());
        let cli = parse(words.into_iter().map(OsString::from))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let parsed = format!("{cli:?}");
        prop_assert!(parsed.contains(&format!("description: {description:?}")), "{parsed}");
        prop_assert!(parsed.contains(&format!("steps: {steps:?}")), "{parsed}");
    }
}
