/// An error and its causes on one line, `outer: cause: root`, each message once: layers often
/// repeat their cause's text, and a log line or a status message should not say it twice.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn joins_causes_and_skips_repeated_messages() {
        let root = Layer("connection refused", None);
        let middle = Layer("connect failed: connection refused", Some(Box::new(root)));
        let outer = Layer("request failed", Some(Box::new(middle)));
        assert_eq!(
            error_chain(&outer),
            "request failed: connect failed: connection refused"
        );
    }
}
