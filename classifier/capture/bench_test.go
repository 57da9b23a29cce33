package capture

import (
	"bufio"
	"bytes"
	"io"
	"sync"
	"testing"

	"github.com/connscope/connscope/packet"
)

// benchFiles are in-memory captures of 200,000 Ethernet frames of 66 to
// 94 bytes (IPv4 and IPv6 TCP, headers only, as a sampler writes them),
// one pcap and one pcapng, built once.
var benchFiles = sync.OnceValue(func() map[string][]byte {
	recs := []packet.Record{
		rec4(packet.SYN, 0, linuxSYN...),
		rec4(packet.ACK, 0, 1, 1, 8),
		rec4(packet.PSH|packet.ACK, 517, 1, 1, 8),
		rec4(packet.RST, 0),
		rec6(packet.SYN, 0, linuxSYN...),
		rec6(packet.PSH|packet.ACK, 1208, 1, 1, 8),
	}
	var frames [][]byte
	for i := range recs {
		p := BuildPacket(&recs[i])
		et := uint16(etherIPv4)
		if recs[i].IPVersion == 6 {
			et = etherIPv6
		}
		frames = append(frames, ether(et, p))
	}
	out := map[string][]byte{}
	for _, format := range []string{"pcap", "pcapng"} {
		var buf bytes.Buffer
		bw := bufio.NewWriter(&buf)
		var w packetWriter
		if format == "pcap" {
			w, _ = NewPcapWriter(bw, LinkTypeEthernet, 128, true)
		} else {
			w, _ = NewPcapngWriter(bw, LinkTypeEthernet, 128)
		}
		for i := 0; i < 200000; i++ {
			f := frames[i%len(frames)]
			if err := w.WritePacket(1700000000000000000+int64(i)*1000, f, len(f)+100); err != nil {
				panic(err)
			}
		}
		bw.Flush()
		out[format] = buf.Bytes()
	}
	return out
})

// loopReader reads a file over and over.
type loopReader struct {
	file []byte
	r    *Reader
}

func (l *loopReader) reset(b *testing.B) {
	r, err := NewReader(bytes.NewReader(l.file), "bench")
	if err != nil {
		b.Fatal(err)
	}
	l.r = r
}

func BenchmarkReaderNextFrame(b *testing.B) {
	for _, format := range []string{"pcap", "pcapng"} {
		b.Run(format, func(b *testing.B) {
			l := loopReader{file: benchFiles()[format]}
			l.reset(b)
			b.SetBytes(int64(len(l.file)) / 200000)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				_, _, data, err := l.r.NextFrame()
				if err == io.EOF {
					l.reset(b)
					_, _, data, err = l.r.NextFrame()
				}
				if err != nil || len(data) == 0 {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "packets/s")
		})
	}
}

func BenchmarkReaderNext(b *testing.B) {
	for _, format := range []string{"pcap", "pcapng"} {
		b.Run(format, func(b *testing.B) {
			l := loopReader{file: benchFiles()[format]}
			l.reset(b)
			b.SetBytes(int64(len(l.file)) / 200000)
			var rec packet.Record
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				err := l.r.Next(&rec)
				if err == io.EOF {
					l.reset(b)
					err = l.r.Next(&rec)
				}
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "packets/s")
		})
	}
}
