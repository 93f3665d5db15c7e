use std::fmt;

/// A secret string (an API key, a token): `Debug` and `Display` show `<redacted>`, so a struct
/// holding one can derive `Debug` and still be logged. The value leaves only through
/// [`Secret::expose`], for a header or a child's environment.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The value, for where it is used (a header, a child's environment) and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        #[derive(Debug)]
        #[allow(dead_code)] // read through Debug only
        struct Holder {
            key: Secret,
            maybe: Option<Secret>,
        }
        let s = Secret::new("sk-very-secret".to_owned());
        let shown = format!(
            "{s} {s:?} {:?}",
            Holder {
                key: s.clone(),
                maybe: Some(s.clone())
            }
        );
        assert!(!shown.contains("sk-very-secret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert_eq!(s.expose(), "sk-very-secret");
    }
}
