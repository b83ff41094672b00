package config

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"

	yamlv3 "go.yaml.in/yaml/v3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// ParseProblem is one field of a configuration file that cannot be read:
// an unknown field or a value of the wrong type, named by its YAML path
// and, where the parser knows it, its line.
type ParseProblem struct {
	Field  string
	Line   int // 0: unknown
	Reason string
}

func (p *ParseProblem) Error() string {
	if p.Line > 0 {
		return fmt.Sprintf("line %d: %s: %s", p.Line, p.Field, p.Reason)
	}
	return p.Field + ": " + p.Reason
}

// ParseError lists every field of a configuration file that cannot be read.
type ParseError []*ParseProblem

func (e ParseError) Error() string {
	parts := make([]string, len(e))
	for i, p := range e {
		parts[i] = p.Error()
	}
	return strings.Join(parts, "; ")
}

// Fields returns the paths of the problems, in file order.
func (e ParseError) Fields() []string {
	out := make([]string, len(e))
	for i, p := range e {
		out[i] = p.Field
	}
	return out
}

// checkFields reads data as a YAML tree and checks it against Config's
// fields (their json names): every unknown field and every value that does
// not decode into its field's type, all at once, by path and line. It
// returns the YAML parser's own error for a file that is not YAML, and nil
// when every field reads.
func checkFields(data []byte) error {
	var doc yamlv3.Node
	if err := yamlv3.Unmarshal(data, &doc); err != nil {
		return err
	}
	if doc.Kind != yamlv3.DocumentNode || len(doc.Content) == 0 {
		return nil // empty: the defaults
	}
	var probs ParseError
	walkFields(doc.Content[0], reflect.TypeFor[Config](), "", &probs)
	if len(probs) > 0 {
		return probs
	}
	return nil
}

var jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()

// walkFields checks node against type t at path, appending to probs.
func walkFields(node *yamlv3.Node, t reflect.Type, path string, probs *ParseError) {
	if node.Kind == yamlv3.AliasNode && node.Alias != nil {
		node = node.Alias
	}
	custom := reflect.PointerTo(t).Implements(jsonUnmarshaler)
	if t.Kind() != reflect.Struct || custom || node.Tag == "!!null" {
		checkValue(node, t, path, probs)
		return
	}
	if node.Kind != yamlv3.MappingNode {
		*probs = append(*probs, &ParseProblem{Field: orRoot(path), Line: node.Line, Reason: fmt.Sprintf("must be a mapping of fields, not %s", describe(node))})
		return
	}
	names := jsonNames(t)
	for i := 0; i+1 < len(node.Content); i += 2 {
		k, v := node.Content[i], node.Content[i+1]
		field := k.Value
		if path != "" {
			field = path + "." + k.Value
		}
		f, ok := names[k.Value]
		if !ok {
			// The decoder matches names regardless of case, as encoding/json.
			for n, sf := range names {
				if strings.EqualFold(n, k.Value) {
					f, ok = sf, true
					break
				}
			}
		}
		if !ok {
			reason := "unknown field"
			if s := suggest(k.Value, names); s != "" {
				reason += " (did you mean " + s + "?)"
			}
			*probs = append(*probs, &ParseProblem{Field: field, Line: k.Line, Reason: reason})
			continue
		}
		walkFields(v, f.Type, field, probs)
	}
}

// checkValue decodes one value the way Parse does, on its own, and
// reports why it does not fit t.
func checkValue(node *yamlv3.Node, t reflect.Type, path string, probs *ParseError) {
	b, err := yamlv3.Marshal(node)
	if err != nil {
		*probs = append(*probs, &ParseProblem{Field: orRoot(path), Line: node.Line, Reason: err.Error()})
		return
	}
	if err := yaml.UnmarshalStrict(b, reflect.New(t).Interface()); err != nil {
		*probs = append(*probs, &ParseProblem{Field: orRoot(path), Line: node.Line, Reason: decodeReason(err, node, t)})
	}
}

// decodeReason turns a decoder's error into what the admin needs: the
// value and the expected type, or the type's own reason (a duration).
func decodeReason(err error, node *yamlv3.Node, t reflect.Type) string {
	msg := err.Error()
	for _, p := range []string{"error unmarshaling JSON: ", "while decoding JSON: ", "json: "} {
		msg = strings.TrimPrefix(msg, p)
	}
	if strings.HasPrefix(msg, "cannot unmarshal") || t == reflect.TypeFor[metav1.Duration]() {
		return fmt.Sprintf("%s, want %s", describe(node), typeName(t))
	}
	return msg
}

// typeName says what a field's type is in the file's terms.
func typeName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64, reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Slice:
		return "a list of " + strings.TrimPrefix(strings.TrimPrefix(typeName(t.Elem()), "a "), "an ") + "s"
	case reflect.Struct:
		if t == reflect.TypeFor[metav1.Duration]() {
			return `a duration such as "30s" or "5m"`
		}
		return "a mapping of fields"
	}
	return t.String()
}

// describe names a YAML value for an error message.
func describe(n *yamlv3.Node) string {
	switch n.Kind {
	case yamlv3.MappingNode:
		return "a mapping"
	case yamlv3.SequenceNode:
		return "a list"
	}
	return fmt.Sprintf("%q", n.Value)
}

func orRoot(path string) string {
	if path == "" {
		return "(document)"
	}
	return path
}

// jsonNames maps the json names of t's fields to the fields.
func jsonNames(t reflect.Type) map[string]reflect.StructField {
	out := map[string]reflect.StructField{}
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = f
	}
	return out
}

// suggest returns the known name closest to an unknown one, when it is
// close enough to be a typo (edit distance at most a third of its length,
// and at least 2), or "".
func suggest(unknown string, names map[string]reflect.StructField) string {
	best, bestD := "", max(2, len(unknown)/3)+1
	for n := range names {
		d := editDistance(strings.ToLower(unknown), strings.ToLower(n))
		if d < bestD || d == bestD && n < best {
			best, bestD = n, d
		}
	}
	if bestD > max(2, len(unknown)/3) {
		return ""
	}
	return best
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
