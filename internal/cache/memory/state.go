package memory

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"unicode/utf8"
)

// stateVersion is the state file's format:
//
//	{"version":1,"entries":{"<key>":"<standard base64 of the value>"}}
//
// A reader refuses any other version rather than guess.
const stateVersion = 1

type stateFile struct {
	Version int               `json:"version"`
	Entries map[string][]byte `json:"entries"` // []byte is base64 in JSON
}

// load reads the durable entries in file. A missing file holds none, as long
// as its directory exists. Errors name the file and never quote its contents:
// the values are grants.
func load(file string) (map[string][]byte, error) {
	data, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		if err := statFileDir(file); err != nil {
			return nil, fmt.Errorf("memory: state file %s: %w", file, err)
		}
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("memory: read state file: %w", err) // *PathError names the file
	}
	var st stateFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st); err != nil {
		// json's messages may quote the input; say only where it broke.
		return nil, fmt.Errorf("memory: state file %s is corrupt: not a valid version %d state near byte %d",
			file, stateVersion, dec.InputOffset())
	}
	if dec.More() {
		return nil, fmt.Errorf("memory: state file %s is corrupt: data after the state object", file)
	}
	if st.Version != stateVersion {
		return nil, fmt.Errorf("memory: state file %s has version %d; want %d", file, st.Version, stateVersion)
	}
	return st.Entries, nil
}

// store replaces file with one holding entries, atomically: it writes a
// temporary file in the same directory (mode 0600), syncs it, renames it over
// file and syncs the directory. On failure no temporary file is left.
func store(file string, entries map[string][]byte) (err error) {
	data, err := json.Marshal(stateFile{Version: stateVersion, Entries: entries})
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	dir, base := filepath.Split(file)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, "."+base+".tmp-*") // mode 0600
	if err != nil {
		return fmt.Errorf("write state file: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("write state file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("write state file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write state file: %w", err)
	}
	if err := os.Rename(tmp.Name(), file); err != nil {
		return fmt.Errorf("write state file: %w", err)
	}
	// Make the rename itself durable. Not every platform can sync a
	// directory, and the data is already safe in the new file, so a failure
	// here is not an error.
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}

// validKey reports whether key survives a JSON round trip unchanged.
func validKey(key string) bool { return utf8.ValidString(key) }

// statFileDir reports whether the directory that will hold file exists, so
// that a misconfigured path fails at New rather than on the first write.
func statFileDir(file string) error {
	dir := filepath.Dir(file)
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	return nil
}
