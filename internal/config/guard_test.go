package config

import (
	"testing"
)

// TestValidateGuard: the host guard's fields, and configured ranges and
// next hops in special ranges, are refused at validation, each by its
// field; valid values pass.
func TestValidateGuard(t *testing.T) {
	for _, tc := range []struct {
		field  string // "" for a valid configuration
		mutate func(*Config)
	}{
		{"", func(c *Config) { c.Routes.AllowedCIDRs = []string{"10.244.0.0/16", "fd00:244::/48"} }},
		{"", func(c *Config) { c.Routes.MinPrefixLength = PrefixLengths{IPv4: 8, IPv6: 32} }},
		{"", func(c *Config) { c.Routes.MinPrefixLength = PrefixLengths{} }}, // the defaults
		{"", func(c *Config) { c.ServiceCIDRs = []string{"10.96.0.0/12", "fd00:96::/108"} }},
		{"", func(c *Config) {
			c.Routes = gatewayRoutes(func(r *Routes) { r.Gateways = []string{"169.254.1.1"}; r.Device = "eth1" })
		}},
		{"routes.minPrefixLength.ipv4", func(c *Config) { c.Routes.MinPrefixLength.IPv4 = 33 }},
		{"routes.minPrefixLength.ipv4", func(c *Config) { c.Routes.MinPrefixLength.IPv4 = -1 }},
		{"routes.minPrefixLength.ipv6", func(c *Config) { c.Routes.MinPrefixLength.IPv6 = 129 }},
		{"routes.allowedCIDRs[0]", func(c *Config) { c.Routes.AllowedCIDRs = []string{"10.244.0.1/16"} }},
		{"routes.allowedCIDRs[1]", func(c *Config) { c.Routes.AllowedCIDRs = []string{"10.244.0.0/16", "0.0.0.0/1"} }},
		{"routes.allowedCIDRs[0]", func(c *Config) { c.Routes.AllowedCIDRs = []string{"fe80::/64"} }},
		{"routes.allowedCIDRs", func(c *Config) {
			c.Routes = gatewayRoutes(func(r *Routes) { r.AllowedCIDRs = []string{"10.244.0.0/16"} })
		}},
		{"serviceCIDRs[0]", func(c *Config) { c.ServiceCIDRs = []string{"169.254.0.0/16"} }},
		{"serviceCIDRs[1]", func(c *Config) { c.ServiceCIDRs = []string{"10.96.0.0/12", "::ffff:0:0/96"} }},
		{"routes.cidrs[1]", func(c *Config) {
			c.Routes = gatewayRoutes(func(r *Routes) { r.CIDRs = append(r.CIDRs, "127.0.0.0/8") })
		}},
		{"routes.cidrs[1]", func(c *Config) {
			c.Routes = gatewayRoutes(func(r *Routes) { r.CIDRs = append(r.CIDRs, "224.0.0.0/3") })
		}},
		{"routes.gateways[1]", func(c *Config) {
			c.Routes = gatewayRoutes(func(r *Routes) { r.Gateways = append(r.Gateways, "169.254.169.254") })
		}},
		{"routes.gateways[1]", func(c *Config) {
			c.Routes = gatewayRoutes(func(r *Routes) { r.Gateways = append(r.Gateways, "169.254.1.1") })
		}},
		{"routes.gateways[1]", func(c *Config) {
			c.Routes = gatewayRoutes(func(r *Routes) { r.Gateways = append(r.Gateways, "127.0.0.1") })
		}},
	} {
		t.Run(tc.field, func(t *testing.T) { checkValidation(t, tc.mutate, tc.field) })
	}
}
