//! `cmdop completions SHELL` and `cmdop man --out DIR`: shell completions
//! and manual pages generated from the argument definitions, so they never
//! drift from the real flags. `make install` runs both.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

#[derive(Args)]
pub struct CompletionsArgs {
    /// The shell to complete for; the script goes to stdout. Bash:
    /// `cmdop completions bash > ~/.local/share/bash-completion/completions/cmdop`.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args)]
pub struct ManArgs {
    /// Directory to write the pages to (cmdop.1, cmdop-exec.1, …); created
    /// when missing.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Prints the completion script of `cmd` for `args.shell`.
pub fn completions(args: CompletionsArgs, mut cmd: clap::Command) -> anyhow::Result<()> {
    let name = cmd.get_name().to_string();
    clap_complete::generate(args.shell, &mut cmd, name, &mut std::io::stdout());
    Ok(())
}

/// Writes one manual page per visible command of `cmd` into `args.out`.
pub fn man(args: ManArgs, cmd: clap::Command) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out).with_context(|| {
        format!(
            "cannot create {}; pass a writable directory to --out",
            args.out.display()
        )
    })?;
    clap_mangen::generate_to(cmd, &args.out).with_context(|| {
        format!(
            "cannot write the manual pages to {}; pass a writable directory to --out",
            args.out.display()
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_visible_command_gets_a_page_and_hidden_ones_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("man1");
        man(ManArgs { out: out.clone() }, crate::Cli::command()).expect("pages");
        for page in [
            "cmdop.1",
            "cmdop-exec.1",
            "cmdop-cp.1",
            "cmdop-completions.1",
        ] {
            let text = std::fs::read_to_string(out.join(page)).expect(page);
            assert!(
                text.starts_with(".ie") || text.contains(".TH"),
                "{page}: {text}"
            );
        }
        let exec = std::fs::read_to_string(out.join("cmdop-exec.1")).expect("exec page");
        assert!(
            exec.contains("Exit status"),
            "the exit table is in the page"
        );
        assert!(!out.join("cmdop-man.1").exists());
        assert!(!out.join("cmdop-agent-reaper.1").exists());
    }
}
