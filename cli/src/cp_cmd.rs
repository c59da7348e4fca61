//! `cmdop cp`: files and directory trees to and from a machine, with the
//! destination rules of cp and scp (an existing directory receives each
//! source under its own name; several sources need one), `-r` for trees,
//! `-p` for modes and times, and one progress bar per file on a terminal.

use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use clap::Args;
use cmdop::client::{CancelToken, Client, Error, ErrorKind, FileEntry, FileKind, TransferOptions};

use crate::connect::ConnectArgs;

#[derive(Args)]
pub struct CpArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Copy directories with everything in them (files, subdirectories,
    /// empty ones too, and symlinks as links). Uploading a tree makes its
    /// directories and links with the machine's `sh`, so a scoped key needs
    /// exec besides files:write.
    #[arg(long, short = 'r')]
    pub recursive: bool,
    /// Keep the permission bits and modification times of the source
    /// (like `cp -p`).
    #[arg(long = "preserve", short = 'p', alias = "preserve-mode")]
    pub preserve: bool,
    /// Create missing parent directories of the target.
    #[arg(long)]
    pub parents: bool,
    /// Fail instead of replacing an existing target.
    #[arg(long, short = 'n')]
    pub no_clobber: bool,
    /// No progress bars (they are only drawn when stderr is a terminal).
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Sources, then the target. Remote paths are HOST:PATH (relative
    /// paths start at the agent's home); all sources are on one side and
    /// the target on the other. An existing directory as target receives
    /// each source under its own name; several sources need one.
    #[arg(required = true, num_args = 2.., value_name = "SOURCE... TARGET")]
    pub paths: Vec<String>,
}

/// `HOST:PATH` when `spec` names a remote file. A local path containing
/// ':' can be written as ./name.
fn remote_spec(spec: &str) -> Option<(&str, &str)> {
    let (host, path) = spec.split_once(':')?;
    (!host.is_empty() && !host.contains('/')).then_some((host, path))
}

/// The last path component of `path` ("" when it has none).
fn base_name(path: &str) -> &str {
    path.trim_end_matches('/').rsplit('/').next().unwrap_or("")
}

/// `dir/name` on the machine ("" is the agent's home).
fn remote_join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// `text` quoted for a POSIX shell.
fn sh_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

pub async fn cp(args: CpArgs) -> anyhow::Result<std::process::ExitCode> {
    let (target, sources) = args
        .paths
        .split_last()
        .context("give a source and a target")?;
    let target_remote = remote_spec(target);
    let remote_sources: Vec<Option<(&str, &str)>> =
        sources.iter().map(|s| remote_spec(s)).collect();
    let all_remote = remote_sources.iter().all(Option::is_some);
    let all_local = remote_sources.iter().all(Option::is_none);
    let copy = Copy {
        opts: TransferOptions {
            keep_mode: args.preserve,
            no_clobber: args.no_clobber,
            create_parents: args.parents,
        },
        preserve: args.preserve,
        recursive: args.recursive,
        bars: !args.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        cancel: CancelToken::new(),
    };
    let on_signal = copy.cancel.clone();
    tokio::spawn(async move {
        crate::shutdown_signal().await;
        on_signal.cancel();
    });
    match (target_remote, all_local, all_remote) {
        (Some((host, dir)), true, _) => {
            let client = args.connect.connect().await?;
            client.set_machine(host).await?;
            let result = copy.upload_all(&client, sources, dir).await;
            client.close().await;
            result?;
        }
        (None, _, true) => {
            let hosts: Vec<&str> = remote_sources.iter().flatten().map(|(h, _)| *h).collect();
            if hosts.iter().any(|h| *h != hosts[0]) {
                anyhow::bail!(
                    "the sources are on different machines; copy from one machine per `cmdop cp`"
                );
            }
            let paths: Vec<&str> = remote_sources.iter().flatten().map(|(_, p)| *p).collect();
            let client = args.connect.connect().await?;
            client.set_machine(hosts[0]).await?;
            let result = copy.download_all(&client, &paths, Path::new(target)).await;
            client.close().await;
            result?;
        }
        (Some(_), false, _) => anyhow::bail!(
            "both sides are remote; copy through a local directory, or run cp on the machine \
             with `cmdop exec`"
        ),
        (None, _, false) if all_local => anyhow::bail!(
            "no path is remote; write the machine's side as HOST:PATH (e.g. web-1:/tmp/)"
        ),
        (None, _, false) => anyhow::bail!(
            "some sources are local and some remote; copy each way with its own `cmdop cp`"
        ),
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// One `cmdop cp` run's settings.
struct Copy {
    opts: TransferOptions,
    preserve: bool,
    recursive: bool,
    bars: bool,
    cancel: CancelToken,
}

/// What a local tree holds, relative to its root.
#[derive(Default)]
struct LocalTree {
    dirs: Vec<(PathBuf, std::fs::Metadata)>,
    files: Vec<(PathBuf, std::fs::Metadata)>,
    links: Vec<(PathBuf, PathBuf)>,
}

impl Copy {
    async fn upload_all(
        &self,
        client: &Client,
        sources: &[String],
        dir: &str,
    ) -> anyhow::Result<()> {
        let into_dir = dir.is_empty()
            || dir.ends_with('/')
            || remote_entry(client, dir)
                .await?
                .is_some_and(|e| e.kind == FileKind::Directory);
        if sources.len() > 1 && !into_dir {
            anyhow::bail!(
                "several sources need an existing directory on the machine as target; \
                 create it first or end the target with /"
            );
        }
        for source in sources {
            let local = Path::new(source);
            let meta = std::fs::metadata(local)
                .with_context(|| format!("cannot read {}; check the path", local.display()))?;
            let name = base_name(source);
            anyhow::ensure!(
                !name.is_empty() && name != "." && name != "..",
                "'{source}' names no file; give a file or directory by name"
            );
            let remote = if into_dir {
                remote_join(dir, name)
            } else {
                dir.to_string()
            };
            if meta.is_dir() {
                anyhow::ensure!(
                    self.recursive,
                    "'{source}' is a directory; pass -r to copy it with its contents"
                );
                self.upload_tree(client, local, &remote).await?;
            } else {
                self.upload_file(client, local, &remote, source).await?;
            }
        }
        Ok(())
    }

    async fn upload_file(
        &self,
        client: &Client,
        local: &Path,
        remote: &str,
        label: &str,
    ) -> anyhow::Result<()> {
        let bar = self.bar(label);
        let result = client
            .upload_from_path(
                local,
                remote,
                self.opts,
                progress(&bar),
                self.cancel.clone(),
            )
            .await;
        finish(bar, result.is_ok());
        result?;
        Ok(())
    }

    /// A local directory to `remote`: its directories first (through the
    /// machine's shell, as the file calls create no empty directory), then
    /// each file, then links, and with -p the modes and times.
    async fn upload_tree(&self, client: &Client, root: &Path, remote: &str) -> anyhow::Result<()> {
        let mut tree = LocalTree::default();
        walk(root, Path::new(""), &mut tree)?;
        let mut mkdir = format!("mkdir -p -- {}", sh_quote(remote));
        for (rel, _) in &tree.dirs {
            mkdir.push(' ');
            mkdir.push_str(&sh_quote(&remote_join(remote, &rel.to_string_lossy())));
        }
        run_script(client, &mkdir).await?;
        for (rel, _) in &tree.files {
            let target = remote_join(remote, &rel.to_string_lossy());
            let label = root.join(rel).display().to_string();
            self.upload_file(client, &root.join(rel), &target, &label)
                .await?;
        }
        let mut finish_script = String::new();
        let ln = if self.opts.no_clobber {
            "ln -s"
        } else {
            "ln -sfn"
        };
        for (rel, to) in &tree.links {
            finish_script.push_str(&format!(
                "{ln} -- {} {}\n",
                sh_quote(&to.to_string_lossy()),
                sh_quote(&remote_join(remote, &rel.to_string_lossy()))
            ));
        }
        if self.preserve {
            for (rel, meta) in &tree.files {
                let path = remote_join(remote, &rel.to_string_lossy());
                finish_script.push_str(&format!(
                    "touch -m -d @{} -- {}\n",
                    meta.mtime(),
                    sh_quote(&path)
                ));
            }
            // Deepest first: setting a directory's time must come after
            // everything inside it changed, and a read-only mode after its
            // last write.
            let root_meta = std::fs::metadata(root)?;
            let mut dirs: Vec<(String, &std::fs::Metadata)> = tree
                .dirs
                .iter()
                .map(|(rel, m)| (remote_join(remote, &rel.to_string_lossy()), m))
                .collect();
            dirs.reverse();
            dirs.push((remote.to_string(), &root_meta));
            for (path, meta) in dirs {
                finish_script.push_str(&format!(
                    "touch -m -d @{} -- {p} && chmod {:o} -- {p}\n",
                    meta.mtime(),
                    meta.mode() & 0o7777,
                    p = sh_quote(&path)
                ));
            }
        }
        if !finish_script.is_empty() {
            run_script(client, &format!("set -e\n{finish_script}")).await?;
        }
        Ok(())
    }

    async fn download_all(
        &self,
        client: &Client,
        sources: &[&str],
        target: &Path,
    ) -> anyhow::Result<()> {
        let into_dir = target.is_dir();
        if sources.len() > 1 && !into_dir {
            anyhow::bail!(
                "several sources need an existing local directory as target; create {} first",
                target.display()
            );
        }
        for source in sources {
            let name = base_name(source);
            anyhow::ensure!(
                !name.is_empty() && name != "." && name != "..",
                "'{source}' names no file; give the remote file or directory by name"
            );
            let local = if into_dir {
                target.join(name)
            } else {
                target.to_path_buf()
            };
            let entry = if self.recursive {
                remote_entry(client, source).await?
            } else {
                None
            };
            match entry {
                Some(e) if e.kind == FileKind::Directory => {
                    self.download_tree(client, source, &local, &e).await?;
                }
                _ => self.download_file(client, source, &local, None).await?,
            }
        }
        Ok(())
    }

    async fn download_file(
        &self,
        client: &Client,
        remote: &str,
        local: &Path,
        mtime: Option<i64>,
    ) -> anyhow::Result<()> {
        let bar = self.bar(remote);
        let result = client
            .download_to_path(
                remote,
                local,
                self.opts,
                progress(&bar),
                self.cancel.clone(),
            )
            .await;
        finish(bar, result.is_ok());
        if let Err(Error::InvalidArgument(msg)) = &result {
            if !self.recursive && msg.contains("directory") {
                anyhow::bail!("{msg}; pass -r to copy a directory with its contents");
            }
        }
        result?;
        if let (true, Some(secs)) = (self.preserve, mtime) {
            set_mtime(local, secs)?;
        }
        Ok(())
    }

    /// A remote directory to `local`, created with everything in it.
    async fn download_tree(
        &self,
        client: &Client,
        remote: &str,
        local: &Path,
        top: &FileEntry,
    ) -> anyhow::Result<()> {
        // Directories to finish (-p) after their contents, deepest last.
        let mut dirs: Vec<(PathBuf, FileEntry)> = Vec::new();
        let mut pending: Vec<(String, PathBuf, FileEntry)> =
            vec![(remote.to_string(), local.to_path_buf(), top.clone())];
        while let Some((rdir, ldir, entry)) = pending.pop() {
            match std::fs::create_dir(&ldir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && ldir.is_dir() => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("cannot create the directory {}", ldir.display()))
                }
            }
            dirs.push((ldir.clone(), entry));
            for e in list_all(client, &rdir).await? {
                let rpath = remote_join(&rdir, &e.name);
                let lpath = ldir.join(&e.name);
                match e.kind {
                    FileKind::Directory => pending.push((rpath, lpath, e)),
                    FileKind::Symlink => {
                        if lpath.symlink_metadata().is_ok() {
                            anyhow::ensure!(
                                !self.opts.no_clobber,
                                "{} already exists; remove it or leave out -n",
                                lpath.display()
                            );
                            std::fs::remove_file(&lpath)
                                .with_context(|| format!("cannot replace {}", lpath.display()))?;
                        }
                        std::os::unix::fs::symlink(&e.symlink_target, &lpath).with_context(
                            || format!("cannot create the link {}", lpath.display()),
                        )?;
                    }
                    _ => {
                        self.download_file(client, &rpath, &lpath, Some(e.mtime))
                            .await?
                    }
                }
            }
        }
        if self.preserve {
            for (path, entry) in dirs.iter().rev() {
                if entry.mode != 0 {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(entry.mode))
                        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
                }
                set_mtime(path, entry.mtime)?;
            }
        }
        Ok(())
    }

    /// A progress bar named after the file, when bars are wanted.
    fn bar(&self, name: &str) -> Option<Arc<FileBar>> {
        self.bars.then(|| {
            Arc::new(FileBar {
                name: name.to_string(),
                bar: OnceLock::new(),
            })
        })
    }
}

/// One file's progress bar, drawn from the first progress report on: a
/// transfer that fails before it starts draws none (an empty bar would read
/// as "0 B/0 B", complete).
struct FileBar {
    name: String,
    bar: OnceLock<indicatif::ProgressBar>,
}

/// The callback that moves `bar`.
fn progress(bar: &Option<Arc<FileBar>>) -> impl Fn(u64, u64) + Send + Sync {
    let bar = bar.clone();
    move |done, total| {
        if let Some(file) = &bar {
            let bar = file.bar.get_or_init(|| {
                let bar = indicatif::ProgressBar::new(total);
                if let Ok(style) = indicatif::ProgressStyle::with_template(
                    "{msg} {bytes:>10}/{total_bytes:<10} {wide_bar} {bytes_per_sec:>12} {eta:>4}",
                ) {
                    bar.set_style(style);
                }
                bar.set_message(file.name.clone());
                bar
            });
            bar.set_length(total);
            bar.set_position(done);
        }
    }
}

/// Leaves a finished bar on a line of its own; removes a failed one, so
/// that nothing on screen looks like success (the error follows).
fn finish(bar: Option<Arc<FileBar>>, ok: bool) {
    let Some(bar) = bar.as_ref().and_then(|b| b.bar.get()) else {
        return;
    };
    if ok {
        bar.finish();
        // indicatif leaves the cursor at the end of the bar.
        eprintln!();
    } else {
        bar.finish_and_clear();
    }
}

/// The entry `path` names on the machine, `None` when there is none.
async fn remote_entry(client: &Client, path: &str) -> anyhow::Result<Option<FileEntry>> {
    let trimmed = path.trim_end_matches('/');
    let (parent, name) = match trimmed.rsplit_once('/') {
        Some(("", name)) => ("/", name),
        Some((parent, name)) => (parent, name),
        None if trimmed.is_empty() && path.starts_with('/') => return Ok(None),
        None => (".", trimmed),
    };
    if name.is_empty() || name == "." {
        return Ok(None);
    }
    match list_all(client, parent).await {
        Ok(entries) => Ok(entries.into_iter().find(|e| e.name == name)),
        // Missing, or not for this key to list (a key may write files
        // without reading them): the path is taken as it is written.
        Err(e) => match e.downcast_ref::<Error>().map(Error::kind) {
            Some(ErrorKind::NotFound | ErrorKind::NotAllowed | ErrorKind::PermissionDenied) => {
                Ok(None)
            }
            _ => Err(e),
        },
    }
}

/// Every entry of a remote directory, hidden ones included.
async fn list_all(client: &Client, dir: &str) -> anyhow::Result<Vec<FileEntry>> {
    let mut entries = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = client.list_files(dir, token.as_deref(), true).await?;
        entries.extend(page.entries);
        if page.next_page_token.is_empty() {
            return Ok(entries);
        }
        token = Some(page.next_page_token);
    }
}

/// Runs `script` with the machine's shell (fed on stdin, so its length is
/// not bound by the argument limit); fails with its stderr.
async fn run_script(client: &Client, script: &str) -> anyhow::Result<()> {
    let opts = cmdop::client::ExecOptions {
        stdin: script.as_bytes().to_vec(),
        timeout: Some(crate::remote_run::NO_TIME_LIMIT),
        ..Default::default()
    };
    let out = client
        .execute_with("sh", &opts, |_, _| {}, CancelToken::new())
        .await?;
    if out.exit_code != 0 || out.signal != 0 {
        anyhow::bail!(
            "creating directories and links on the machine failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Collects `root/rel`'s directories, files and links, parents first.
fn walk(root: &Path, rel: &Path, tree: &mut LocalTree) -> anyhow::Result<()> {
    let dir = root.join(rel);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot read the directory {}", dir.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot read the directory {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let rel = rel.join(entry.file_name());
        let path = root.join(&rel);
        let meta = std::fs::symlink_metadata(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if meta.file_type().is_symlink() {
            let to = std::fs::read_link(&path)
                .with_context(|| format!("cannot read the link {}", path.display()))?;
            tree.links.push((rel, to));
        } else if meta.is_dir() {
            tree.dirs.push((rel.clone(), meta));
            walk(root, &rel, tree)?;
        } else if meta.is_file() {
            tree.files.push((rel, meta));
        } else {
            eprintln!(
                "cmdop: skipping {}: only files, directories and links are copied",
                path.display()
            );
        }
    }
    Ok(())
}

/// Sets the modification time of a local file or directory (Unix seconds).
fn set_mtime(path: &Path, secs: i64) -> anyhow::Result<()> {
    let Ok(secs) = u64::try_from(secs) else {
        return Ok(());
    };
    let when: SystemTime = UNIX_EPOCH + Duration::from_secs(secs);
    std::fs::File::open(path)
        .and_then(|f| f.set_modified(when))
        .with_context(|| format!("cannot set the time of {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_specs_need_a_host_before_the_colon() {
        assert_eq!(remote_spec("web-1:/tmp/"), Some(("web-1", "/tmp/")));
        assert_eq!(remote_spec("web-1:"), Some(("web-1", "")));
        assert_eq!(remote_spec("./a:b"), None);
        assert_eq!(remote_spec("/x/y:z"), None);
        assert_eq!(remote_spec(":x"), None);
        assert_eq!(remote_spec("plain"), None);
        assert_eq!(base_name("/var/log/syslog"), "syslog");
        assert_eq!(base_name("dir/"), "dir");
        assert_eq!(base_name(""), "");
    }

    #[test]
    fn remote_paths_join_and_quote() {
        assert_eq!(remote_join("", "a"), "a");
        assert_eq!(remote_join("/tmp/", "a"), "/tmp/a");
        assert_eq!(remote_join("/tmp", "a"), "/tmp/a");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }
}
