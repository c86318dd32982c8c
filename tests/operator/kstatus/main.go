// kstatus: what sigs.k8s.io/cli-utils' kstatus (Flux's and kubectl wait's health logic) computes for each object.
// Reads a JSON array of objects on stdin, writes a JSON array of {"status", "message"} (or {"error"}) on stdout.
// Built by tests/operator/test_kstatus_unit.py into a wrapper module under ~/.cache/modeldeploy; never committed.
package main

import (
	"encoding/json"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		panic(err)
	}
	// apimachinery's decoder keeps integers as int64, as the API server's objects have them.
	var objects []map[string]interface{}
	if err := utiljson.Unmarshal(data, &objects); err != nil {
		panic(err)
	}
	out := make([]map[string]string, 0, len(objects))
	for _, object := range objects {
		result, err := status.Compute(&unstructured.Unstructured{Object: object})
		if err != nil {
			out = append(out, map[string]string{"error": err.Error()})
			continue
		}
		out = append(out, map[string]string{"status": string(result.Status), "message": result.Message})
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		panic(err)
	}
}
