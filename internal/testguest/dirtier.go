package testguest

// DirtierScript is an rc.d script that rewrites 16 MiB of guest memory
// over and over, as fast as the guest can copy a file in a tmpfs, after
// printing "symvirt-dirtier-ready": a guest that dirties memory faster than
// a live copy of it can take.
const DirtierScript = `#!/bin/sh
( mkdir -p /run/d && mount -t tmpfs -o size=64m tmpfs /run/d
  yes symvirt-dirty | head -c 16777216 > /run/d/src
  echo symvirt-dirtier-ready
  while :; do cp /run/d/src /run/d/dst; done ) </dev/null >/dev/console 2>&1 &
`
