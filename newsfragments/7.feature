relaygate can run N worker processes on shared listening sockets ([server] workers), relays with 256 KiB buffers, and ships benchmarks and a scale-out guide (docs/performance.md, docs/scaling.md).
