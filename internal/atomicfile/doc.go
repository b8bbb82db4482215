// Package atomicfile is the project's one definition of a durable file
// write and a durable directory creation: a crash leaves either the old
// file or the new one, never a torn one, never a stray temporary file, and
// never a created directory whose entry is lost.
package atomicfile
