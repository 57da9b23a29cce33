package netnstest

import (
	"encoding/json"
	"fmt"
	"net"
	"time"
)

// EndEarly makes, from inside the namespace, rounds of three TCP
// connections that end at the three early stages of the method: to open
// (a listening address that answers a request and keeps the connection
// open) one aborted with SO_LINGER 0 right after the handshake (post_ack)
// and one aborted after a request (post_psh); to closed (an address whose
// host answers a SYN with RST) one SYN (post_syn). It fails when closed
// accepts.
func (ns *NS) EndEarly(open, closed string, rounds int) error {
	return ns.Do(func() error {
		for i := 0; i < rounds; i++ {
			for _, send := range []bool{false, true} {
				c, err := net.DialTimeout("tcp", open, 5*time.Second)
				if err != nil {
					return err
				}
				if send {
					c.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
					time.Sleep(50 * time.Millisecond)
				}
				c.(*net.TCPConn).SetLinger(0)
				c.Close()
			}
			if c, err := net.DialTimeout("tcp", closed, 5*time.Second); err == nil {
				c.Close()
				return fmt.Errorf("%s answered; want a port without listener", closed)
			}
		}
		return nil
	})
}

// RadarSummary reads the stage shares of the last day's Radar summary
// (summary_0) from a connscope classifier's HTTP API at addr, from inside
// the namespace.
func (ns *NS) RadarSummary(addr string) (map[string]string, error) {
	code, body, err := ns.Get(addr, "/radar/tcp_resets_timeouts/summary?dateRange=1d", 10*time.Second)
	if err != nil {
		return nil, err
	}
	var r struct {
		Result struct {
			Summary0 map[string]string `json:"summary_0"`
		} `json:"result"`
	}
	if err := json.Unmarshal(body, &r); err != nil || code != 200 {
		return nil, fmt.Errorf("summary from %s: status %d, %v: %s", addr, code, err, body)
	}
	return r.Result.Summary0, nil
}
