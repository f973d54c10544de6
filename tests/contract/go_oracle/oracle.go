// An independent check of this project's transparency log with Go's golang.org/x/mod/sumdb
// (note and tlog), as Debian packages them (golang-golang-x-mod-dev). Run by
// tests/contract/test_tlog_go_oracle.py: it reads the leaves, the proofs and the signed
// checkpoint our log produced on stdin (JSON), recomputes every root itself, checks our proofs
// against its roots, opens our checkpoint with our note key, and answers its own proofs for
// the Python side to check (JSON on stdout). Any failure exits 1 with the reason on stderr.
package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type inclusion struct {
	Index int64    `json:"index"`
	Size  int64    `json:"size"`
	Proof []string `json:"proof"`
}

type consistency struct {
	Size1 int64    `json:"size1"`
	Size2 int64    `json:"size2"`
	Proof []string `json:"proof"`
}

type input struct {
	VKey        string        `json:"vkey"`
	Checkpoint  string        `json:"checkpoint"`
	Leaves      []string      `json:"leaves"`
	Roots       []string      `json:"roots"`
	Inclusion   []inclusion   `json:"inclusion"`
	Consistency []consistency `json:"consistency"`
}

type output struct {
	Inclusion   []inclusion   `json:"inclusion"`
	Consistency []consistency `json:"consistency"`
}

type memory []tlog.Hash

func (m memory) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		if x >= int64(len(m)) {
			return nil, fmt.Errorf("no stored hash %d", x)
		}
		out[i] = m[x]
	}
	return out, nil
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}

func hashes(in []string) []tlog.Hash {
	out := make([]tlog.Hash, len(in))
	for i, s := range in {
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil || len(b) != tlog.HashSize {
			fail("bad hash %q", s)
		}
		copy(out[i][:], b)
	}
	return out
}

func encode(in []tlog.Hash) []string {
	out := make([]string, len(in))
	for i, h := range in {
		out[i] = base64.StdEncoding.EncodeToString(h[:])
	}
	return out
}

func main() {
	var in input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		fail("input: %v", err)
	}
	var stored memory
	for i, s := range in.Leaves {
		data, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			fail("leaf %d: %v", i, err)
		}
		more, err := tlog.StoredHashes(int64(i), data, stored)
		if err != nil {
			fail("leaf %d: %v", i, err)
		}
		stored = append(stored, more...)
	}
	roots := make([]tlog.Hash, len(in.Leaves)+1)
	for n := 1; n <= len(in.Leaves); n++ {
		h, err := tlog.TreeHash(int64(n), stored)
		if err != nil {
			fail("tree hash %d: %v", n, err)
		}
		roots[n] = h
		if want := hashes([]string{in.Roots[n]})[0]; h != want {
			fail("root of size %d: Go has %v, ours is %v", n, h, want)
		}
	}
	verifier, err := note.NewVerifier(in.VKey)
	if err != nil {
		fail("our note key: %v", err)
	}
	opened, err := note.Open([]byte(in.Checkpoint), note.VerifierList(verifier))
	if err != nil {
		fail("our checkpoint: %v", err)
	}
	lines := strings.Split(opened.Text, "\n")
	if len(lines) < 4 || lines[0] != verifier.Name() {
		fail("checkpoint text %q", opened.Text)
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil || size != int64(len(in.Leaves)) {
		fail("checkpoint size %q", lines[1])
	}
	if root := hashes([]string{lines[2]})[0]; root != roots[size] {
		fail("checkpoint root %v is not Go's %v", root, roots[size])
	}
	var out output
	for _, p := range in.Inclusion {
		leaf, _ := base64.StdEncoding.DecodeString(in.Leaves[p.Index])
		if err := tlog.CheckRecord(hashes(p.Proof), p.Size, roots[p.Size], p.Index, tlog.RecordHash(leaf)); err != nil {
			fail("our inclusion proof %d in %d: %v", p.Index, p.Size, err)
		}
		mine, err := tlog.ProveRecord(p.Size, p.Index, stored)
		if err != nil {
			fail("prove %d in %d: %v", p.Index, p.Size, err)
		}
		out.Inclusion = append(out.Inclusion, inclusion{p.Index, p.Size, encode(mine)})
	}
	for _, p := range in.Consistency {
		if err := tlog.CheckTree(hashes(p.Proof), p.Size2, roots[p.Size2], p.Size1, roots[p.Size1]); err != nil {
			fail("our consistency proof %d to %d: %v", p.Size1, p.Size2, err)
		}
		mine, err := tlog.ProveTree(p.Size2, p.Size1, stored)
		if err != nil {
			fail("prove tree %d to %d: %v", p.Size1, p.Size2, err)
		}
		out.Consistency = append(out.Consistency, consistency{p.Size1, p.Size2, encode(mine)})
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fail("output: %v", err)
	}
}
