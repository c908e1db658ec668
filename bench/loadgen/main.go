// Command loadgen is the load generator of the agent-vault benchmark.
//
// It speaks HTTP/1.1 over TLS, either directly to the upstream or through an
// HTTP forward proxy using CONNECT with "Proxy-Authorization: Basic", one
// connection per worker (keep-alive) or one full CONNECT+TLS handshake per
// request (-new-conn). wrk and hey cannot tunnel through a proxy, hence this.
// With -h2 (load mode, keep-alive) it speaks HTTP/2 through net/http instead (h2.go).
//
// Standard library only: it must build offline with the Debian Go toolchain.
//
// Modes (-mode):
//
//	load       timed (-d after -warmup) or counted (-n) load; JSON summary on stdout
//	check      one request on a fresh connection; prints status, headers, body, peer cert
//	sse        GET an event stream; time to first event (and lag behind the upstream's send time)
//	download   GET a large body on one kept-alive connection; TTFB and throughput
//	idle       open -conns connections (CONNECT+TLS+one GET each), hold them until stdin closes
//	serve-sse  a tiny TLS upstream serving /sse (nginx cannot delay events)
//
// With -pid, the proxy's CPU ticks (utime+stime, all threads) and /proc/stat
// per-core ticks are read exactly at the edges of the timed window, and the
// proxy's RSS is sampled every 50 ms.
package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type headerList []string

func (h *headerList) String() string     { return strings.Join(*h, ", ") }
func (h *headerList) Set(v string) error { *h = append(*h, v); return nil }

var (
	mode         = flag.String("mode", "load", "load|check|sse|download|idle|serve-sse")
	targetURL    = flag.String("url", "", "https://host:port/path of the upstream")
	proxyURL     = flag.String("proxy", "", "http://user:pass@host:port of the proxy; empty = direct")
	caFiles      = flag.String("ca", "", "comma-separated PEM files to trust (upstream CA, proxy CA)")
	concurrency  = flag.Int("c", 1, "workers; one connection each")
	duration     = flag.Duration("d", 2*time.Second, "timed window")
	warmup       = flag.Duration("warmup", 500*time.Millisecond, "untimed warm-up before the window")
	count        = flag.Int("n", 0, "fixed request count instead of a timed window (load); samples (sse, download)")
	newConn      = flag.Bool("new-conn", false, "full CONNECT + TLS handshake for every request")
	reqTimeout   = flag.Duration("timeout", 10*time.Second, "per-request / per-dial deadline")
	expectStatus = flag.Int("expect-status", 200, "status counted as success")
	expectBody   = flag.String("expect-body", "", "substring the body must contain (load)")
	expectHeader = flag.String("expect-header", "", "Name: substring a response header must contain (load)")
	expectSHA    = flag.String("expect-sha256", "", "hex sha256 of the body (download, first sample)")
	pid          = flag.Int("pid", 0, "proxy PID for CPU and RSS accounting")
	conns        = flag.Int("conns", 100, "connections to hold (idle)")
	hold         = flag.Duration("hold", 120*time.Second, "max hold time (idle); stdin EOF ends it earlier")
	listen       = flag.String("listen", "127.0.0.1:0", "serve-sse: listen address")
	certFile     = flag.String("cert", "", "serve-sse: certificate chain PEM")
	keyFile      = flag.String("key", "", "serve-sse: private key PEM")
	extraHeaders headerList
)

func main() {
	flag.Var(&extraHeaders, "header", "extra request header 'Name: value' (repeatable)")
	flag.Parse()
	var err error
	switch *mode {
	case "serve-sse":
		err = serveSSE()
	case "load":
		err = runLoad()
	case "check":
		err = runCheck()
	case "sse":
		err = runSSE()
	case "download":
		err = runDownload()
	case "idle":
		err = runIdle()
	default:
		err = fmt.Errorf("unknown -mode %q", *mode)
	}
	if err != nil {
		emit(map[string]any{"error": err.Error()})
		os.Exit(1)
	}
}

func emit(v any) {
	b, _ := json.Marshal(v)
	os.Stdout.Write(append(b, '\n'))
}

// ---------------------------------------------------------------- client

type client struct {
	host, hostport, path string
	proxyAddr            string
	connectReq           []byte
	tlsConf              *tls.Config
	request              []byte
}

type conn struct {
	c  *tls.Conn
	br *bufio.Reader
	bw *bufio.Writer
}

func (c *conn) Close() { c.c.Close() }

// prefixConn replays bytes already buffered after the CONNECT response.
type prefixConn struct {
	net.Conn
	r io.Reader
}

func (p *prefixConn) Read(b []byte) (int, error) { return p.r.Read(b) }

func newClient(pathOverride string) (*client, error) {
	u, err := url.Parse(*targetURL)
	if err != nil || u.Scheme != "https" || u.Hostname() == "" {
		return nil, fmt.Errorf("-url must be https://host[:port]/path, got %q", *targetURL)
	}
	port := u.Port()
	if port == "" {
		port = "443"
	}
	cl := &client{host: u.Hostname(), hostport: net.JoinHostPort(u.Hostname(), port), path: u.RequestURI()}
	if pathOverride != "" {
		cl.path = pathOverride
	}
	pool := x509.NewCertPool()
	for _, f := range strings.Split(*caFiles, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		pem, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("no certificate in %s", f)
		}
	}
	// No ClientSessionCache: every handshake is a full one (no resumption).
	cl.tlsConf = &tls.Config{RootCAs: pool, ServerName: cl.host, NextProtos: []string{"http/1.1"}, MinVersion: tls.VersionTLS12}
	if *proxyURL != "" {
		pu, err := url.Parse(*proxyURL)
		if err != nil || pu.Host == "" {
			return nil, fmt.Errorf("bad -proxy %q", *proxyURL)
		}
		cl.proxyAddr = pu.Host
		var b strings.Builder
		fmt.Fprintf(&b, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n", cl.hostport, cl.hostport)
		if pu.User != nil {
			pw, _ := pu.User.Password()
			cred := pu.User.Username() + ":" + pw
			fmt.Fprintf(&b, "Proxy-Authorization: Basic %s\r\n", base64.StdEncoding.EncodeToString([]byte(cred)))
		}
		b.WriteString("\r\n")
		cl.connectReq = []byte(b.String())
	}
	hostHdr := cl.host
	if port != "443" {
		hostHdr = cl.hostport
	}
	var rb strings.Builder
	fmt.Fprintf(&rb, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: av-bench-loadgen/1\r\nAccept: */*\r\n", cl.path, hostHdr)
	for _, h := range extraHeaders {
		rb.WriteString(h + "\r\n")
	}
	rb.WriteString("\r\n")
	cl.request = []byte(rb.String())
	return cl, nil
}

func (cl *client) requestFor(path string) []byte {
	if path == cl.path {
		return cl.request
	}
	return bytes.Replace(cl.request, []byte("GET "+cl.path+" "), []byte("GET "+path+" "), 1)
}

// dial opens a connection to the upstream, through the proxy when configured,
// and completes the TLS handshake.
func (cl *client) dial() (*conn, error) {
	deadline := time.Now().Add(*reqTimeout)
	var raw net.Conn
	var err error
	if cl.proxyAddr != "" {
		raw, err = net.DialTimeout("tcp", cl.proxyAddr, *reqTimeout)
		if err != nil {
			return nil, fmt.Errorf("dial proxy: %w", err)
		}
		raw.SetDeadline(deadline)
		if _, err = raw.Write(cl.connectReq); err != nil {
			raw.Close()
			return nil, fmt.Errorf("write CONNECT: %w", err)
		}
		br := bufio.NewReaderSize(raw, 4096)
		status, err := readConnectResponse(br)
		if err != nil {
			raw.Close()
			return nil, err
		}
		if status != 200 {
			raw.Close()
			return nil, fmt.Errorf("CONNECT answered %d", status)
		}
		if br.Buffered() > 0 {
			raw = &prefixConn{Conn: raw, r: io.MultiReader(bytes.NewReader(mustPeek(br)), raw)}
		}
	} else {
		raw, err = net.DialTimeout("tcp", cl.hostport, *reqTimeout)
		if err != nil {
			return nil, fmt.Errorf("dial: %w", err)
		}
	}
	tc := tls.Client(raw, cl.tlsConf)
	tc.SetDeadline(deadline)
	if err := tc.Handshake(); err != nil {
		raw.Close()
		return nil, fmt.Errorf("tls: %w", err)
	}
	tc.SetDeadline(time.Time{})
	return &conn{c: tc, br: bufio.NewReaderSize(tc, 16384), bw: bufio.NewWriterSize(tc, 4096)}, nil
}

func mustPeek(br *bufio.Reader) []byte {
	b, _ := br.Peek(br.Buffered())
	return append([]byte(nil), b...)
}

// readConnectResponse reads the proxy's answer to CONNECT up to the blank
// line, returning its status code. A non-200 body is drained best-effort.
func readConnectResponse(br *bufio.Reader) (int, error) {
	line, err := br.ReadString('\n')
	if err != nil {
		return 0, fmt.Errorf("read CONNECT response: %w", err)
	}
	parts := strings.SplitN(strings.TrimSpace(line), " ", 3)
	if len(parts) < 2 || !strings.HasPrefix(parts[0], "HTTP/") {
		return 0, fmt.Errorf("bad CONNECT response line %q", line)
	}
	status, err := strconv.Atoi(parts[1])
	if err != nil {
		return 0, fmt.Errorf("bad CONNECT status %q", line)
	}
	for i := 0; i < 200; i++ {
		l, err := br.ReadString('\n')
		if err != nil {
			return 0, fmt.Errorf("read CONNECT headers: %w", err)
		}
		if l == "\r\n" || l == "\n" {
			return status, nil
		}
	}
	return 0, errors.New("CONNECT response: too many header lines")
}

type checker struct {
	status   int
	body     []byte
	hdrName  string
	hdrValue string
}

func newChecker() checker {
	ck := checker{status: *expectStatus, body: []byte(*expectBody)}
	if *expectHeader != "" {
		kv := strings.SplitN(*expectHeader, ":", 2)
		ck.hdrName = strings.TrimSpace(kv[0])
		if len(kv) == 2 {
			ck.hdrValue = strings.TrimSpace(kv[1])
		}
	}
	return ck
}

// do sends one request on cn and reads the whole response.
// It returns whether the response passed the checks and whether the
// connection must be closed afterwards.
func (cn *conn) do(req []byte, ck *checker) (ok bool, mustClose bool, err error) {
	cn.c.SetDeadline(time.Now().Add(*reqTimeout))
	if _, err = cn.bw.Write(req); err != nil {
		return false, true, err
	}
	if err = cn.bw.Flush(); err != nil {
		return false, true, err
	}
	resp, err := http.ReadResponse(cn.br, nil)
	if err != nil {
		return false, true, err
	}
	ok = resp.StatusCode == ck.status
	if len(ck.body) > 0 {
		b, rerr := io.ReadAll(resp.Body)
		if rerr != nil {
			return false, true, rerr
		}
		ok = ok && bytes.Contains(b, ck.body)
	} else if _, err = io.Copy(io.Discard, resp.Body); err != nil {
		return false, true, err
	}
	resp.Body.Close()
	if ck.hdrName != "" {
		ok = ok && strings.Contains(resp.Header.Get(ck.hdrName), ck.hdrValue)
	}
	if !ok && err == nil {
		err = fmt.Errorf("unexpected response: status %d", resp.StatusCode)
	}
	return ok, resp.Close, err
}

// ---------------------------------------------------------------- /proc accounting

type procSnap struct {
	proxyTicks int64
	cores      map[string][2]int64 // busy, total
}

func readProxyTicks(p int) int64 {
	if p <= 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
	if err != nil {
		return -1
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return -1
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return -1
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return ut + st
}

func readCores() map[string][2]int64 {
	out := map[string][2]int64{}
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return out
	}
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "cpu") || strings.HasPrefix(line, "cpu ") {
			continue
		}
		f := strings.Fields(line)
		var total, idle int64
		for i, v := range f[1:] {
			n, _ := strconv.ParseInt(v, 10, 64)
			if i == 8 || i == 9 { // guest, guest_nice are already in user/nice
				continue
			}
			total += n
			if i == 3 || i == 4 { // idle, iowait
				idle += n
			}
		}
		out[f[0]] = [2]int64{total - idle, total}
	}
	return out
}

func snap() procSnap { return procSnap{proxyTicks: readProxyTicks(*pid), cores: readCores()} }

func readRSSKB(p int) int64 {
	if p <= 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			if len(f) >= 2 {
				n, _ := strconv.ParseInt(f[1], 10, 64)
				return n
			}
		}
	}
	return -1
}

type rssSampler struct {
	start, peak int64
	stop        chan struct{}
	done        chan struct{}
}

func startRSS() *rssSampler {
	s := &rssSampler{start: readRSSKB(*pid), stop: make(chan struct{}), done: make(chan struct{})}
	s.peak = s.start
	go func() {
		defer close(s.done)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-t.C:
				if v := readRSSKB(*pid); v > s.peak {
					s.peak = v
				}
			}
		}
	}()
	return s
}

func (s *rssSampler) finish() (int64, int64) {
	close(s.stop)
	<-s.done
	if v := readRSSKB(*pid); v > s.peak {
		s.peak = v
	}
	return s.start, s.peak
}

func accounting(a, b procSnap) map[string]any {
	cores := map[string]any{}
	ticks := map[string]any{}
	for name, v1 := range b.cores {
		v0 := a.cores[name]
		dt := v1[1] - v0[1]
		busy := 0.0
		if dt > 0 {
			busy = float64(v1[0]-v0[0]) / float64(dt)
		}
		cores[name] = round(busy, 3)
		ticks[name] = [2]int64{v1[0] - v0[0], dt}
	}
	out := map[string]any{"core_busy": cores, "core_ticks": ticks}
	if *pid > 0 {
		out["proxy_cpu_ticks"] = b.proxyTicks - a.proxyTicks
	}
	return out
}

// ---------------------------------------------------------------- load

type workerStats struct {
	mu       sync.Mutex
	lat      []time.Duration
	errors   int64
	errMsg   []string
	inFlight atomic.Bool // a request (or dial) is outstanding
}

func (st *workerStats) fail(err error) {
	st.mu.Lock()
	st.errors++
	if len(st.errMsg) < 3 {
		st.errMsg = append(st.errMsg, err.Error())
	}
	st.mu.Unlock()
}

func runLoad() error {
	cl, err := newClient("")
	if err != nil {
		return err
	}
	if *h2 && *newConn {
		return errors.New("-h2 is for keep-alive load only, not with -new-conn")
	}
	var recording, stop atomic.Bool
	var remaining atomic.Int64
	fixed := *count > 0
	if fixed {
		remaining.Store(int64(*count))
		recording.Store(true)
	}
	stats := make([]*workerStats, *concurrency)
	var wg, dialed sync.WaitGroup
	begin := make(chan struct{})
	t00 := time.Now()
	for w := 0; w < *concurrency; w++ {
		st := &workerStats{lat: make([]time.Duration, 0, 4096)}
		stats[w] = st
		wg.Add(1)
		dialed.Add(1)
		go func() {
			defer wg.Done()
			ck := newChecker()
			var cn *conn
			defer func() {
				if cn != nil {
					cn.Close()
				}
			}()
			var hc *http.Client // -h2: net/http's HTTP/2 client instead of cn
			if *h2 {
				hc, _ = cl.h2Client()
				if hc != nil {
					h2Do(hc, *targetURL, &ck) // connect (and negotiate h2) before the clock starts
					defer hc.CloseIdleConnections()
				}
			}
			// Keep-alive: connect before the clock starts, so a slow handshake
			// rate cannot eat the warm-up (64 handshakes take ~1 s in mitmdump).
			if !*newConn && hc == nil {
				if c, err := cl.dial(); err == nil {
					cn = c
				}
			}
			dialed.Done()
			<-begin
			// A failure counts if its request began or ended inside the window;
			// a success counts if it ended inside the window.
			fail := func(err error, began bool) {
				st.inFlight.Store(false)
				if began || recording.Load() {
					st.fail(err)
				}
				time.Sleep(10 * time.Millisecond) // never spin on a refusing proxy
			}
			for !stop.Load() {
				if fixed && remaining.Add(-1) < 0 {
					return
				}
				t0 := time.Now()
				began := recording.Load()
				st.inFlight.Store(true)
				if hc != nil {
					ok, err := h2Do(hc, *targetURL, &ck)
					el := time.Since(t0)
					if !ok {
						fail(err, began)
						continue
					}
					st.inFlight.Store(false)
					if recording.Load() {
						st.mu.Lock()
						st.lat = append(st.lat, el)
						st.mu.Unlock()
					}
					continue
				}
				if cn == nil {
					c, err := cl.dial()
					if err != nil {
						fail(err, began)
						continue
					}
					cn = c
					if !*newConn {
						t0 = time.Now() // keep-alive latency excludes the first handshake
					}
				}
				ok, mustClose, err := cn.do(cl.request, &ck)
				el := time.Since(t0)
				if *newConn || mustClose || err != nil {
					cn.Close()
					cn = nil
				}
				if !ok {
					if err == nil {
						err = errors.New("check failed")
					}
					fail(err, began)
					continue
				}
				st.inFlight.Store(false)
				if recording.Load() {
					st.mu.Lock()
					st.lat = append(st.lat, el)
					st.mu.Unlock()
				}
			}
		}()
	}
	waitTimeout(&dialed, *reqTimeout+time.Second)
	connectS := time.Since(t00).Seconds()
	close(begin)
	var s0, s1 procSnap
	var rss *rssSampler
	var t0, t1 time.Time
	if fixed {
		rss = startRSS()
		s0, t0 = snap(), time.Now()
		wg.Wait()
		s1, t1 = snap(), time.Now()
	} else {
		time.Sleep(*warmup)
		rss = startRSS()
		s0, t0 = snap(), time.Now()
		recording.Store(true)
		time.Sleep(*duration)
		recording.Store(false)
		s1, t1 = snap(), time.Now()
		stop.Store(true)
		// Requests still outstanding this long after the window are stalled: counted
		// as errors, not waited for (a hung proxy must not hang the benchmark).
		waitTimeout(&wg, 2*time.Second)
	}
	rssStart, rssPeak := rss.finish()
	var all []time.Duration
	var errs, stalled int64
	var msgs []string
	for _, st := range stats {
		st.mu.Lock()
		all = append(all, st.lat...)
		errs += st.errors
		for _, m := range st.errMsg {
			if len(msgs) < 5 {
				msgs = append(msgs, m)
			}
		}
		st.mu.Unlock()
		if st.inFlight.Load() {
			stalled++
		}
	}
	if stalled > 0 {
		errs += stalled
		msgs = append(msgs, fmt.Sprintf("%d request(s) still unanswered 2 s after the window", stalled))
	}
	window := t1.Sub(t0).Seconds()
	out := map[string]any{
		"mode": "load", "url": *targetURL, "via_proxy": *proxyURL != "", "concurrency": *concurrency,
		"new_conn": *newConn, "h2": *h2, "window_s": round(window, 4), "requests": len(all), "errors": errs,
		"stalled": stalled, "error_samples": msgs, "rps": round(float64(len(all))/window, 1), "connect_s": round(connectS, 3),
		"lat_ms": percentiles(all), "rss_kb_start": rssStart, "rss_kb_peak": rssPeak,
	}
	for k, v := range accounting(s0, s1) {
		out[k] = v
	}
	emit(out)
	return nil
}

func waitTimeout(wg *sync.WaitGroup, d time.Duration) {
	ch := make(chan struct{})
	go func() { wg.Wait(); close(ch) }()
	select {
	case <-ch:
	case <-time.After(d):
	}
}

func percentiles(d []time.Duration) map[string]any {
	if len(d) == 0 {
		return map[string]any{}
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	at := func(q float64) float64 {
		return round(float64(d[int(q*float64(len(d)-1))])/1e6, 4)
	}
	var sum time.Duration
	for _, v := range d {
		sum += v
	}
	return map[string]any{"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": at(1),
		"mean": round(float64(sum)/float64(len(d))/1e6, 4)}
}

func round(v float64, digits int) float64 {
	p := 1.0
	for i := 0; i < digits; i++ {
		p *= 10
	}
	if v < 0 {
		return float64(int64(v*p-0.5)) / p
	}
	return float64(int64(v*p+0.5)) / p
}

// ---------------------------------------------------------------- check

func runCheck() error {
	cl, err := newClient("")
	if err != nil {
		return err
	}
	cn, err := cl.dial()
	if err != nil {
		return err
	}
	defer cn.Close()
	st := cn.c.ConnectionState()
	certInfo := map[string]any{"alpn": st.NegotiatedProtocol, "tls_version": tlsVersion(st.Version)}
	if len(st.PeerCertificates) > 0 {
		c := st.PeerCertificates[0]
		certInfo["subject"] = c.Subject.String()
		certInfo["issuer"] = c.Issuer.String()
		certInfo["dns_names"] = c.DNSNames
	}
	cn.c.SetDeadline(time.Now().Add(*reqTimeout))
	cn.bw.Write(cl.request)
	cn.bw.Flush()
	resp, err := http.ReadResponse(cn.br, nil)
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 8192))
	resp.Body.Close()
	hdr := map[string]string{}
	for k, v := range resp.Header {
		hdr[k] = strings.Join(v, ", ")
	}
	emit(map[string]any{"status": resp.StatusCode, "headers": hdr, "body": string(body), "tls": certInfo})
	return nil
}

func tlsVersion(v uint16) string {
	switch v {
	case tls.VersionTLS13:
		return "TLS1.3"
	case tls.VersionTLS12:
		return "TLS1.2"
	}
	return fmt.Sprintf("0x%04x", v)
}

// ---------------------------------------------------------------- sse

func runSSE() error {
	cl, err := newClient("")
	if err != nil {
		return err
	}
	n := *count
	if n <= 0 {
		n = 5
	}
	var ttfe, lag, hdrs, total []time.Duration
	events := 0
	var errMsgs []string
	for i := 0; i < n; i++ {
		cn, err := cl.dial()
		if err != nil {
			errMsgs = append(errMsgs, err.Error())
			continue
		}
		cn.c.SetDeadline(time.Now().Add(*reqTimeout))
		t0 := time.Now()
		cn.bw.Write(cl.request)
		cn.bw.Flush()
		resp, err := http.ReadResponse(cn.br, nil)
		if err != nil {
			cn.Close()
			errMsgs = append(errMsgs, err.Error())
			continue
		}
		th := time.Now()
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
			errMsgs = append(errMsgs, fmt.Sprintf("status %d content-type %q", resp.StatusCode, resp.Header.Get("Content-Type")))
			cn.Close()
			continue
		}
		br := bufio.NewReader(resp.Body)
		first := true
		got := 0
		for j := 0; j < 10000; j++ {
			line, err := br.ReadString('\n')
			if strings.HasPrefix(line, "data: ") {
				now := time.Now()
				got++
				if first {
					first = false
					ttfe = append(ttfe, now.Sub(t0))
					hdrs = append(hdrs, th.Sub(t0))
					if sent, perr := strconv.ParseInt(strings.TrimSpace(line[6:]), 10, 64); perr == nil {
						lag = append(lag, time.Duration(now.UnixNano()-sent))
					}
				}
			}
			if err != nil {
				break
			}
		}
		total = append(total, time.Since(t0))
		events += got
		cn.Close()
	}
	emit(map[string]any{"mode": "sse", "samples": len(ttfe), "events": events, "errors": len(errMsgs),
		"error_samples": errMsgs, "ttfe_ms": percentiles(ttfe), "first_event_lag_ms": percentiles(lag),
		"headers_ms": percentiles(hdrs), "total_ms": percentiles(total)})
	return nil
}

// ---------------------------------------------------------------- download

func runDownload() error {
	cl, err := newClient("")
	if err != nil {
		return err
	}
	n := *count
	if n <= 0 {
		n = 3
	}
	rss := startRSS()
	var ttfb, total []time.Duration
	var mibps []float64
	var size int64
	var errMsgs []string
	var cn *conn
	shaOK := any(nil)
	for i := 0; i < n; i++ {
		if cn == nil {
			if cn, err = cl.dial(); err != nil {
				errMsgs = append(errMsgs, err.Error())
				continue
			}
		}
		cn.c.SetDeadline(time.Now().Add(6 * *reqTimeout))
		t0 := time.Now()
		cn.bw.Write(cl.request)
		cn.bw.Flush()
		if _, err := cn.br.Peek(1); err != nil {
			errMsgs = append(errMsgs, err.Error())
			cn.Close()
			cn = nil
			continue
		}
		tf := time.Now()
		resp, err := http.ReadResponse(cn.br, nil)
		if err != nil {
			errMsgs = append(errMsgs, err.Error())
			cn.Close()
			cn = nil
			continue
		}
		var w io.Writer = io.Discard
		h := sha256.New()
		if i == 0 && *expectSHA != "" {
			w = h
		}
		nb, err := io.Copy(w, resp.Body)
		resp.Body.Close()
		el := time.Since(t0)
		if err != nil || resp.StatusCode != 200 {
			errMsgs = append(errMsgs, fmt.Sprintf("status %d err %v", resp.StatusCode, err))
			cn.Close()
			cn = nil
			continue
		}
		if i == 0 && *expectSHA != "" {
			shaOK = hex.EncodeToString(h.Sum(nil)) == strings.ToLower(*expectSHA)
		}
		size = nb
		ttfb = append(ttfb, tf.Sub(t0))
		total = append(total, el)
		mibps = append(mibps, float64(nb)/(1<<20)/el.Seconds())
		if resp.Close {
			cn.Close()
			cn = nil
		}
	}
	if cn != nil {
		cn.Close()
	}
	rssStart, rssPeak := rss.finish()
	sort.Float64s(mibps)
	med := 0.0
	if len(mibps) > 0 {
		med = round(mibps[len(mibps)/2], 1)
	}
	emit(map[string]any{"mode": "download", "samples": len(ttfb), "bytes": size, "sha256_ok": shaOK,
		"errors": len(errMsgs), "error_samples": errMsgs, "ttfb_ms": percentiles(ttfb),
		"total_ms": percentiles(total), "mib_per_s": med, "rss_kb_start": rssStart, "rss_kb_peak": rssPeak})
	return nil
}

// ---------------------------------------------------------------- idle

func runIdle() error {
	cl, err := newClient("")
	if err != nil {
		return err
	}
	ck := checker{status: *expectStatus}
	held := make([]*conn, *conns)
	var mu sync.Mutex
	var errMsgs []string
	var failed int
	jobs := make(chan int)
	var wg sync.WaitGroup
	t0 := time.Now()
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				cn, err := cl.dial()
				if err == nil {
					var ok bool
					if ok, _, err = cn.do(cl.request, &ck); !ok {
						cn.Close()
					}
				}
				mu.Lock()
				if err != nil {
					failed++
					if len(errMsgs) < 5 {
						errMsgs = append(errMsgs, err.Error())
					}
				} else {
					held[i] = cn
				}
				mu.Unlock()
			}
		}()
	}
	for i := 0; i < *conns; i++ {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	opened := 0
	for _, c := range held {
		if c != nil {
			opened++
		}
	}
	emit(map[string]any{"phase": "holding", "opened": opened, "errors": failed, "error_samples": errMsgs,
		"open_s": round(time.Since(t0).Seconds(), 3)})
	// Hold until the harness closes stdin (or the bound expires).
	done := make(chan struct{})
	go func() { io.Copy(io.Discard, os.Stdin); close(done) }()
	select {
	case <-done:
	case <-time.After(*hold):
	}
	heldFor := time.Since(t0)
	alive := 0
	for _, c := range held {
		if c == nil {
			continue
		}
		if ok, _, _ := c.do(cl.request, &ck); ok {
			alive++
		}
		c.Close()
	}
	emit(map[string]any{"phase": "done", "opened": opened, "alive_after_hold": alive,
		"held_s": round(heldFor.Seconds(), 3)})
	return nil
}

// ---------------------------------------------------------------- serve-sse

func serveSSE() error {
	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/sse", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		n := atoiDefault(q.Get("n"), 5)
		interval := time.Duration(atoiDefault(q.Get("interval_ms"), 50)) * time.Millisecond
		delay := time.Duration(atoiDefault(q.Get("delay_ms"), 50)) * time.Millisecond
		fl, _ := w.(http.Flusher)
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		w.WriteHeader(200)
		if fl != nil {
			fl.Flush()
		}
		for i := 0; i < n && i < 1000; i++ {
			if i == 0 {
				time.Sleep(delay)
			} else {
				time.Sleep(interval)
			}
			fmt.Fprintf(w, "id: %d\ndata: %d\n\n", i, time.Now().UnixNano())
			if fl != nil {
				fl.Flush()
			}
		}
	})
	srv := &http.Server{Handler: mux, TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}},
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){}, ReadHeaderTimeout: 10 * time.Second}
	emit(map[string]any{"addr": ln.Addr().String()})
	return srv.ServeTLS(ln, "", "")
}

func atoiDefault(s string, d int) int {
	if v, err := strconv.Atoi(s); err == nil && v >= 0 {
		return v
	}
	return d
}
