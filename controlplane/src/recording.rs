//! What an attached shell's user saw, as an asciicast v2 recording (a JSON
//! header line, then one `[seconds, "o", text]` line per piece of output),
//! kept with the session's audit record and replayed by
//! `cmdop admin audit play ID`. Bounded: past the limit the recording stops
//! and says it was cut.

use std::time::Instant;

/// One session's recording in the making.
pub struct Recorder {
    started: Instant,
    started_unix_s: i64,
    width: u32,
    height: u32,
    events: String,
    limit: usize,
    cut: bool,
}

impl Recorder {
    /// A recording of a `width`×`height` terminal, at most `limit` bytes
    /// of events.
    pub fn new(width: u32, height: u32, limit: usize) -> Recorder {
        Recorder {
            started: Instant::now(),
            started_unix_s: crate::store::now_ms() / 1000,
            width,
            height,
            events: String::new(),
            limit,
            cut: false,
        }
    }

    /// Output the user saw now.
    pub fn output(&mut self, data: &[u8]) {
        if self.cut || data.is_empty() {
            return;
        }
        let at = self.started.elapsed().as_secs_f64();
        let line = serde_json::json!([at, "o", String::from_utf8_lossy(data)]).to_string();
        if self.events.len() + line.len() + 1 > self.limit {
            self.cut = true;
            return;
        }
        self.events.push_str(&line);
        self.events.push('\n');
    }

    /// The whole recording.
    pub fn finish(&self) -> String {
        let mut header = serde_json::json!({
            "version": 2,
            "width": self.width,
            "height": self.height,
            "timestamp": self.started_unix_s,
        });
        if self.cut {
            header["title"] = serde_json::json!(format!(
                "cut at {} bytes (cmdop server --audit-recording-max-kib)",
                self.limit
            ));
        }
        format!("{header}\n{}", self.events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_output_lines_and_stops_at_the_limit() {
        let mut r = Recorder::new(80, 24, 200);
        r.output(b"hello\r\n");
        r.output(&[b'x'; 300]);
        r.output(b"after");
        let cast = r.finish();
        let mut lines = cast.lines();
        let header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!(header["version"], 2);
        assert_eq!(header["width"], 80);
        assert!(header["title"].as_str().unwrap().starts_with("cut at 200"));
        let first: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!(first[1], "o");
        assert_eq!(first[2], "hello\r\n");
        assert_eq!(lines.next(), None, "nothing after the cut");
    }
}
