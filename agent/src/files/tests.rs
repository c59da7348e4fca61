//! Tests of the file operations against a real temp directory.

use std::{fs, os::unix::fs::PermissionsExt};

use cmdop_proto::terminal::{
    file_operation_request::Operation, file_operation_result::Result as R, FileCopyRequest,
    FileCreateDirectoryRequest, FileDeleteRequest, FileGetInfoRequest, FileListDirectoryRequest,
    FileMoveRequest, FileOperationRequest, FileOperationResult, FileReadRequest, FileWriteRequest,
    StreamFileType,
};

use super::handle;

fn op(home: &std::path::Path, operation: Operation) -> FileOperationResult {
    handle(
        FileOperationRequest {
            request_id: "r1".into(),
            operation: Some(operation),
        },
        home,
    )
}

fn list(
    home: &std::path::Path,
    path: &str,
    hidden: bool,
    size: i32,
    token: &str,
) -> FileOperationResult {
    op(
        home,
        Operation::ListDirectory(FileListDirectoryRequest {
            path: path.into(),
            page_size: size,
            page_token: token.into(),
            include_hidden: hidden,
            ..Default::default()
        }),
    )
}

#[test]
fn list_sorts_dirs_first_pages_and_hides_dotfiles() {
    let home = tempfile::tempdir().unwrap();
    let d = home.path().join("d");
    fs::create_dir(&d).unwrap();
    for name in ["b.txt", "a.txt", ".hidden", "c.rs"] {
        fs::write(d.join(name), name).unwrap();
    }
    fs::create_dir(d.join("zdir")).unwrap();
    std::os::unix::fs::symlink("a.txt", d.join("link")).unwrap();

    let res = list(home.path(), "d", false, 0, "");
    assert!(res.success, "{res:?}");
    assert_eq!(res.request_id, "r1");
    let Some(R::ListDirectory(page)) = res.result else {
        panic!("no result")
    };
    let names: Vec<_> = page.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["zdir", "a.txt", "b.txt", "c.rs", "link"]);
    assert_eq!(page.total_count, 5);
    assert!(!page.has_more);
    assert_eq!(page.next_page_token, "");
    let link = &page.entries[4];
    assert_eq!(link.r#type, StreamFileType::StreamSymlink as i32);
    assert_eq!(link.symlink_target, "a.txt");
    let a = &page.entries[1];
    assert_eq!(a.size, 5);
    assert_eq!(a.path, d.join("a.txt").display().to_string());
    assert!(a.is_readable && a.is_writable && !a.is_hidden);
    assert_eq!(a.mime_type, "text/plain");
    assert!(a.modified_at.is_some());
    assert_eq!(
        page.entries[0].r#type,
        StreamFileType::StreamDirectory as i32
    );

    // Hidden files on request; paging with an opaque token.
    let Some(R::ListDirectory(p1)) = list(home.path(), "d", true, 2, "").result else {
        panic!()
    };
    assert_eq!(p1.total_count, 6);
    assert!(p1.has_more);
    assert_eq!(
        p1.entries
            .iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>(),
        ["zdir", ".hidden"]
    );
    assert!(p1.entries[1].is_hidden);
    let mut seen = 2;
    let mut token = p1.next_page_token;
    while !token.is_empty() {
        let Some(R::ListDirectory(p)) = list(home.path(), "d", true, 2, &token).result else {
            panic!()
        };
        seen += p.entries.len();
        assert_eq!(p.has_more, !p.next_page_token.is_empty());
        token = p.next_page_token;
    }
    assert_eq!(seen, 6);

    let bad = list(home.path(), "d", true, 2, "garbage");
    assert!(!bad.success);
    assert_eq!(bad.error_code, "INVALID_ARGUMENT");
}

#[test]
fn list_errors_have_codes() {
    let home = tempfile::tempdir().unwrap();
    let missing = list(home.path(), "nope", false, 0, "");
    assert!(!missing.success);
    assert_eq!(missing.error_code, "NOT_FOUND");
    assert!(
        missing.error_message.contains("nope"),
        "{}",
        missing.error_message
    );
    assert!(missing.result.is_none());

    fs::write(home.path().join("f"), "x").unwrap();
    assert_eq!(
        list(home.path(), "f", false, 0, "").error_code,
        "NOT_A_DIRECTORY"
    );
}

#[test]
fn write_is_atomic_replaces_and_keeps_mode() {
    let home = tempfile::tempdir().unwrap();
    let write = |path: &str, content: &[u8], parents: bool| {
        op(
            home.path(),
            Operation::WriteFile(FileWriteRequest {
                path: path.into(),
                content: content.to_vec().into(),
                overwrite: false,
                create_parents: parents,
            }),
        )
    };
    let res = write("~/a/b/new.txt", b"hello", false);
    assert_eq!(res.error_code, "NOT_FOUND", "{res:?}");
    assert!(res.error_message.contains("create_parents"));

    let res = write("~/a/b/new.txt", b"hello", true);
    assert!(res.success, "{res:?}");
    let Some(R::WriteFile(w)) = res.result else {
        panic!()
    };
    assert_eq!(w.bytes_written, 5);
    assert_eq!(w.entry.unwrap().size, 5);
    let target = home.path().join("a/b/new.txt");
    assert_eq!(fs::read(&target).unwrap(), b"hello");

    // overwrite=false still replaces (docs/PROTOCOL.md, "File writes"), keeping the mode.
    fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).unwrap();
    assert!(write("a/b/new.txt", b"bye", false).success);
    assert_eq!(fs::read(&target).unwrap(), b"bye");
    assert_eq!(
        fs::metadata(&target).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // No temp files left next to it.
    assert_eq!(fs::read_dir(home.path().join("a/b")).unwrap().count(), 1);

    assert_eq!(write("a", b"x", false).error_code, "IS_DIRECTORY");
}

#[test]
fn read_ranges_and_errors() {
    let home = tempfile::tempdir().unwrap();
    fs::write(home.path().join("f.txt"), b"0123456789").unwrap();
    let read = |path: &str, offset: i64, length: i64| {
        op(
            home.path(),
            Operation::ReadFile(FileReadRequest {
                path: path.into(),
                offset,
                length,
                transcode: false,
            }),
        )
    };
    let Some(R::ReadFile(r)) = read("f.txt", 0, 0).result else {
        panic!()
    };
    assert_eq!(&r.content[..], b"0123456789");
    assert_eq!(r.total_size, 10);
    assert!(!r.is_truncated);
    assert_eq!(r.encoding, "utf-8");
    let Some(R::ReadFile(r)) = read("f.txt", 3, 4).result else {
        panic!()
    };
    assert_eq!(&r.content[..], b"3456");
    assert!(!r.is_truncated);
    let Some(R::ReadFile(r)) = read("f.txt", 20, 0).result else {
        panic!()
    };
    assert!(r.content.is_empty());

    assert_eq!(read("missing", 0, 0).error_code, "NOT_FOUND");
    assert_eq!(read("", 0, 0).error_code, "IS_DIRECTORY");
    assert_eq!(read("f.txt", -1, 0).error_code, "INVALID_ARGUMENT");

    let locked = home.path().join("locked");
    fs::write(&locked, b"secret").unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
    if !nix::unistd::getuid().is_root() {
        assert_eq!(read("locked", 0, 0).error_code, "PERMISSION_DENIED");
    }
}

#[test]
fn mkdir_delete_move_copy_info() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let mkdir = |path: &str, parents: bool| {
        op(
            h,
            Operation::CreateDirectory(FileCreateDirectoryRequest {
                path: path.into(),
                create_parents: parents,
            }),
        )
    };
    assert_eq!(mkdir("x/y", false).error_code, "NOT_FOUND");
    let res = mkdir("x/y", true);
    assert!(res.success, "{res:?}");
    assert!(mkdir("x/y", true).success, "mkdir -p is idempotent");
    assert_eq!(mkdir("x/y", false).error_code, "ALREADY_EXISTS");
    fs::write(h.join("x/y/f"), b"abc").unwrap();

    // Copy needs recursive for directories.
    let copy = |from: &str, to: &str, recursive: bool, overwrite: bool| {
        op(
            h,
            Operation::CopyFile(FileCopyRequest {
                source_path: from.into(),
                destination_path: to.into(),
                overwrite,
                recursive,
            }),
        )
    };
    assert_eq!(copy("x", "x2", false, false).error_code, "IS_DIRECTORY");
    let res = copy("x", "x2", true, false);
    assert!(res.success, "{res:?}");
    let Some(R::CopyFile(c)) = res.result else {
        panic!()
    };
    assert_eq!(c.bytes_copied, 3);
    assert_eq!(fs::read(h.join("x2/y/f")).unwrap(), b"abc");
    assert_eq!(
        copy("x", "x/inside", true, false).error_code,
        "INVALID_ARGUMENT"
    );
    assert_eq!(
        copy("x/y/f", "x2/y/f", false, false).error_code,
        "ALREADY_EXISTS"
    );
    assert!(copy("x/y/f", "x2/y/f", false, true).success);

    // Move.
    let res = op(
        h,
        Operation::MoveFile(FileMoveRequest {
            source_path: "x2".into(),
            destination_path: "x3".into(),
            overwrite: false,
        }),
    );
    assert!(res.success, "{res:?}");
    let Some(R::MoveFile(m)) = res.result else {
        panic!()
    };
    assert_eq!(m.entry.unwrap().name, "x3");
    assert!(!h.join("x2").exists());

    // Info.
    let Some(R::GetInfo(i)) = op(
        h,
        Operation::GetInfo(FileGetInfoRequest {
            path: "x3/y/f".into(),
        }),
    )
    .result
    else {
        panic!()
    };
    let e = i.entry.unwrap();
    assert_eq!((e.name.as_str(), e.size), ("f", 3));

    // Delete: non-empty dir needs recursive.
    let del = |path: &str, recursive: bool| {
        op(
            h,
            Operation::DeleteFile(FileDeleteRequest {
                path: path.into(),
                recursive,
            }),
        )
    };
    let res = del("x3", false);
    assert_eq!(res.error_code, "DIRECTORY_NOT_EMPTY", "{res:?}");
    let res = del("x3", true);
    let Some(R::DeleteFile(d)) = res.result else {
        panic!("{res:?}")
    };
    assert_eq!((d.files_deleted, d.dirs_deleted), (1, 2));
    assert!(!h.join("x3").exists());
    assert_eq!(del("x3", true).error_code, "NOT_FOUND");
}

#[test]
fn missing_operation_is_unsupported() {
    let home = tempfile::tempdir().unwrap();
    let res = handle(
        FileOperationRequest {
            request_id: "z".into(),
            operation: None,
        },
        home.path(),
    );
    assert!(!res.success);
    assert_eq!(res.error_code, "UNSUPPORTED");
    assert_eq!(res.request_id, "z");
}

#[test]
fn mutating_operations_refuse_an_empty_path_and_change_nothing() {
    let home = tempfile::tempdir().unwrap();
    fs::write(home.path().join("keep.txt"), "keep").unwrap();
    let ops = [
        Operation::DeleteFile(FileDeleteRequest {
            path: String::new(),
            recursive: true,
        }),
        Operation::WriteFile(FileWriteRequest {
            path: String::new(),
            content: b"x".to_vec().into(),
            overwrite: true,
            create_parents: false,
        }),
        Operation::CreateDirectory(FileCreateDirectoryRequest {
            path: " ".into(),
            create_parents: true,
        }),
        Operation::MoveFile(FileMoveRequest {
            source_path: "keep.txt".into(),
            destination_path: String::new(),
            overwrite: true,
        }),
        Operation::CopyFile(FileCopyRequest {
            source_path: String::new(),
            destination_path: "copy".into(),
            overwrite: true,
            recursive: true,
        }),
    ];
    for operation in ops {
        let res = op(home.path(), operation);
        assert!(!res.success);
        assert_eq!(res.error_code, "INVALID_ARGUMENT", "{res:?}");
        assert!(res.error_message.contains("empty"), "{res:?}");
    }
    assert!(home.path().is_dir(), "home still exists");
    assert_eq!(fs::read_dir(home.path()).unwrap().count(), 1);
    assert_eq!(
        fs::read_to_string(home.path().join("keep.txt")).unwrap(),
        "keep"
    );
}

#[test]
fn deleting_home_or_root_is_refused() {
    let home = tempfile::tempdir().unwrap();
    fs::write(home.path().join("keep.txt"), "keep").unwrap();
    let home_str = home.path().display().to_string();
    for path in ["~", ".", "/", "//", home_str.as_str(), "sub/.."] {
        let res = op(
            home.path(),
            Operation::DeleteFile(FileDeleteRequest {
                path: path.into(),
                recursive: true,
            }),
        );
        assert!(!res.success, "{path}: {res:?}");
        assert!(
            ["PERMISSION_DENIED", "INVALID_ARGUMENT", "NOT_FOUND"]
                .contains(&res.error_code.as_str()),
            "{path}: {res:?}"
        );
    }
    assert!(home.path().join("keep.txt").exists());
    // A symlink to home is just a link: deleting it removes the link only.
    std::os::unix::fs::symlink(home.path(), home.path().join("me")).unwrap();
    let res = op(
        home.path(),
        Operation::DeleteFile(FileDeleteRequest {
            path: "me".into(),
            recursive: true,
        }),
    );
    assert!(res.success, "{res:?}");
    assert!(home.path().join("keep.txt").exists());
}

#[test]
fn copy_over_a_destination_symlink_replaces_the_link() {
    let home = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    fs::write(&victim, "untouched").unwrap();
    fs::write(home.path().join("src.txt"), "new content").unwrap();
    std::os::unix::fs::symlink(&victim, home.path().join("dst")).unwrap();
    let res = op(
        home.path(),
        Operation::CopyFile(FileCopyRequest {
            source_path: "src.txt".into(),
            destination_path: "dst".into(),
            overwrite: true,
            recursive: false,
        }),
    );
    assert!(res.success, "{res:?}");
    assert_eq!(fs::read_to_string(&victim).unwrap(), "untouched");
    let dst = home.path().join("dst");
    assert!(fs::symlink_metadata(&dst).unwrap().file_type().is_file());
    assert_eq!(fs::read_to_string(&dst).unwrap(), "new content");
    // No temp file is left behind.
    assert_eq!(fs::read_dir(home.path()).unwrap().count(), 2);
}
