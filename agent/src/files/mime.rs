//! Best-effort MIME types and viewer hints from file names.

use cmdop_proto::terminal::ViewerType;

/// Guesses a MIME type from the file extension; `application/octet-stream`
/// when unknown.
pub fn guess(name: &str) -> &'static str {
    let ext = match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => ext.to_ascii_lowercase(),
        _ => return "application/octet-stream",
    };
    match ext.as_str() {
        "txt" | "log" | "conf" | "cfg" | "ini" => "text/plain",
        "md" | "markdown" => "text/markdown",
        "html" | "htm" => "text/html",
        "css" => "text/css",
        "csv" => "text/csv",
        "js" | "mjs" | "cjs" => "text/javascript",
        "ts" => "text/x-typescript",
        "rs" => "text/x-rust",
        "py" => "text/x-python",
        "go" => "text/x-go",
        "c" | "h" => "text/x-c",
        "cc" | "cpp" | "hpp" | "cxx" => "text/x-c++",
        "java" => "text/x-java",
        "sh" | "bash" | "zsh" => "text/x-shellscript",
        "toml" => "application/toml",
        "json" => "application/json",
        "yaml" | "yml" => "application/yaml",
        "xml" => "application/xml",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" | "tgz" => "application/gzip",
        "tar" => "application/x-tar",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "webp" => "image/webp",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        _ => "application/octet-stream",
    }
}

/// The preview kind a UI would pick for `mime`.
pub fn viewer_for(mime: &str) -> ViewerType {
    match mime {
        "text/markdown" => ViewerType::ViewerMarkdown,
        "application/json" => ViewerType::ViewerJson,
        "application/yaml" => ViewerType::ViewerYaml,
        "application/xml" => ViewerType::ViewerXml,
        "application/pdf" => ViewerType::ViewerPdf,
        "application/zip" | "application/gzip" | "application/x-tar" => ViewerType::ViewerArchive,
        "text/plain" | "text/csv" => ViewerType::ViewerText,
        m if m.starts_with("text/") || m == "application/toml" => ViewerType::ViewerCode,
        m if m.starts_with("image/") => ViewerType::ViewerImage,
        m if m.starts_with("video/") => ViewerType::ViewerVideo,
        m if m.starts_with("audio/") => ViewerType::ViewerAudio,
        _ => ViewerType::ViewerUnknown,
    }
}
