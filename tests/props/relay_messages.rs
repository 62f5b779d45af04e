//! Relay messages in the Live Task Pulse format (`text::message`): any template string is
//! accepted or refused without a panic; every accepted template, built in (English, Chinese)
//! or an override, renders any event of any task without a panic in at most three lines, with
//! every placeholder one line of at most 300 characters; and literal text, braces included,
//! comes out of a template exactly as it went in.

use crate::gen;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use taskfleet::domain::{EventKind, Task, TaskEvent};
use taskfleet::text::message::{Language, Templates, MAX_LINES, MAX_VALUE_CHARS};

const PLACEHOLDERS: &[&str] = &[
    "name", "steps", "current", "done", "total", "step", "next", "percent", "info", "message",
    "result", "error", "minutes", "attempt",
];

/// A task and one of its events (any kind, message and `data`).
fn task_and_event() -> impl Strategy<Value = (Task, TaskEvent)> {
    gen::task().prop_flat_map(|t| {
        let event = gen::event_of(&t);
        (Just(t), event)
    })
}

fn language() -> impl Strategy<Value = Language> {
    select(&[Language::En, Language::Zh][..])
}

/// Template strings: pieces of template syntax (right and wrong) in any order, or any text.
fn template() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        select(PLACEHOLDERS).prop_map(|p| format!("{{{p}}}")),
        select(&["{?", "}", "{", "{{", "}}", "\n", "{nmae}", "{}", "{?}", " ", "✅ ", "【"][..])
            .prop_map(str::to_string),
        gen::text(6).prop_map(|t| t.replace(['{', '}'], "")),
    ];
    prop_oneof![
        3 => vec(piece, 0..12).prop_map(|ps| ps.concat()),
        1 => gen::text(40),
    ]
}

/// `text` as template text: braces doubled.
fn literal(text: &str) -> String {
    text.replace('{', "{{").replace('}', "}}")
}

fn check_rendered(m: Option<String>) -> Result<(), TestCaseError> {
    if let Some(m) = m {
        prop_assert!(!m.is_empty());
        prop_assert!(m.lines().count() <= MAX_LINES, "{m:?}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(crate::config(512))]

    #[test]
    fn the_built_in_templates_render_any_event_of_any_task_in_at_most_three_lines(
        lang in language(),
        (task, event) in task_and_event(),
    ) {
        let rendered = Templates::builtin(lang).render(&task, &event);
        if matches!(event.kind, EventKind::Created | EventKind::Output) {
            prop_assert_eq!(rendered, None);
        } else {
            prop_assert!(rendered.is_some());
            check_rendered(rendered)?;
        }
    }

    #[test]
    fn any_template_is_accepted_or_refused_and_accepted_ones_render_at_most_three_lines(
        lang in language(),
        template in template(),
        (task, event) in task_and_event(),
    ) {
        let Ok(templates) = Templates::builtin(lang).with_overrides([(event.kind, template.clone())])
        else {
            return Ok(());
        };
        prop_assert_eq!(templates.get(event.kind), template.as_str());
        check_rendered(templates.render(&task, &event))?;
    }

    #[test]
    fn literal_text_comes_out_of_a_template_as_it_went_in(
        kind in gen::event_kind(),
        lines in vec(gen::text(30).prop_map(|l| l.replace('\n', "")), 1..=MAX_LINES),
        (task, mut event) in task_and_event(),
    ) {
        let text = lines.join("\n");
        let templates = Templates::builtin(Language::En)
            .with_overrides([(kind, literal(&text))])
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        event.kind = kind;
        let expected = text.trim().lines().collect::<Vec<_>>().join("\n");
        prop_assert_eq!(
            templates.render(&task, &event),
            (!expected.is_empty()).then_some(expected)
        );
    }

    #[test]
    fn every_placeholder_renders_as_one_line_of_at_most_300_characters(
        placeholder in select(PLACEHOLDERS),
        (task, event) in task_and_event(),
    ) {
        let templates = Templates::builtin(Language::Zh)
            .with_overrides([(event.kind, format!("<{{{placeholder}}}>"))])
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let rendered = templates.render(&task, &event).expect("<> is never empty");
        let value = rendered
            .strip_prefix('<')
            .and_then(|r| r.strip_suffix('>'))
            .expect("the value sits between the brackets");
        prop_assert!(!value.contains('\n'), "{value:?}");
        prop_assert!(value.chars().count() <= MAX_VALUE_CHARS, "{}", value.chars().count());
        prop_assert_eq!(value.trim(), value);
    }
}
