package config

import (
	"strings"
	"testing"
)

func TestMemberValidation(t *testing.T) {
	for _, tc := range []struct {
		yaml string
		want []string // bad fields, in order
	}{
		{"member: {renewInterval: 2s, leaseDuration: 6s, tokenLifetime: 10m, tokenRenewPercent: 10}", nil},
		{"member: {renewInterval: 500ms}", []string{"member.renewInterval"}},
		{"member: {renewInterval: 30s}", []string{"member.leaseDuration"}},
		{"member: {leaseDuration: 1500ms}", []string{"member.leaseDuration"}},
		{"member: {tokenLifetime: 5m}", []string{"member.tokenLifetime"}},
		{"member: {tokenLifetime: 9000h}", []string{"member.tokenLifetime"}},
		{"member: {tokenRenewPercent: 90}", []string{"member.tokenRenewPercent"}},
	} {
		c, err := Parse([]byte("apiVersion: bridge-agent.io/v1alpha1\nkind: AgentConfiguration\nkubeconfig: /k\n" + tc.yaml + "\n"))
		if err != nil {
			t.Fatalf("%s: %v", tc.yaml, err)
		}
		err = c.Validate()
		var got []string
		if ve, ok := err.(ValidationError); ok {
			got = ve.Fields()
		} else if err != nil {
			t.Fatalf("%s: %v", tc.yaml, err)
		}
		if strings.Join(got, ",") != strings.Join(tc.want, ",") {
			t.Errorf("%s: bad fields %v (%v), want %v", tc.yaml, got, err, tc.want)
		}
	}
}
