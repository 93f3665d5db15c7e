//! The model's and tools' text on the user's terminal. A hostile or confused model (or a tool
//! result it caused, such as `cat` of a crafted file) can emit terminal escape sequences: they
//! can rewrite what is already on the screen, hide text, change the window title, or on some
//! terminals answer back into the input. So everything `stigmer run` prints passes through
//! [`safe`]: newlines and tabs stay (the text has lines), every other control character (ESC,
//! CR, backspace, BEL, DEL, C1) and the bidirectional formatting characters are shown as
//! visible escapes (`\x1b`, `\u{202e}`), which also cannot form a sequence across two prints.

use std::borrow::Cow;
use std::fmt::Write as _;

use stigmer_contract::text::hides_or_reorders;

/// `text` with nothing left that a terminal would interpret, other than `\n` and `\t`.
pub fn safe(text: &str) -> Cow<'_, str> {
    if !text.chars().any(escaped) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if !escaped(c) {
            out.push(c);
        } else if let Ok(byte) = u8::try_from(u32::from(c)) {
            let _ = write!(out, "\\x{byte:02x}");
        } else {
            let _ = write!(out, "\\u{{{:04x}}}", u32::from(c));
        }
    }
    Cow::Owned(out)
}

fn escaped(c: char) -> bool {
    c != '\n' && c != '\t' && hides_or_reorders(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_text_passes_unchanged_and_unallocated() {
        let text = "Done.\n\tresult: naïve — 日本語 (2 files)\n";
        assert!(matches!(safe(text), Cow::Borrowed(t) if t == text));
    }

    #[test]
    fn escape_sequences_and_overwrites_become_visible() {
        assert_eq!(safe("\x1b]0;pwned\x07title"), "\\x1b]0;pwned\\x07title");
        assert_eq!(safe("\x1b[2J\x1b[Hclean"), "\\x1b[2J\\x1b[Hclean");
        assert_eq!(safe("secret\rhidden"), "secret\\x0dhidden");
        assert_eq!(safe("ok\x08\x08no"), "ok\\x08\\x08no");
        assert_eq!(safe("\u{9b}31m"), "\\x9b31m");
        assert_eq!(safe("abc\u{202e}fed"), "abc\\u{202e}fed");
    }
}
