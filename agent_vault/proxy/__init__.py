"""The proxy data plane: pure cores (auth, policy, inject) and the thin mitmproxy adapters."""
