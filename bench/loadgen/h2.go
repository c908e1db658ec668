package main

// -h2 (load mode, keep-alive only): each worker uses its own net/http Transport, which offers ALPN
// "h2", "http/1.1" (through the proxy with CONNECT and the same Proxy-Authorization), keeps one
// connection, and sends its requests one after the other on it. A response that did not come over
// HTTP/2 fails the check, so the numbers are HTTP/2 numbers or errors -- unless -h2-fallback: then an
// HTTP/1.1 answer counts too (a proxy run with --offer-h2 off selects http/1.1 for this same client).

import (
	"bytes"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

var h2 = flag.Bool("h2", false, "load: HTTP/2 via net/http (ALPN h2), one connection per worker; not with -new-conn")
var h2Fallback = flag.Bool("h2-fallback", false, "with -h2: accept answers over HTTP/1.1 (the proxy offered only http/1.1)")

// h2Client is one worker's HTTP/2 client: its own Transport, hence its own connection.
func (cl *client) h2Client() (*http.Client, error) {
	tc := &tls.Config{RootCAs: cl.tlsConf.RootCAs, ServerName: cl.host, MinVersion: tls.VersionTLS12}
	tr := &http.Transport{
		TLSClientConfig:    tc,
		ForceAttemptHTTP2:  true,
		MaxConnsPerHost:    1,
		DisableCompression: true,
	}
	if *proxyURL != "" {
		pu, err := url.Parse(*proxyURL)
		if err != nil {
			return nil, err
		}
		tr.Proxy = http.ProxyURL(pu)
	}
	return &http.Client{Transport: tr, Timeout: *reqTimeout}, nil
}

// h2Do sends one GET of the target URL and reads the whole response.
func h2Do(hc *http.Client, target string, ck *checker) (bool, error) {
	req, err := http.NewRequest("GET", target, nil)
	if err != nil {
		return false, err
	}
	req.Header.Set("User-Agent", "av-bench-loadgen/1")
	for _, h := range extraHeaders {
		if kv := strings.SplitN(h, ":", 2); len(kv) == 2 {
			req.Header.Add(strings.TrimSpace(kv[0]), strings.TrimSpace(kv[1]))
		}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return false, err
	}
	if resp.ProtoMajor != 2 && !(*h2Fallback && resp.ProtoMajor == 1) {
		return false, fmt.Errorf("negotiated %s, not HTTP/2", resp.Proto)
	}
	ok := resp.StatusCode == ck.status && (len(ck.body) == 0 || bytes.Contains(b, ck.body))
	if ck.hdrName != "" {
		ok = ok && strings.Contains(resp.Header.Get(ck.hdrName), ck.hdrValue)
	}
	if !ok {
		return false, fmt.Errorf("unexpected response: status %d", resp.StatusCode)
	}
	return true, nil
}
