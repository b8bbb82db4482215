package testguest

import (
	"fmt"
	"regexp"
)

// DiskPatternScript is an rc.d script that makes the guest write a checked
// pattern to /dev/vda for ever: write n goes to 64 KiB block n%blocks as
// the line "symvirt-pattern <n>" (fsynced); every 16 writes it drops its
// caches and reads every block back from the disk, expecting in each the
// last n that went there (as its RAM remembers), and prints
// "symvirt-pattern-ok N" or "symvirt-pattern-BAD N: ...". A disk restored
// from another instant than the RAM shows as BAD.
func DiskPatternScript(blocks int) string {
	return fmt.Sprintf(`#!/bin/sh
( blocks=%d; n=0
  while :; do
    i=$((n %% blocks))
    printf 'symvirt-pattern %%08d\n' $n | dd of=/dev/vda bs=65536 seek=$i conv=notrunc,fsync 2>/dev/null
    n=$((n + 1))
    if [ $((n %% 16)) -eq 0 ]; then
      sync; echo 3 > /proc/sys/vm/drop_caches
      bad=""; i=0
      while [ $i -lt $blocks ]; do
        got=$(dd if=/dev/vda bs=512 skip=$((i * 128)) count=1 2>/dev/null | head -n1 | tr -d '\0')
        want=""
        last=$((n - 1))
        if [ $last -ge $i ]; then want=$(printf 'symvirt-pattern %%08d' $((last - (last - i) %% blocks))); fi
        if [ "$got" != "$want" ]; then bad="$bad block $i got '$got' want '$want';"; fi
        i=$((i + 1))
      done
      if [ -z "$bad" ]; then echo "symvirt-pattern-ok $n"; else echo "symvirt-pattern-BAD $n:$bad"; fi
    fi
  done ) &
`, blocks)
}

// DiskPatternOK matches a good check of DiskPatternScript's guest (the
// write count is its submatch).
var DiskPatternOK = regexp.MustCompile(`symvirt-pattern-ok (\d+)`)
