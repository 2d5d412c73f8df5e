package wire

import (
	"errors"
	"strings"
	"testing"
)

func TestPortsInUseRoundTrip(t *testing.T) {
	b, err := EncodeRequest(QueryPortsInUse{Protocol: 17})
	if err != nil || string(b) != `{"QueryPortsInUse":17}` {
		t.Fatalf("EncodeRequest = %s, %v", b, err)
	}
	req, err := DecodeRequest(b)
	if err != nil || req != (QueryPortsInUse{Protocol: 17}) {
		t.Fatalf("DecodeRequest = %v, %v", req, err)
	}
	for _, bad := range []string{`"QueryPortsInUse"`, `{"QueryPortsInUse":256}`, `{"QueryPortsInUse":"6"}`, `{"QueryPortsInUse":null}`} {
		if _, err := DecodeRequest([]byte(bad)); err == nil {
			t.Errorf("DecodeRequest(%s) accepted", bad)
		}
	}
	var ps PortSet
	for _, p := range []uint16{0, 1, 7, 8, 1024, 40000, 65535} {
		ps.Add(p)
	}
	ans := EncodePortsInUse(6, &ps)
	if len(ans) > 11000 {
		t.Errorf("answer of %d bytes", len(ans))
	}
	a, err := DecodeAnswer(ans)
	if err != nil {
		t.Fatal(err)
	}
	got, ok := a.(PortsInUse)
	if !ok || got.Protocol != 6 || *got.Ports != ps {
		t.Fatalf("DecodeAnswer = %T %v", a, ok)
	}
	if !got.Ports.Has(40000) || got.Ports.Has(40001) || !got.Ports.Has(65535) {
		t.Error("Has wrong")
	}
	if _, err := DecodeRequest(ans); !errors.Is(err, ErrNotARequest) {
		t.Errorf("answer decoded as a request: %v", err)
	}
	for name, bad := range map[string]string{
		"short set":     `{"QueryPortsInUseAnswer":{"protocol":6,"ports":"AAAA"}}`,
		"not base64":    `{"QueryPortsInUseAnswer":{"protocol":6,"ports":"` + strings.Repeat("!", 10924) + `"}}`,
		"no ports":      `{"QueryPortsInUseAnswer":{"protocol":6}}`,
		"duplicate":     `{"QueryPortsInUseAnswer":{"protocol":6,"protocol":6}}`,
		"not object":    `{"QueryPortsInUseAnswer":[6,""]}`,
		"no value":      `"QueryPortsInUseAnswer"`,
		"long protocol": `{"QueryPortsInUseAnswer":{"protocol":600,"ports":""}}`,
	} {
		if _, err := DecodeAnswer([]byte(bad)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
