package cmdop

/*
#include "cmdopgo.h"
*/
import "C"

import (
	"io/fs"
	"time"
	"unsafe"
)

// FileType says what a directory entry is.
type FileType int

const (
	FileTypeUnknown   FileType = C.CMDOP_FILE_TYPE_UNKNOWN
	FileTypeFile      FileType = C.CMDOP_FILE_TYPE_FILE
	FileTypeDirectory FileType = C.CMDOP_FILE_TYPE_DIRECTORY
	FileTypeSymlink   FileType = C.CMDOP_FILE_TYPE_SYMLINK
)

// FileEntry is one directory entry on the remote machine.
type FileEntry struct {
	Name    string
	Path    string
	Type    FileType
	Size    int64
	Mode    fs.FileMode // permission bits
	ModTime time.Time   // zero when unknown
}

// FileList is one page of a directory listing.
type FileList struct {
	Path          string // the directory, as the agent resolved it
	Entries       []FileEntry
	NextPageToken string // empty on the last page
}

// ListFiles lists one page of directory path on the selected machine:
// pageToken "" for the first page, else the previous page's NextPageToken.
func (c *Client) ListFiles(path, pageToken string, includeHidden bool) (*FileList, error) {
	var pins cStrings
	defer pins.free()
	cpath, err := pins.add("the path", path)
	if err != nil {
		return nil, err
	}
	ctoken, err := pins.add("the page token", pageToken)
	if err != nil {
		return nil, err
	}
	hidden := C.int(0)
	if includeHidden {
		hidden = 1
	}
	var out *FileList
	err = c.use(func(p *C.cmdop_client) error {
		var list *C.cmdop_file_list
		var msg *C.char
		if err := check(C.cmdopgo_files_list(p, cpath, ctoken, hidden, &list, &msg), msg); err != nil {
			return err
		}
		defer C.cmdop_file_list_free(list)
		n := int(C.cmdop_file_list_count(list))
		out = &FileList{
			Path:          C.GoString(C.cmdop_file_list_path(list)),
			Entries:       make([]FileEntry, 0, n),
			NextPageToken: C.GoString(C.cmdop_file_list_next_page_token(list)),
		}
		for i := 0; i < n; i++ {
			e := C.cmdop_file_list_get(list, C.size_t(i))
			entry := FileEntry{
				Name: C.GoString(C.cmdop_file_entry_name(e)),
				Path: C.GoString(C.cmdop_file_entry_path(e)),
				Type: FileType(C.cmdop_file_entry_type(e)),
				Size: int64(C.cmdop_file_entry_size(e)),
				Mode: fs.FileMode(C.cmdop_file_entry_mode(e)) & fs.ModePerm,
			}
			if mtime := int64(C.cmdop_file_entry_mtime(e)); mtime > 0 {
				entry.ModTime = time.Unix(mtime, 0)
			}
			out.Entries = append(out.Entries, entry)
		}
		return nil
	})
	return out, err
}

// ReadFile returns the content of file path on the selected machine.
func (c *Client) ReadFile(path string) ([]byte, error) {
	cpath, err := cString("the path", path)
	if err != nil {
		return nil, err
	}
	defer C.free(unsafe.Pointer(cpath))
	var out []byte
	err = c.use(func(p *C.cmdop_client) error {
		var b *C.cmdop_bytes
		var msg *C.char
		if err := check(C.cmdopgo_file_read(p, cpath, &b, &msg), msg); err != nil {
			return err
		}
		defer C.cmdop_bytes_free(b)
		out = goBytes(C.cmdop_bytes_data(b), C.cmdop_bytes_len(b))
		if out == nil {
			out = []byte{}
		}
		return nil
	})
	return out, err
}

// WriteFile creates or replaces file path on the selected machine.
func (c *Client) WriteFile(path string, data []byte) error {
	var pins cStrings
	defer pins.free()
	cpath, err := pins.add("the path", path)
	if err != nil {
		return err
	}
	cdata, n := pins.addBytes(data)
	return c.use(func(p *C.cmdop_client) error {
		var msg *C.char
		return check(C.cmdopgo_file_write(p, cpath, unsafe.Pointer(cdata), n, &msg), msg)
	})
}
