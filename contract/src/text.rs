//! Which characters may not reach a reader as they are. The runner escapes them in the names
//! its tools print (for the model), and the CLI in the model's and tools' text it prints (for
//! a person at a terminal): one list, so that both agree on what "invisible" means.

/// Characters that are invisible or move text around when shown: every control character
/// (C0, including ESC of terminal escape sequences, DEL and C1), the Unicode line and
/// paragraph separators (some readers break lines there), the bidirectional formatting
/// characters ("Trojan Source") and the byte-order mark.
pub fn hides_or_reorders(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{feff}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_reordering_characters_are_flagged_letters_are_not() {
        for c in [
            '\x1b', '\r', '\n', '\x07', '\x7f', '\u{9b}', '\u{202e}', '\u{2066}', '\u{feff}',
        ] {
            assert!(hides_or_reorders(c), "{c:?}");
        }
        for c in ['a', ' ', 'é', '日', '—', '\u{2013}'] {
            assert!(!hides_or_reorders(c), "{c:?}");
        }
    }
}
