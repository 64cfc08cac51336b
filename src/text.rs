//! Producer text on its way to a log line or a terminal.
//!
//! A spool file name, a summary or a dedup key is written by a producer, and some producers are
//! hostile: a newline in a file name forges a whole log line, and ESC, CSI or BEL in a summary
//! drive the terminal of the operator who runs `pdrelay queue list`. [`Escaped`] shows such text
//! with every control character (C0, DEL, C1), every Unicode bidirectional override and the
//! backslash written as an escape, so what is shown is one line and means one thing.

use std::fmt;

/// Shows producer text with control characters escaped: `\n`, `\r`, `\t`, `\\`, and `\u{..}`
/// for the rest (C0 controls, DEL, C1 controls, U+061C, U+200E/F, U+202A to U+202E, U+2066 to
/// U+2069). Everything else is shown as it is. Use it for every producer-controlled value that
/// reaches a log or a terminal.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(needs_escape) {
            f.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().expect("a character at a found index");
            match c {
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                '\\' => f.write_str("\\\\")?,
                other => write!(f, "\\u{{{:x}}}", other as u32)?,
            }
            rest = &rest[at + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

/// Escapes the control characters and bidirectional overrides left in text that is already
/// escaped in another way (JSON from serde_json, which leaves C1 controls and overrides as they
/// are); backslashes are kept.
pub fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c != '\\' && c != '\n' && needs_escape(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// Escapes producer text into a new string (see [`Escaped`]).
pub fn escaped(text: &str) -> String {
    Escaped(text).to_string()
}

/// Whether `c` must be escaped before it reaches a log line or a terminal.
fn needs_escape(c: char) -> bool {
    c == '\\'
        || c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_overrides_are_escaped_and_the_rest_kept() {
        for (input, shown) in [
            ("disk full on web1", "disk full on web1"),
            ("a\nERROR pdrelay::daemon: forged", "a\\nERROR pdrelay::daemon: forged"),
            ("\u{1b}[31mred\u{7}", "\\u{1b}[31mred\\u{7}"),
            ("cr\rtab\t", "cr\\rtab\\t"),
            ("back\\slash", "back\\\\slash"),
            ("c1\u{9b}2J", "c1\\u{9b}2J"),
            ("del\u{7f}", "del\\u{7f}"),
            ("rtl\u{202e}txt.json", "rtl\\u{202e}txt.json"),
            ("día ☃ 日本", "día ☃ 日本"),
        ] {
            assert_eq!(escaped(input), shown, "{input:?}");
        }
    }

    #[test]
    fn controls_left_in_json_text_are_escaped_and_its_escapes_kept() {
        assert_eq!(escape_controls("{\"s\": \"a\\u001b\u{9b}2J\"}\n"), "{\"s\": \"a\\u001b\\u{9b}2J\"}\n");
    }

    #[test]
    fn escaped_text_is_one_line_without_control_characters() {
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        let shown = escaped(&all);
        assert!(!shown.chars().any(|c| c.is_control()), "{shown:?}");
    }
}
