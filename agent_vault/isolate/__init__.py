"""`vault run --isolate`: the child in its own network, PID, IPC, user and mount namespaces (bubblewrap).

`sandbox` plans the bubblewrap command line and probes whether it can run here; `inner` runs inside the
sandbox (listens on loopback, hands the listening sockets out, execs the command); `relay` pipes those
listeners to the real proxy and API; `launch` ties them together with the signal handling of `vault run`.
"""
