package netlab

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// LockDir holds one lock file per live lab, LockDir/LABNAME.lock, on which
// the lab's process holds an exclusive flock(2) for as long as the lab is
// open. The kernel drops the lock when that process dies, however it dies,
// so a lock file that can be locked belongs to a lab nobody owns any more.
const LockDir = "/run/netlab"

const idHexLen = 6 // random hex digits after the prefix in a lab name

// labLock is the held lock of one lab.
type labLock struct {
	f    *os.File
	path string
}

// acquireLabLock creates LockDir/name.lock already locked. The file is
// created and flocked under a temporary name and then hard-linked into
// place, so no other process can ever see it unlocked while its lab lives.
// It fails with os.ErrExist when a lab of that name exists.
func acquireLabLock(name string) (*labLock, error) {
	if err := os.MkdirAll(LockDir, 0o755); err != nil {
		return nil, fmt.Errorf("netlab: %w", err)
	}
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, err
	}
	tmp := filepath.Join(LockDir, ".tmp-"+hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("netlab: %w", err)
	}
	defer os.Remove(tmp)
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("netlab: flock %s: %w", tmp, err)
	}
	fmt.Fprintf(f, "%d\n", os.Getpid()) // for a human who looks; the lock is what counts
	final := filepath.Join(LockDir, name+".lock")
	if err := os.Link(tmp, final); err != nil {
		f.Close()
		return nil, fmt.Errorf("netlab: %w", err)
	}
	return &labLock{f: f, path: final}, nil
}

// release removes the lock file while still holding the lock, then drops it.
func (l *labLock) release() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := os.Remove(l.path)
	if errors.Is(err, os.ErrNotExist) {
		err = nil
	}
	l.f.Close()
	l.f = nil
	return err
}

// SweepOpts tunes Sweep.
type SweepOpts struct {
	// IncludeLive also removes labs whose owning process is still running.
	// That is for an operator cleaning up by hand; a test must never set it,
	// since it would tear down the labs of tests running in parallel.
	IncludeLive bool
}

// Sweep removes what earlier runs left behind: the named namespaces (and so
// the veths inside them) and lock files of labs with the given name prefix
// ("" means DefaultPrefix) whose owning process has died without closing
// them — a crashed or killed test binary, a `go test -timeout` panic.
//
// A lab is stale when nobody holds its lock file (see LockDir); a namespace
// that looks like a lab's (PREFIX + 6 hex digits + "-" + name) and has no
// lock file at all is an orphan and removed too. This criterion is exact,
// unlike an age threshold: a lab of a test that runs for an hour in
// parallel is never swept, and a lab left by a process killed a second ago
// is. New calls Sweep for its prefix, so leftovers go away on the next run.
//
// Sweep returns the names of the namespaces it removed.
func Sweep(prefix string, opts SweepOpts) ([]string, error) {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if err := checkPrefix(prefix); err != nil {
		return nil, err
	}
	var (
		removed []string
		errs    []error
	)
	nsByLab := map[string][]string{}
	if ents, err := os.ReadDir(NetnsDir); err == nil {
		for _, e := range ents {
			if lab, ok := labOfNetns(prefix, e.Name()); ok {
				nsByLab[lab] = append(nsByLab[lab], e.Name())
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("netlab: %w", err)
	}
	labs := map[string]bool{}
	for lab := range nsByLab {
		labs[lab] = true
	}
	if ents, err := os.ReadDir(LockDir); err == nil {
		for _, e := range ents {
			if lab, ok := strings.CutSuffix(e.Name(), ".lock"); ok && isLabName(prefix, lab) {
				labs[lab] = true
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("netlab: %w", err)
	}
	names := make([]string, 0, len(labs))
	for lab := range labs {
		names = append(names, lab)
	}
	sort.Strings(names)
	for _, lab := range names {
		r, err := sweepLab(lab, opts)
		removed = append(removed, r...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	return removed, errors.Join(errs...)
}

// sweepLab removes one lab if it is stale (or IncludeLive).
func sweepLab(lab string, opts SweepOpts) ([]string, error) {
	lockPath := filepath.Join(LockDir, lab+".lock")
	f, err := os.OpenFile(lockPath, os.O_RDWR, 0)
	switch {
	case err == nil:
		defer f.Close()
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			if err != unix.EWOULDBLOCK {
				return nil, fmt.Errorf("netlab: flock %s: %w", lockPath, err)
			}
			if !opts.IncludeLive {
				return nil, nil // its owner is alive
			}
		}
	case errors.Is(err, os.ErrNotExist):
		// No lock file: an orphan (a live lab takes its lock before it
		// creates its first namespace and drops it after its last).
	default:
		return nil, fmt.Errorf("netlab: %w", err)
	}
	var (
		removed []string
		errs    []error
	)
	// List again now that the lock is held: the namespaces cannot change.
	ents, err := os.ReadDir(NetnsDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("netlab: %w", err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), lab+"-") {
			if err := deleteNamed(e.Name()); err != nil {
				errs = append(errs, err)
				continue
			}
			removed = append(removed, e.Name())
		}
	}
	if f != nil && len(errs) == 0 {
		if err := os.Remove(lockPath); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("netlab: %w", err))
		}
	}
	return removed, errors.Join(errs...)
}

// isLabName reports whether s is PREFIX followed by exactly 6 lowercase hex
// digits.
func isLabName(prefix, s string) bool {
	id, ok := strings.CutPrefix(s, prefix)
	if !ok || len(id) != idHexLen {
		return false
	}
	for _, c := range id {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// labOfNetns returns the lab name of a namespace name LAB-NAME.
func labOfNetns(prefix, ns string) (string, bool) {
	lab, rest, ok := strings.Cut(ns, "-")
	if !ok || rest == "" || !isLabName(prefix, lab) {
		return "", false
	}
	return lab, true
}
