//! Fitting text into chat platform limits (`text::split`): any text and any limit split and
//! trim without a panic; every piece fits the limit (Telegram's, Discord's, Slack's, or any
//! limit of at least one emoji); the pieces rejoin to the original text, in order, with only
//! the line breaks and spaces at the cuts left out; a cut never falls inside an emoji cluster
//! that fits; and a trimmed text is a prefix of the original plus `…`.

use crate::gen;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use taskfleet::text::split::{
    split_message, text_len, trim_message, DISCORD_LIMIT, TELEGRAM_LIMIT,
};

/// What the Slack sink splits at (`relay/sinks/platforms.rs`; `split::SLACK_LIMIT`, 40,000, is
/// Slack's hard limit).
const SLACK_MESSAGE_LIMIT: usize = 4000;

/// Clusters that must never be cut when they fit: letters, CJK, emoji with joiners, skin
/// tones, keycaps, flags, subdivision flags, combining marks; and the separators between them.
const ATOMS: &[&str] = &[
    "a",
    "Z",
    "7",
    "实",
    "🚀",
    "⚠️",
    "👍🏽",
    "1️⃣",
    "🇨🇳",
    "🇺🇸",
    "👨\u{200D}👩\u{200D}👧\u{200D}👦",
    "🏴\u{E0067}\u{E0062}\u{E0065}\u{E006E}\u{E0067}\u{E007F}",
    "e\u{0301}",
    "が",
    "か\u{3099}",
    "…",
    "【",
];
const SEPARATORS: &[&str] = &[" ", "\n"];

/// The widest atom, in UTF-16 units.
fn widest_atom() -> usize {
    ATOMS.iter().map(|a| text_len(a)).max().expect("atoms")
}

/// Text made of atoms and separators, with the byte offsets where atoms and separators meet.
fn atom_text(max: usize) -> impl Strategy<Value = (String, Vec<usize>)> {
    let unit = prop_oneof![
        4 => select(ATOMS),
        1 => select(SEPARATORS),
    ];
    vec(unit, 0..max).prop_map(|units| {
        let mut text = String::new();
        let mut bounds = vec![0];
        for u in units {
            text.push_str(u);
            bounds.push(text.len());
        }
        (text, bounds)
    })
}

/// Where each piece sits in `text`: pieces appear in order, and what lies between them (and
/// before the first and after the last) is whitespace only. Returns the byte spans.
fn locate(text: &str, pieces: &[String]) -> Result<Vec<(usize, usize)>, TestCaseError> {
    let mut at = 0;
    let mut spans = Vec::new();
    for p in pieces {
        let found = text[at..]
            .find(p.as_str())
            .ok_or_else(|| TestCaseError::fail(format!("{p:?} not found in order")))?;
        let gap = &text[at..at + found];
        prop_assert!(
            gap.chars().all(char::is_whitespace),
            "dropped {gap:?} before {p:?}"
        );
        spans.push((at + found, at + found + p.len()));
        at += found + p.len();
    }
    let tail = &text[at..];
    prop_assert!(
        tail.chars().all(char::is_whitespace),
        "dropped {tail:?} at the end"
    );
    Ok(spans)
}

proptest! {
    #![proptest_config(crate::config(512))]

    #[test]
    fn any_text_and_any_limit_split_and_trim_without_panic(
        text in gen::text(300),
        limit in 0usize..70,
    ) {
        let pieces = split_message(&text, limit);
        for p in &pieces {
            prop_assert!(!p.trim().is_empty(), "blank piece {p:?}");
            // Over the limit only when a single character is wider than it.
            prop_assert!(text_len(p) <= limit || p.chars().count() == 1, "{p:?} > {limit}");
        }
        let trimmed = trim_message(&text, limit);
        prop_assert!(text_len(&trimmed) <= limit);
    }

    #[test]
    fn split_pieces_fit_the_limit_and_rejoin_to_the_original_text(
        text in gen::text(300),
        limit in 2usize..70,
    ) {
        let pieces = split_message(&text, limit);
        for p in &pieces {
            prop_assert!(text_len(p) <= limit, "{p:?} is {} > {limit}", text_len(p));
        }
        locate(&text, &pieces)?;
        if text.trim().is_empty() {
            prop_assert!(pieces.is_empty());
        }
        // Text without whitespace loses nothing at all.
        if !text.chars().any(char::is_whitespace) {
            prop_assert_eq!(pieces.concat(), text);
        }
    }

    #[test]
    fn only_the_one_line_break_or_space_at_each_cut_is_dropped(
        words in vec(gen::text(12).prop_filter("a word", |w| !w.is_empty() && !w.chars().any(char::is_whitespace)), 1..40),
        seps in vec(select(SEPARATORS), 40),
        limit in 2usize..40,
    ) {
        let mut text = String::new();
        for (i, w) in words.iter().enumerate() {
            if i > 0 {
                text.push_str(seps[i]);
            }
            text.push_str(w);
        }
        let pieces = split_message(&text, limit);
        let spans = locate(&text, &pieces)?;
        prop_assert_eq!(spans.first().map(|s| s.0), Some(0));
        prop_assert_eq!(spans.last().map(|s| s.1), Some(text.len()));
        for pair in spans.windows(2) {
            prop_assert!(pair[1].0 - pair[0].1 <= 1, "more than one separator dropped");
        }
    }

    #[test]
    fn a_cut_never_falls_inside_a_cluster_that_fits(
        (text, bounds) in atom_text(120),
        extra in 0usize..30,
    ) {
        let limit = widest_atom() + extra;
        let pieces = split_message(&text, limit);
        for (start, end) in locate(&text, &pieces)? {
            prop_assert!(bounds.contains(&start), "a piece starts inside a cluster at {start}");
            prop_assert!(bounds.contains(&end), "a piece ends inside a cluster at {end}");
        }
    }

    #[test]
    fn a_trimmed_text_is_a_prefix_of_the_original_plus_an_ellipsis(
        text in gen::text(200),
        limit in 1usize..120,
    ) {
        let trimmed = trim_message(&text, limit);
        prop_assert!(text_len(&trimmed) <= limit);
        if text_len(&text) <= limit {
            prop_assert_eq!(trimmed, text);
        } else {
            let kept = trimmed.strip_suffix('…').expect("ends with …");
            prop_assert!(text.starts_with(kept), "{kept:?} is not a prefix");
            prop_assert_eq!(kept.trim_end(), kept);
        }
    }
}

proptest! {
    // Texts of thousands of characters: fewer cases.
    #![proptest_config(crate::config(24))]

    #[test]
    fn every_piece_fits_telegram_discord_and_slack(
        (unit, _) in atom_text(80).prop_filter("some text", |(t, _)| !t.is_empty()),
        limit in select(&[TELEGRAM_LIMIT, DISCORD_LIMIT, SLACK_MESSAGE_LIMIT][..]),
        size in 1usize..25,
    ) {
        // From a tenth of the limit to two and a half times it.
        let target = limit * size / 10;
        let mut text = String::new();
        while text_len(&text) < target {
            text.push_str(&unit);
        }
        let pieces = split_message(&text, limit);
        for p in &pieces {
            prop_assert!(text_len(p) <= limit, "{} > {limit}", text_len(p));
        }
        locate(&text, &pieces)?;
        if text_len(&text) <= limit && !text.trim().is_empty() {
            prop_assert_eq!(pieces, vec![text.trim_matches('\n').to_string()]);
        }
    }
}
