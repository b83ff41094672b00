// Command dnsload is a DNS client of the end-to-end tests, run as a
// process of its own in the VM namespace: "flood" keeps many forwarded
// questions in flight at once, "probe" asks names one after the other and
// measures each answer's latency. It prints one JSON report on stdout.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// FloodReport is what flood prints.
type FloodReport struct {
	Rounds   int            `json:"rounds"`
	Sent     int            `json:"sent"`
	Rcodes   map[string]int `json:"rcodes"`
	Timeouts int            `json:"timeouts"`
}

// ProbeReport is what probe prints.
type ProbeReport struct {
	Count int           `json:"count"`
	P50   time.Duration `json:"p50"`
	P99   time.Duration `json:"p99"`
	Max   time.Duration `json:"max"`
	// Slowest are the ten longest waits.
	Slowest []time.Duration `json:"slowest"`
	// Bad lists the answers that were not NOERROR with the expected
	// address, or did not come.
	Bad []string `json:"bad,omitempty"`
}

func main() {
	server := flag.String("server", "", "the stub, ip:port")
	mode := flag.String("mode", "", "flood or probe")
	duration := flag.Duration("duration", 10*time.Second, "how long to run")
	n := flag.Int("n", 500, "flood: questions in flight at once")
	distinct := flag.Int("distinct", 400, "flood: distinct names per round (the others repeat them)")
	domains := flag.Int("domains", 50, "flood: domains the names are spread over")
	names := flag.String("names", "", "probe: name=address,... to ask (A) in turn")
	flag.Parse()
	var report any
	var err error
	switch *mode {
	case "flood":
		report = flood(*server, *n, *distinct, *domains, *duration)
	case "probe":
		report, err = probe(*server, *names, *duration)
	default:
		err = fmt.Errorf("unknown mode %q: want flood or probe", *mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "dnsload:", err)
		os.Exit(2)
	}
	if err := json.NewEncoder(os.Stdout).Encode(report); err != nil {
		fmt.Fprintln(os.Stderr, "dnsload:", err)
		os.Exit(1)
	}
}

// exchange asks server q over a socket of its own, as a stub resolver
// does, and waits at most timeout.
func exchange(server string, q *dns.Msg, timeout time.Duration) (*dns.Msg, error) {
	c, err := net.Dial("udp", server)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	co := &dns.Conn{Conn: c}
	if err := co.WriteMsg(q); err != nil {
		return nil, err
	}
	for {
		r, err := co.ReadMsg()
		if err != nil {
			return nil, err
		}
		if r.Id == q.Id {
			return r, nil
		}
	}
}

// flood sends rounds of n questions at once, each for a name the stub
// forwards, and waits for every answer before the next round.
func flood(server string, n, distinct, domains int, d time.Duration) *FloodReport {
	rep := &FloodReport{Rcodes: map[string]int{}}
	var mu sync.Mutex
	end := time.Now().Add(d)
	for round := 0; time.Now().Before(end); round++ {
		var wg sync.WaitGroup
		for i := range n {
			k := i % distinct
			name := fmt.Sprintf("n%d-r%d.flood-d%d.test.", k, round, k%domains)
			wg.Go(func() {
				q := new(dns.Msg)
				q.SetQuestion(name, dns.TypeA)
				r, err := exchange(server, q, 15*time.Second)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					rep.Timeouts++
					return
				}
				rep.Rcodes[dns.RcodeToString[r.Rcode]]++
			})
		}
		wg.Wait()
		rep.Rounds++
		rep.Sent += n
	}
	return rep
}

// probe asks the names in turn until d has passed.
func probe(server, names string, d time.Duration) (*ProbeReport, error) {
	type want struct{ name, addr string }
	var wants []want
	for _, p := range strings.Split(names, ",") {
		name, addr, ok := strings.Cut(p, "=")
		if !ok {
			return nil, fmt.Errorf("probe name %q: want name=address", p)
		}
		wants = append(wants, want{dns.Fqdn(name), addr})
	}
	rep := &ProbeReport{}
	var lat []time.Duration
	end := time.Now().Add(d)
	for i := 0; time.Now().Before(end); i++ {
		w := wants[i%len(wants)]
		q := new(dns.Msg)
		q.SetQuestion(w.name, dns.TypeA)
		start := time.Now()
		r, err := exchange(server, q, time.Second)
		took := time.Since(start)
		lat = append(lat, took)
		switch {
		case err != nil:
			rep.Bad = append(rep.Bad, fmt.Sprintf("%s: %v", w.name, err))
		case r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1:
			rep.Bad = append(rep.Bad, fmt.Sprintf("%s: %s with %d answers", w.name, dns.RcodeToString[r.Rcode], len(r.Answer)))
		default:
			if a, ok := r.Answer[0].(*dns.A); !ok || a.A.String() != w.addr {
				rep.Bad = append(rep.Bad, fmt.Sprintf("%s: %v, want %s", w.name, r.Answer[0], w.addr))
			}
		}
	}
	slices.Sort(lat)
	rep.Count = len(lat)
	if len(lat) > 0 {
		rep.P50 = lat[len(lat)/2]
		rep.P99 = lat[len(lat)*99/100]
		rep.Max = lat[len(lat)-1]
		rep.Slowest = lat[max(0, len(lat)-10):]
	}
	return rep, nil
}
