// Package benchline prints a benchmark's result as the one JSON line
// `make bench` keeps (a line starting with "{"). A line is never lost to
// a value JSON cannot hold: a ratio to a zero (+Inf) or NaN is printed as
// its string, anywhere in the line, and a line that still cannot be
// encoded is printed as its bench's name and the error.
package benchline

import (
	"encoding/json"
	"fmt"
	"math"
	"reflect"
)

// Print writes v (a map or struct of results, with a "bench" name) to
// standard output as one JSON line.
func Print(v any) {
	fmt.Println(Encode(v))
}

// Encode is Print's line.
func Encode(v any) string {
	data, err := json.Marshal(v)
	if err == nil {
		return string(data)
	}
	if data, err2 := json.Marshal(finite(reflect.ValueOf(v))); err2 == nil {
		return string(data)
	}
	name := any(nil)
	if m, ok := v.(map[string]any); ok {
		name = m["bench"]
	}
	data, _ = json.Marshal(map[string]any{"bench": name, "encode_error": err.Error()})
	return string(data)
}

// finite is v as plain JSON values (maps, slices, numbers, strings), each
// non-finite float replaced by its string.
func finite(v reflect.Value) any {
	switch v.Kind() {
	case reflect.Interface, reflect.Pointer:
		if v.IsNil() {
			return nil
		}
		return finite(v.Elem())
	case reflect.Float32, reflect.Float64:
		if f := v.Float(); math.IsInf(f, 0) || math.IsNaN(f) {
			return fmt.Sprint(f)
		}
		return v.Interface()
	case reflect.Map:
		out := make(map[string]any, v.Len())
		for it := v.MapRange(); it.Next(); {
			out[fmt.Sprint(it.Key().Interface())] = finite(it.Value())
		}
		return out
	case reflect.Slice, reflect.Array:
		out := make([]any, v.Len())
		for i := range out {
			out[i] = finite(v.Index(i))
		}
		return out
	default:
		return v.Interface()
	}
}
