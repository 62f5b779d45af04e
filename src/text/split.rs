//! Fitting text into chat platform limits.
//!
//! Lengths are measured in UTF-16 code units, which is what Telegram counts; it is never less
//! than the number of characters, so the same measure is safe for Discord and Slack. Text is
//! split at line breaks first, then at spaces, and only then between "grapheme-ish" clusters:
//! a character plus what attaches to it (combining marks, variation selectors, emoji skin
//! tones, tag characters, keycaps), emoji joined with a zero-width joiner, and flag pairs stay
//! together. A cut never falls inside a character. (This is not the full Unicode segmentation
//! algorithm: a few scripts' clusters may still be cut, but never into invalid text.)

/// Telegram's limit for one message.
pub const TELEGRAM_LIMIT: usize = 4096;
/// Discord's limit for one message.
pub const DISCORD_LIMIT: usize = 2000;
/// Slack's limit for one message's text.
pub const SLACK_LIMIT: usize = 40_000;

const ELLIPSIS: char = '…';
const ZWJ: char = '\u{200D}';

/// The length of `text` as the limits count it (UTF-16 code units).
pub fn text_len(text: &str) -> usize {
    text.encode_utf16().count()
}

/// Splits `text` into pieces of at most `limit` each (see the module docs for how).
///
/// The line break or space where a cut falls is dropped; nothing else is. Blank pieces are
/// left out, so empty text gives no pieces. A single character longer than `limit` (only
/// possible with a limit below 2) gets a piece of its own.
pub fn split_message(text: &str, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.split('\n') {
        if let Some(c) = cur.as_mut() {
            if text_len(c) + 1 + text_len(line) <= limit {
                c.push('\n');
                c.push_str(line);
                continue;
            }
        }
        flush(&mut out, cur.take());
        if text_len(line) <= limit {
            cur = Some(line.to_string());
        } else {
            let mut pieces = split_words(line, limit);
            cur = pieces.pop();
            // Through `flush` too: a run of other whitespace (tabs…) can make a blank piece.
            pieces.into_iter().for_each(|p| flush(&mut out, Some(p)));
        }
    }
    flush(&mut out, cur);
    out
}

fn flush(out: &mut Vec<String>, piece: Option<String>) {
    if let Some(p) = piece {
        let p = p.trim_matches('\n');
        if !p.trim().is_empty() {
            out.push(p.to_string());
        }
    }
}

/// Splits one over-long line at spaces; words longer than `limit` are cut between clusters.
fn split_words(line: &str, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for word in line.split(' ') {
        let sep = usize::from(!cur.is_empty());
        if text_len(&cur) + sep + text_len(word) <= limit {
            if sep == 1 {
                cur.push(' ');
            }
            cur.push_str(word);
            continue;
        }
        if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        if text_len(word) <= limit {
            cur = word.to_string();
        } else {
            let mut pieces = split_clusters(word, limit);
            cur = pieces.pop().unwrap_or_default();
            out.extend(pieces);
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Cuts a run without spaces between clusters (and inside a cluster only at characters, when
/// the cluster alone is longer than `limit`).
fn split_clusters(word: &str, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for cluster in clusters(word) {
        if text_len(&cur) + text_len(cluster) <= limit {
            cur.push_str(cluster);
            continue;
        }
        if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        if text_len(cluster) <= limit {
            cur.push_str(cluster);
        } else {
            for ch in cluster.chars() {
                if !cur.is_empty() && text_len(&cur) + ch.len_utf16() > limit {
                    out.push(std::mem::take(&mut cur));
                }
                cur.push(ch);
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Shortens `text` to at most `limit`, ending with `…` when anything was cut. Cuts fall between
/// clusters; trailing whitespace before the `…` is dropped. A limit of 0 gives empty text.
pub fn trim_message(text: &str, limit: usize) -> String {
    if text_len(text) <= limit {
        return text.to_string();
    }
    if limit == 0 {
        return String::new();
    }
    let budget = limit - ELLIPSIS.len_utf16();
    let mut out = String::new();
    for cluster in clusters(text) {
        if text_len(&out) + text_len(cluster) > budget {
            break;
        }
        out.push_str(cluster);
    }
    let mut out = out.trim_end().to_string();
    out.push(ELLIPSIS);
    out
}

/// Whether `c` attaches to the character before it.
fn extends(c: char) -> bool {
    matches!(c,
        '\u{0300}'..='\u{036F}'       // combining diacritical marks
        | '\u{1AB0}'..='\u{1AFF}'
        | '\u{1DC0}'..='\u{1DFF}'
        | '\u{20D0}'..='\u{20FF}'     // combining marks for symbols, incl. keycap U+20E3
        | '\u{FE00}'..='\u{FE0F}'     // variation selectors
        | '\u{FE20}'..='\u{FE2F}'
        | '\u{3099}'..='\u{309A}'     // kana voicing marks
        | '\u{1F3FB}'..='\u{1F3FF}'   // emoji skin tones
        | '\u{E0020}'..='\u{E007F}'   // tags (subdivision flags)
        | '\u{E0100}'..='\u{E01EF}'   // variation selectors supplement
        | ZWJ)
}

fn is_regional_indicator(c: char) -> bool {
    ('\u{1F1E6}'..='\u{1F1FF}').contains(&c)
}

/// Splits `s` into grapheme-ish clusters (see the module docs).
fn clusters(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut prev: Option<char> = None;
    let mut regional_run = 0;
    for (i, c) in s.char_indices() {
        let joins = match prev {
            None => false,
            Some(p) => {
                extends(c)
                    || p == ZWJ
                    || (p == '\r' && c == '\n')
                    || (is_regional_indicator(c) && regional_run % 2 == 1)
            }
        };
        if !joins && i > start {
            out.push(&s[start..i]);
            start = i;
        }
        regional_run = if is_regional_indicator(c) {
            regional_run + 1
        } else {
            0
        };
        prev = Some(c);
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn squeeze(s: &str) -> String {
        s.chars().filter(|c| !c.is_whitespace()).collect()
    }

    fn assert_fits(pieces: &[String], limit: usize) {
        for p in pieces {
            assert!(text_len(p) <= limit, "{p:?} is {} > {limit}", text_len(p));
        }
    }

    #[test]
    fn the_platform_limits_are_exposed() {
        assert_eq!(
            (TELEGRAM_LIMIT, DISCORD_LIMIT, SLACK_LIMIT),
            (4096, 2000, 40_000)
        );
    }

    #[test]
    fn short_text_comes_back_whole_and_empty_text_gives_nothing() {
        assert_eq!(split_message("hello\nworld", 20), vec!["hello\nworld"]);
        assert!(split_message("", 20).is_empty());
        assert!(split_message("\n \n", 20).is_empty());
    }

    #[test]
    fn text_is_split_at_line_breaks_first() {
        let text = "line one\nline two\nline three";
        assert_eq!(
            split_message(text, 18),
            vec!["line one\nline two", "line three"]
        );
    }

    #[test]
    fn a_long_line_is_split_at_spaces() {
        let text = "the quick brown fox jumps over the lazy dog";
        let pieces = split_message(text, 10);
        assert_eq!(
            pieces,
            ["the quick", "brown fox", "jumps over", "the lazy", "dog"]
        );
    }

    #[test]
    fn cjk_text_without_spaces_is_cut_between_characters() {
        let text = "实时任务脉冲通过消息工具将每一步状态变更即时推送到用户聊天窗口";
        let pieces = split_message(text, 7);
        assert_fits(&pieces, 7);
        assert_eq!(pieces[0], "实时任务脉冲通");
        assert_eq!(pieces.concat(), text);
    }

    #[test]
    fn emoji_count_as_two_units_and_are_never_cut_in_half() {
        let text = "🚀🎉✅🔄⚠️❌🚫🔁".repeat(5);
        for limit in 2..12 {
            let pieces = split_message(&text, limit);
            assert_fits(&pieces, limit);
            assert_eq!(pieces.concat(), text, "limit {limit}");
        }
        assert_eq!(text_len("🚀"), 2);
    }

    #[test]
    fn zwj_sequences_flags_skin_tones_and_keycaps_stay_whole() {
        let family = "👨\u{200D}👩\u{200D}👧\u{200D}👦";
        let items = [
            family,
            "🇨🇳",
            "🇺🇸",
            "👍🏽",
            "1️⃣",
            "🏴\u{E0067}\u{E0062}\u{E0065}\u{E006E}\u{E0067}\u{E007F}",
        ];
        let text = items.concat();
        assert_eq!(clusters(&text), items);
        let widest = items.iter().map(|c| text_len(c)).max().unwrap();
        let pieces = split_message(&text, widest);
        assert_eq!(pieces[0], family);
        for p in &pieces {
            assert!(clusters(p).iter().all(|c| items.contains(c)), "{p:?}");
        }
    }

    #[test]
    fn mixed_text_keeps_every_visible_character_in_order() {
        let text = "🚀 开始【发布周报】\n📋 抓取数据 → 生成摘要 → 发布\n🔄 当前: 抓取数据 "
            .repeat(40)
            + "final words with an extremelylongwordthatdoesnotfitanywhere";
        for limit in [5, 16, 50, DISCORD_LIMIT] {
            let pieces = split_message(&text, limit);
            assert_fits(&pieces, limit);
            assert_eq!(squeeze(&pieces.concat()), squeeze(&text), "limit {limit}");
        }
    }

    #[test]
    fn a_limit_below_one_emoji_still_never_cuts_inside_a_char() {
        let pieces = split_message("a🚀b", 1);
        assert_eq!(pieces, ["a", "🚀", "b"]);
    }

    #[test]
    fn trim_keeps_short_text_and_ends_long_text_with_an_ellipsis() {
        assert_eq!(trim_message("short", 10), "short");
        assert_eq!(trim_message("hello world again", 12), "hello world…");
        assert_eq!(trim_message("任务已经完成了", 5), "任务已经…");
        assert_eq!(trim_message("abc", 0), "");
    }

    #[test]
    fn trim_never_cuts_an_emoji_sequence() {
        let family = "👨\u{200D}👩\u{200D}👧";
        let text = format!("ok {family}{family}");
        let trimmed = trim_message(&text, 12);
        assert!(text_len(&trimmed) <= 12);
        assert_eq!(trimmed, format!("ok {family}…"));
        let t = trim_message(&"🎉".repeat(10), 6);
        assert_eq!(t, "🎉🎉…");
    }
}
