//! How a failed command is reported: one line on stderr that says what
//! failed and what to do, in the CLI's words (flags and commands, not the
//! library's options or the RPCs underneath), and the exit status of the
//! client commands' own failures.

use cmdop::client::{Error, ErrorKind};

/// The exit status of `exec`, `shell`, `cp`, `ls`, `sessions`, `machines` and
/// `attach` when cmdop itself failed (cannot connect, refused key, unknown
/// or offline machine, connection lost), like ssh: any other status is
/// the remote command's own.
pub const CMDOP_FAILED: u8 = 255;

/// The client commands, whose every failure of cmdop's own exits
/// [`CMDOP_FAILED`].
pub const CLIENT_COMMANDS: &[&str] = &[
    "exec", "sessions", "machines", "ls", "attach", "shell", "cp",
];

/// Ends the process for a command line clap refused: help and version as
/// clap does; a wrong command line of a client command exits
/// [`CMDOP_FAILED`] (a script must not take it for the remote status),
/// of other commands 2.
pub fn usage_error(e: clap::Error) -> ! {
    use clap::error::ErrorKind as K;
    if matches!(
        e.kind(),
        K::DisplayHelp | K::DisplayVersion | K::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit()
    }
    let command = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    if command.is_some_and(|c| CLIENT_COMMANDS.contains(&c.as_str())) {
        let _ = e.print();
        std::process::exit(i32::from(CMDOP_FAILED));
    }
    e.exit()
}

/// `err` as one line for a person at a terminal: the chain of contexts
/// with RPC names, repeated causes and the library's advice removed, and
/// the next step in CLI words.
pub fn one_line(err: &anyhow::Error) -> String {
    let Some(client_err) = err.chain().find_map(|e| e.downcast_ref::<Error>()) else {
        return clean(&format!("{err:#}"));
    };
    // Contexts added by the CLI above the library's error come first.
    let mut outer = Vec::new();
    for e in err.chain() {
        if e.downcast_ref::<Error>().is_some() {
            break;
        }
        outer.push(e.to_string());
    }
    let mut text = outer.join(": ");
    let inner = clean(&client_err.to_string());
    if !inner.is_empty() {
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&inner);
    }
    match hint(client_err) {
        Some(next) => format!("{}; {next}", without_advice(&text)),
        None => text,
    }
}

/// How advice starts in the server's and the library's messages.
const ADVICE_VERBS: &[&str] = &[
    "check", "create", "start", "select", "raise", "retry", "run", "pass", "see", "use",
];

/// `text` up to the advice the server or library appended ("…; start its
/// agent"), which [`hint`] replaces with the CLI's own.
fn without_advice(text: &str) -> &str {
    let mut end = text.len();
    for sep in ["; ", ": "] {
        let mut from = 0;
        while let Some(i) = text[from..].find(sep) {
            let at = from + i;
            let next = text[at + sep.len()..]
                .split(|c: char| !c.is_ascii_alphabetic())
                .next()
                .unwrap_or("");
            if ADVICE_VERBS.contains(&next) && at < end {
                end = at;
                break;
            }
            from = at + sep.len();
        }
    }
    &text[..end]
}

/// What to do next about a library error, in CLI words (`None`: the
/// message already says it).
fn hint(err: &Error) -> Option<&'static str> {
    let text = err.to_string();
    let lower = text.to_ascii_lowercase();
    Some(match err.kind() {
        ErrorKind::Unauthenticated => {
            "check the key in CMDOP_API_KEY or --api-key-file (`cmdop admin create-key` makes one)"
        }
        ErrorKind::Unavailable if lower.contains("cannot connect") || lower.contains("servers answered") => {
            "check --server (CMDOP_SERVER: http:// for plaintext, https:// for TLS) and that `cmdop server` runs there"
        }
        ErrorKind::Unavailable | ErrorKind::Disconnected
            if lower.contains("connection") && lower.contains("lost") =>
        {
            "run the command again"
        }
        ErrorKind::Unavailable if lower.contains("offline") || lower.contains("not connected") => {
            "start the machine's agent (`cmdop agent`), or see `cmdop machines`"
        }
        ErrorKind::Unavailable | ErrorKind::Disconnected => "run the command again in a moment",
        ErrorKind::NotFound if lower.contains("machine") || lower.contains("host") => {
            "see `cmdop machines` for the hostnames, then pass -H HOST"
        }
        ErrorKind::NotFound if lower.contains("session") => "see `cmdop sessions`",
        ErrorKind::Ambiguous => "pass a whole hostname with -H HOST, or --machine-id (see `cmdop machines`)",
        ErrorKind::Timeout => "raise --timeout-secs, or check that the server and the machine's agent respond",
        ErrorKind::OutcomeUnknown => {
            "the command may still run on the machine: check there before running it again"
        }
        _ => return None,
    })
}

/// Library advice written for API users, replaced by [`hint`].
const LIBRARY_ADVICE: &[&str] = &[
    "check that the control plane is running",
    "check that at least one control plane",
    "the client reconnects by itself",
    "retry the call",
    "check the api key or tokens",
    "raise the timeout",
    "select one first",
];

/// Causes that only say which layer failed.
const NOISE: &[&str] = &[
    "transport error",
    "tcp connect error",
    "error trying to connect",
    "client error (connect)",
    "status: unavailable",
];

/// Removes from a `: `-separated chain of causes the RPC names
/// (`ServerInfo`), repeated causes, layer names and library advice.
fn clean(text: &str) -> String {
    let mut kept: Vec<String> = Vec::new();
    for piece in text.split(": ") {
        let piece = piece.trim();
        if piece.is_empty() || is_rpc_name(piece) {
            continue;
        }
        let lower = piece.to_ascii_lowercase();
        if NOISE.contains(&lower.as_str()) || LIBRARY_ADVICE.iter().any(|a| lower.starts_with(a)) {
            continue;
        }
        // A cause that repeats an earlier one word for word (tonic and
        // hyper each print their source), with or without parentheses.
        // Short pieces ("no", "EOF") may well recur on their own.
        let bare = piece.trim_start_matches('(').trim_end_matches(')');
        if bare.len() >= 8 && kept.iter().any(|k| k.contains(bare)) {
            continue;
        }
        kept.push(strip_library_words(piece));
    }
    kept.join(": ")
}

/// The RPCs of both protocol packages, as the library names them in
/// its messages ("ServerInfo: …").
const RPC_NAMES: &[&str] = &[
    "Channel",
    "CloseSession",
    "ConnectTerminal",
    "CreateSession",
    "Download",
    "Enroll",
    "Exec",
    "ExecFleet",
    "ExecWithStdin",
    "FileCopy",
    "FileCreateDirectory",
    "FileDelete",
    "FileGetInfo",
    "FileListDirectory",
    "FileMove",
    "FileRead",
    "FileWrite",
    "GetHistory",
    "GetOutput",
    "GetSessionByHostname",
    "GetSessionStatus",
    "HealthCheck",
    "IssueToken",
    "ListMachines",
    "ListSessions",
    "RefreshToken",
    "ResolveMachine",
    "SendInput",
    "SendResize",
    "SendSignal",
    "ServerInfo",
    "Upload",
];

/// A cause that is only an RPC's name.
fn is_rpc_name(piece: &str) -> bool {
    RPC_NAMES.contains(&piece)
}

/// The library's option names inside a cause, in the CLI's flags.
fn strip_library_words(piece: &str) -> String {
    piece
        .replace("pass overwrite=true", "leave out -n/--no-clobber")
        .replace("overwrite=true", "no -n/--no-clobber")
        .replace("allow replacing it", "leave out -n/--no-clobber")
        .replace("; the client reconnects by itself; retry the call", "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_connection_is_one_line_without_repeats_or_rpc_names() {
        let e = Error::Unavailable(
            "cannot connect to http://127.0.0.1:9: transport error: tcp connect error: \
             Connection refused (os error 111): Connection refused (os error 111): \
             check that the control plane is running and the address, port and TLS setting are right"
                .into(),
        );
        let line = one_line(&anyhow::Error::new(e));
        assert_eq!(
            line,
            "cannot connect to http://127.0.0.1:9: Connection refused (os error 111); \
             check --server (CMDOP_SERVER: http:// for plaintext, https:// for TLS) and that \
             `cmdop server` runs there"
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn a_refused_key_names_the_cli_settings_not_the_rpc() {
        let e = Error::Unauthenticated(
            "ServerInfo: invalid API key: check the API key or tokens".into(),
        );
        let line = one_line(&anyhow::Error::new(e));
        assert!(!line.contains("ServerInfo"), "{line}");
        assert!(line.starts_with("invalid API key; "), "{line}");
        assert!(line.contains("CMDOP_API_KEY"), "{line}");
    }

    #[test]
    fn an_unknown_machine_points_at_the_listing() {
        let e = Error::NotFound("ResolveMachine: no machine named 'nope'".into());
        let line = one_line(&anyhow::Error::new(e).context("cannot select the machine"));
        assert_eq!(
            line,
            "cannot select the machine: no machine named 'nope'; \
             see `cmdop machines` for the hostnames, then pass -H HOST"
        );
    }

    #[test]
    fn a_lost_connection_says_to_run_again_not_that_it_reconnects() {
        let e = Error::Unavailable(
            "Exec: the connection to the server was lost (h2 protocol error): \
             the client reconnects by itself; retry the call"
                .into(),
        );
        let line = one_line(&anyhow::Error::new(e));
        assert!(!line.contains("reconnects by itself"), "{line}");
        assert!(!line.contains("Exec:"), "{line}");
        assert!(line.ends_with("; run the command again"), "{line}");
    }

    #[test]
    fn library_option_names_become_flags() {
        let e = Error::InvalidArgument(
            "Upload: the target exists: pass overwrite=true to replace it".into(),
        );
        let line = one_line(&anyhow::Error::new(e));
        assert!(!line.contains("overwrite=true"), "{line}");
        assert!(line.contains("--no-clobber"), "{line}");
        let e = Error::InvalidArgument(
            "'a.txt' already exists; remove it or allow replacing it".into(),
        );
        let line = one_line(&anyhow::Error::new(e));
        assert!(
            line.ends_with("remove it or leave out -n/--no-clobber"),
            "{line}"
        );
    }

    #[test]
    fn the_server_s_advice_gives_way_to_the_cli_s() {
        let e = Error::Unavailable(
            "machine 'web-1' is offline: start its agent, or select another machine".into(),
        );
        assert_eq!(
            one_line(&anyhow::Error::new(e)),
            "machine 'web-1' is offline; \
             start the machine's agent (`cmdop agent`), or see `cmdop machines`"
        );
        let e = Error::Unauthenticated(
            "API key is invalid or revoked; create a new one with `cmdop admin create-key`".into(),
        );
        let line = one_line(&anyhow::Error::new(e));
        assert_eq!(line.matches("create-key").count(), 1, "{line}");
    }

    #[test]
    fn plain_errors_lose_repeated_causes() {
        let e = anyhow::anyhow!("Connection refused (os error 111)")
            .context("Connection refused (os error 111)")
            .context("cannot read the key file");
        assert_eq!(
            one_line(&e),
            "cannot read the key file: Connection refused (os error 111)"
        );
    }
}
