// Command argocd-lua runs a health.lua script the way Argo CD v3.4.7's util/lua does for a resource customization
// without useOpenLibs: gopher-lua at Argo CD's version, only the package, base and table libraries, `obj` as a global
// table converted as Argo CD's decodeValue does, a 1 s timeout, and the returned table read through gopher-json.
// Argo CD's "safe os" library is left out: the project's script does not use os.
//
// Input on stdin: {"script": "...", "objects": [{...}, ...]}. Output: one JSON line per object, either
// {"status": ..., "message": ...} or {"error": ...}. A status Argo CD does not know becomes Unknown, as in Argo CD.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	lua "github.com/yuin/gopher-lua"
	luajson "layeh.com/gopher-json"
)

type input struct {
	Script  string           `json:"script"`
	Objects []map[string]any `json:"objects"`
}

type health struct {
	Status  string `json:"status,omitempty"`
	Message string `json:"message,omitempty"`
	Error   string `json:"error,omitempty"`
}

var validStatuses = map[string]bool{
	"Healthy": true, "Progressing": true, "Degraded": true, "Suspended": true, "Missing": true, "Unknown": true,
}

func decodeValue(l *lua.LState, value any) lua.LValue {
	switch converted := value.(type) {
	case bool:
		return lua.LBool(converted)
	case float64:
		return lua.LNumber(converted)
	case string:
		return lua.LString(converted)
	case json.Number:
		return lua.LString(converted)
	case []any:
		arr := l.CreateTable(len(converted), 0)
		for _, item := range converted {
			arr.Append(decodeValue(l, item))
		}
		return arr
	case map[string]any:
		tbl := l.CreateTable(0, len(converted))
		for key, item := range converted {
			tbl.RawSetH(lua.LString(key), decodeValue(l, item))
		}
		return tbl
	}
	return lua.LNil
}

func run(script string, obj map[string]any) health {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, pair := range []struct {
		n string
		f lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(pair.f), NRet: 0, Protect: true}, lua.LString(pair.n)); err != nil {
			return health{Error: err.Error()}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", decodeValue(l, obj))
	if err := l.DoString(script); err != nil {
		return health{Error: err.Error()}
	}
	ret := l.Get(-1)
	if ret.Type() != lua.LTTable {
		return health{Error: fmt.Sprintf("the script returned a %s, not a table", ret.Type())}
	}
	encoded, err := luajson.Encode(ret)
	if err != nil {
		return health{Error: err.Error()}
	}
	var out health
	if err := json.Unmarshal(encoded, &out); err != nil {
		return health{Error: err.Error()}
	}
	if !validStatuses[out.Status] {
		return health{Status: "Unknown", Message: "Lua returned an invalid health status"}
	}
	return out
}

func main() {
	var in input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		fmt.Fprintln(os.Stderr, "argocd-lua: reading the input:", err)
		os.Exit(2)
	}
	enc := json.NewEncoder(os.Stdout)
	for _, obj := range in.Objects {
		if err := enc.Encode(run(in.Script, obj)); err != nil {
			os.Exit(1)
		}
	}
}
