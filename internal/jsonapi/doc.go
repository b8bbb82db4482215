// Package jsonapi is the wire format hostd and coord share, and its one
// server and client side: JSON replies; errors as
// {"error":{"code","message"}}, where the code maps a sentinel to an HTTP
// status and back to the same sentinel on the client; request bodies
// bounded and decoded strictly (an unknown field is an error); long
// operations as NDJSON streams of progress lines ended by one line with
// the result, the error, or both (a failed job operation still reports
// what happened to each VM).
package jsonapi
