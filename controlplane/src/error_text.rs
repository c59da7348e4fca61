//! Errors as one line of text for logs and status messages.

/// `err` and its causes joined by ": ", leaving out a cause whose text the
/// line already holds (wrappers often repeat their source's message).
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
